"""Tests for openprod.sync.discovery: TXT, parsing, the dial decision (spec 03 §4, S15, S30)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import ids
from openprod.sync.discovery import (
    SERVICE_TYPE,
    WSNAME_MAX_BYTES,
    Advert,
    instance_name,
    order_addresses,
    parse_advert,
    service_name,
    should_dial,
    truncate_utf8,
    txt_properties,
)

WS = bytes.fromhex("0190f3a2b4c47d8e9f00112233445566")
OTHER_WS = bytes.fromhex("0190f3a2b4c47d8e9f00112233445577")
ACTOR = bytes(range(32))
PEER = bytes(range(100, 132))
GH = "00112233aabbccdd"
NAME = f"op-peer.{SERVICE_TYPE}"


def encoded(props: dict[str, str]) -> dict[bytes, bytes | None]:
    """TXT properties as zeroconf hands them back: keys and values as bytes."""
    return {k.encode(): v.encode() for k, v in props.items()}


def good_props(**over: Any) -> dict[bytes, bytes | None]:
    props = encoded(txt_properties(WS, PEER, "Show", "open", GH))
    for k, v in over.items():
        if v is None:
            props.pop(k.encode(), None)
        else:
            props[k.encode()] = v
    return props


def parse(props: dict[bytes, bytes | None], addresses: Any = ("10.0.0.2",),
          port: Any = 7000, name: Any = NAME) -> Advert | None:
    return parse_advert(name, props, list(addresses), port)


# -- names and TXT ---------------------------------------------------------------------------

def test_instance_name_shape() -> None:
    assert instance_name(ACTOR, WS) == "op-000102030405-0190f3a2"
    assert service_name(ACTOR, WS) == "op-000102030405-0190f3a2._openprod._tcp.local."
    assert SERVICE_TYPE == "_openprod._tcp.local."


def test_txt_properties_keys_and_values() -> None:
    props = txt_properties(WS, ACTOR, "Main show", "key", GH.upper())
    assert props == {
        "ws": ids.to_text(WS),
        "actor": ACTOR.hex(),
        "proto": "1",
        "wsname": "Main show",
        "join": "key",
        "gh": GH,
    }
    assert len(props["actor"]) == 64


@pytest.mark.parametrize("args", [
    (WS[:15], ACTOR, "n", "open", GH),
    (WS, ACTOR[:31], "n", "open", GH),
    (WS, ACTOR, "n", "invite", GH),
    (WS, ACTOR, "n", "open", GH[:15]),
    (WS, ACTOR, "n", "open", "zz" * 8),
])
def test_txt_properties_rejects_bad_inputs(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        txt_properties(*args)


def test_truncation_does_not_split_characters() -> None:
    name = "é" * 40  # 80 bytes, 2 per character
    cut = truncate_utf8(name)
    assert cut == "é" * 31
    assert len(cut.encode()) == 62
    assert truncate_utf8("a" * 63) == "a" * 63
    assert truncate_utf8("a" * 62 + "€") == "a" * 62  # a 3-byte char cannot straddle the limit


@given(st.text(max_size=120))
def test_wsname_truncation_property(name: str) -> None:
    cut = txt_properties(WS, ACTOR, name, "open", GH)["wsname"]
    raw = cut.encode("utf-8")
    assert len(raw) <= WSNAME_MAX_BYTES
    assert name.startswith(cut)
    if len(name.encode("utf-8")) <= WSNAME_MAX_BYTES:
        assert cut == name
    else:
        # Maximal: the next character would not have fitted.
        assert len(raw) + len(name[len(cut)].encode("utf-8")) > WSNAME_MAX_BYTES


@given(
    ws=st.binary(min_size=16, max_size=16),
    actor=st.binary(min_size=32, max_size=32),
    wsname=st.text(max_size=100),
    join=st.sampled_from(["open", "key"]),
    gh=st.binary(min_size=8, max_size=8).map(bytes.hex),
    addresses=st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=4, unique=True),
    port=st.integers(1, 65535),
)
def test_round_trip(ws: bytes, actor: bytes, wsname: str, join: str, gh: str,
                    addresses: list[str], port: int) -> None:
    props = encoded(txt_properties(ws, actor, wsname, join, gh))
    ad = parse_advert(NAME, props, addresses, port)
    assert ad == Advert(name=NAME, ws=ws, actor=actor, proto=frozenset({1}),
                        wsname=truncate_utf8(wsname), join=join,  # type: ignore[arg-type]
                        gh=gh, addresses=tuple(addresses), port=port)


def test_parse_accepts_proto_list_and_dedupes_addresses() -> None:
    ad = parse(good_props(proto=b"1, 2,3"), addresses=["10.0.0.2", "10.0.0.2", "10.0.1.2"])
    assert ad is not None
    assert ad.proto == frozenset({1, 2, 3})
    assert ad.addresses == ("10.0.0.2", "10.0.1.2")


def test_parse_truncates_an_overlong_wsname() -> None:
    ad = parse(good_props(wsname=("x" * 100).encode()))
    assert ad is not None and ad.wsname == "x" * 63


# -- malformed records are dropped -------------------------------------------------------------

MALFORMED_PROPS: list[tuple[str, dict[str, Any]]] = [
    *[(f"missing {k}", {k: None}) for k in ("ws", "actor", "proto", "wsname", "join", "gh")],
    *[(f"bare key {k}", {k: "BARE"}) for k in ("ws", "actor", "proto", "wsname", "join", "gh")],
    ("ws not a uuid", {"ws": b"not-a-uuid"}),
    ("ws bare hex", {"ws": WS.hex().encode()}),
    ("ws braces", {"ws": b"{" + ids.to_text(WS).encode() + b"}"}),
    ("ws short", {"ws": ids.to_text(WS)[:-1].encode()}),
    ("actor short", {"actor": PEER.hex()[:62].encode()}),
    ("actor long", {"actor": (PEER.hex() + "00").encode()}),
    ("actor not hex", {"actor": b"zz" * 32}),
    ("actor with spaces", {"actor": b" ".join(bytes([c]) for c in PEER.hex().encode()[:64])}),
    ("actor non-utf8", {"actor": b"\xff" * 64}),
    ("wsname non-utf8", {"wsname": b"Show \xc3"}),
    ("join unknown", {"join": b"invite"}),
    ("join case", {"join": b"OPEN"}),
    ("gh short", {"gh": GH[:15].encode()}),
    ("gh not hex", {"gh": b"g" * 16}),
    ("proto empty", {"proto": b""}),
    ("proto word", {"proto": b"one"}),
    ("proto zero", {"proto": b"0"}),
    ("proto negative", {"proto": b"-1"}),
    ("proto trailing comma", {"proto": b"1,"}),
    ("proto huge", {"proto": b"9" * 500}),
    ("proto too many", {"proto": b",".join([b"1"] * 17)}),
]


@pytest.mark.parametrize(("case", "over"), MALFORMED_PROPS, ids=[c for c, _ in MALFORMED_PROPS])
def test_malformed_properties_are_dropped(case: str, over: dict[str, Any]) -> None:
    props = good_props(**{k: v for k, v in over.items() if v != "BARE"})
    for k, v in over.items():
        if v == "BARE":
            props[k.encode()] = None  # "key" without "=": zeroconf reports the value as None
    assert parse(props) is None, case


@pytest.mark.parametrize(("addresses", "port", "name"), [
    ([], 7000, NAME),                       # no address
    (["10.0.0.300"], 7000, NAME),           # not an IPv4 address
    (["fe80::1"], 7000, NAME),              # IPv6 under V4Only
    (["10.0.0.2", "nonsense"], 7000, NAME),
    ([b"10.0.0.2"], 7000, NAME),            # not a str
    (["10.0.0.2"], 0, NAME),                # bad ports
    (["10.0.0.2"], 65536, NAME),
    (["10.0.0.2"], -1, NAME),
    (["10.0.0.2"], "7000", NAME),
    (["10.0.0.2"], True, NAME),
    (["10.0.0.2"], None, NAME),
    (["10.0.0.2"], 7000, ""),               # no name
    (["10.0.0.2"], 7000, None),
])
def test_malformed_endpoints_are_dropped(addresses: Any, port: Any, name: Any) -> None:
    assert parse(good_props(), addresses=addresses, port=port, name=name) is None


@given(
    props=st.dictionaries(
        st.sampled_from([b"ws", b"actor", b"proto", b"wsname", b"join", b"gh", b"x"]),
        st.none() | st.binary(max_size=80),
    ),
    addresses=st.lists(st.text(max_size=20) | st.ip_addresses(v=4).map(str), max_size=3),
    port=st.integers(-5, 70000),
)
def test_parse_never_raises_on_garbage(props: dict[bytes, bytes | None], addresses: list[str],
                                       port: int) -> None:
    parse_advert(NAME, props, addresses, port)


def test_parse_never_raises_on_wrong_shapes() -> None:
    assert parse_advert(NAME, None, ["10.0.0.2"], 7000) is None  # type: ignore[arg-type]
    assert parse_advert(NAME, {"ws": "x"}, ["10.0.0.2"], 7000) is None  # type: ignore[dict-item]
    assert parse_advert(NAME, good_props(), None, 7000) is None  # type: ignore[arg-type]
    assert parse_advert(NAME, good_props(), 5, 7000) is None  # type: ignore[arg-type]


# -- the dial decision -------------------------------------------------------------------------

def advert(**over: Any) -> Advert:
    ad = parse(good_props(**over))
    assert ad is not None
    return ad


def test_should_dial_own_workspace_foreign_actor() -> None:
    assert should_dial(advert(), ws=WS, actor=ACTOR)


def test_foreign_workspace_is_never_dialed() -> None:
    # S15: a (fake) mDNS record for another workspace is never dialed.
    ad = advert(ws=ids.to_text(OTHER_WS).encode())
    assert not should_dial(ad, ws=WS, actor=ACTOR)


def test_own_actor_is_never_dialed() -> None:
    assert not should_dial(advert(), ws=WS, actor=PEER)


def test_proto_2_only_is_never_dialed() -> None:
    # S30: TXT proto=2 is never dialed by a proto-1 node.
    assert not should_dial(advert(proto=b"2"), ws=WS, actor=ACTOR)
    assert should_dial(advert(proto=b"2"), ws=WS, actor=ACTOR, proto_min=1, proto_max=2)
    assert should_dial(advert(proto=b"1,2"), ws=WS, actor=ACTOR)


# -- address order -------------------------------------------------------------------------------

def test_order_addresses_own_subnet_first_and_stable() -> None:
    addrs = ["10.0.0.5", "192.168.1.7", "172.16.0.1", "192.168.1.3", "10.0.9.9"]
    assert order_addresses(addrs, ["192.168.1.20"]) == [
        "192.168.1.7", "192.168.1.3", "10.0.0.5", "172.16.0.1", "10.0.9.9"]
    assert order_addresses(addrs, ["10.0.0.0/8"]) == [
        "10.0.0.5", "10.0.9.9", "192.168.1.7", "172.16.0.1", "192.168.1.3"]
    assert order_addresses(addrs, []) == addrs
    assert order_addresses(["junk", "10.0.0.5"], ["10.0.0.1", "also junk"]) == ["10.0.0.5", "junk"]


@given(st.lists(st.ip_addresses(v=4).map(str), max_size=8),
       st.lists(st.ip_addresses(v=4).map(str), max_size=3))
def test_order_addresses_is_a_permutation(addrs: list[str], own: list[str]) -> None:
    out = order_addresses(addrs, own)
    assert sorted(out) == sorted(addrs)
