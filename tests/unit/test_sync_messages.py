"""Tests for openprod.sync.messages: the wire messages of spec 03 §5 and their strict decoder."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import codec
from openprod.sync import messages as m
from openprod.sync.messages import ProtocolError

# --- strategies --------------------------------------------------------------------------------

uints = st.integers(min_value=0, max_value=2**63)
ids16 = st.binary(min_size=16, max_size=16)
b32 = st.binary(min_size=32, max_size=32)
texts = st.text(max_size=20)
hlcs = st.binary(min_size=12, max_size=12)
vcs = st.dictionaries(b32, hlcs, max_size=4)
digests = st.binary(min_size=1, max_size=64)
records = st.lists(st.binary(max_size=20), max_size=3).flatmap(
    lambda bodies: st.tuples(st.binary(max_size=40), st.binary(min_size=64, max_size=64)).map(
        lambda hs: [hs[0], hs[1], bodies]
    )
)
entries = st.fixed_dictionaries({
    "ws": ids16,
    "name": texts,
    "join": st.sampled_from(sorted(m.JOIN_MODES)),
    "gh": st.binary(min_size=8, max_size=8).map(bytes.hex),
})


@st.composite
def hellos(draw: st.DrawFn) -> m.Hello:
    lo = draw(st.integers(min_value=1, max_value=10))
    hi = draw(st.integers(min_value=lo, max_value=12))
    return m.Hello(
        proto_min=lo, proto_max=hi, ws=draw(ids16), actor=draw(b32), nonce=draw(b32),
        name=draw(texts), device=draw(texts), sw=draw(texts),
        genesis=draw(st.none() | b32),
    )


messages_st: st.SearchStrategy[m.Message] = st.one_of(
    hellos(),
    st.builds(m.Auth, sig=st.binary(min_size=64, max_size=64), join=st.none() | b32),
    st.just(m.ListWorkspaces()),
    st.builds(m.Directory, workspaces=st.lists(entries, max_size=3)),
    st.builds(m.ClockMsg, vc=vcs, full=st.booleans()),
    st.builds(
        m.Ops, seq=uints, prev=vcs, bundles=st.lists(records, max_size=3), more=st.booleans(),
        done=st.booleans(), live=st.booleans(),
        cont=st.none() | st.lists(st.binary(max_size=10), max_size=3),
        remaining=st.none() | uints,
    ),
    st.builds(
        m.Ack, seq=uints, vc=vcs, applied=uints, dup=uints,
        rejected=st.lists(st.tuples(ids16, st.sampled_from(sorted(m.REJECT_CODES))).map(list),
                          max_size=3),
    ),
    st.builds(m.State, vc=vcs, oplog_digest=digests, state_hash=digests),
    st.builds(m.Ping, n=uints, wall_ms=uints),
    st.builds(m.Pong, n=uints, wall_ms=uints),
    st.builds(m.BlobQuery, req=uints, hashes=st.lists(b32, max_size=64)),
    st.builds(
        m.BlobHave, req=uints, have=st.lists(st.tuples(b32, uints).map(list), max_size=4),
        missing=st.lists(b32, max_size=4),
    ),
    st.builds(m.BlobGet, req=uints, hash=b32, off=uints,
              len=st.integers(min_value=1, max_value=m.MAX_CHUNK)),
    st.builds(m.BlobChunk, req=uints, hash=b32, off=uints, size=uints,
              data=st.binary(max_size=64)),
    st.builds(m.BlobErr, req=uints, hash=b32, code=st.sampled_from(["busy", "missing"])),
)

A1, A2 = b"\x01" * 32, b"\x02" * 32
H = b"\x00" * 11 + b"\x01"
WS = b"\x07" * 16


def sample_wire() -> dict[str, dict[str, Any]]:
    """One valid wire map per message type."""
    msgs: list[m.Message] = [
        m.Hello(proto_min=1, proto_max=1, ws=WS, actor=A1, nonce=A2, name="n", device="d",
                sw="s", genesis=A2),
        m.Auth(sig=b"\x05" * 64, join=A1),
        m.ListWorkspaces(),
        m.Directory(workspaces=[{"ws": WS, "name": "x", "join": "open", "gh": "0" * 16}]),
        m.ClockMsg(vc={A1: H, A2: H}, full=True),
        m.Ops(seq=1, prev={A1: H}, bundles=[[b"h", b"s" * 64, [b"b"]]], more=True,
              cont=[b"c"], remaining=3),
        m.Ack(seq=1, vc={A1: H}, applied=1, dup=0, rejected=[[WS, "gap"]]),
        m.State(vc={A1: H}, oplog_digest=A1, state_hash=A2),
        m.Ping(n=1, wall_ms=2),
        m.Pong(n=1, wall_ms=2),
        m.BlobQuery(req=1, hashes=[A1]),
        m.BlobHave(req=1, have=[[A1, 10]], missing=[A2]),
        m.BlobGet(req=1, hash=A1, off=0, len=10),
        m.BlobChunk(req=1, hash=A1, off=0, size=10, data=b"x"),
        m.BlobErr(req=1, hash=A1, code="busy"),
    ]
    return {msg.T: msg.to_wire() for msg in msgs}


SAMPLES = sample_wire()


def close_code(frame: bytes, *, before_auth: bool = False, max_size: int = 1 << 20) -> int:
    with pytest.raises(ProtocolError) as info:
        m.decode(frame, max_size=max_size, before_auth=before_auth)
    assert info.value.details["close_code"] == info.value.close_code
    return info.value.close_code


# --- round trips -------------------------------------------------------------------------------

def test_every_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(m.MESSAGE_TYPES)
    assert len(m.MESSAGE_TYPES) == 15


@given(messages_st)
def test_round_trip(msg: m.Message) -> None:
    frame = m.encode(msg)
    assert frame == codec.encode(msg.to_wire())
    back = m.decode(frame, max_size=m.MAX_MESSAGE_SIZE, before_auth=False)
    assert type(back) is type(msg)
    assert back == msg
    assert m.encode(back) == frame


@pytest.mark.parametrize("t", sorted(SAMPLES))
def test_samples_round_trip(t: str) -> None:
    frame = codec.encode(SAMPLES[t])
    msg = m.decode(frame, before_auth=False)
    assert t == msg.T
    assert msg.to_wire() == SAMPLES[t]


def test_optional_keys_are_omitted() -> None:
    hello = m.Hello(proto_min=1, proto_max=1, ws=WS, actor=A1, nonce=A2, name="", device="",
                    sw="")
    assert "genesis" not in hello.to_wire()
    assert "join" not in m.Auth(sig=b"\x00" * 64).to_wire()
    ops = m.Ops(seq=0, prev={}, bundles=[], done=True).to_wire()
    assert "cont" not in ops and "remaining" not in ops
    assert m.decode(m.encode(m.Auth(sig=b"\x00" * 64)), before_auth=True) == m.Auth(
        sig=b"\x00" * 64
    )


def test_vc_goes_on_the_wire_sorted() -> None:
    msg = m.ClockMsg(vc={A2: H, A1: H}, full=False)
    assert msg.to_wire()["vc"] == [[A1, H], [A2, H]]


def test_records_are_not_opened() -> None:
    # garbage header bytes are fine here: the receipt pipeline opens records, not the decoder
    msg = m.Ops(seq=3, prev={}, bundles=[[b"\xff\xff", b"", []]])
    assert m.decode(m.encode(msg), before_auth=False) == msg


# --- rejections --------------------------------------------------------------------------------

@pytest.mark.parametrize("t", sorted(SAMPLES))
def test_unknown_key_rejected(t: str) -> None:
    wire = dict(SAMPLES[t], zzz=1)
    assert close_code(codec.encode(wire)) == m.CLOSE_PROTOCOL


@pytest.mark.parametrize("t", sorted(SAMPLES))
def test_missing_key_rejected(t: str) -> None:
    cls = m.MESSAGE_TYPES[t]
    required = sorted(set(cls.FIELDS) - cls.OPTIONAL)
    for key in required:
        wire = {k: v for k, v in SAMPLES[t].items() if k != key}
        assert close_code(codec.encode(wire)) == m.CLOSE_PROTOCOL, key
    for key in sorted(cls.OPTIONAL):  # optional keys may be left out
        wire = {k: v for k, v in SAMPLES[t].items() if k != key}
        assert t == m.decode(codec.encode(wire), before_auth=False).T


WRONG_VALUES: list[Any] = [None, True, -1, 1.5, "x", b"", b"\x00" * 33, [], [[1, 2]], {"a": 1}]


@pytest.mark.parametrize("t", sorted(SAMPLES))
def test_wrong_types_rejected(t: str) -> None:
    sample = SAMPLES[t]
    for key in sorted(set(sample) - {"t"}):
        for bad in WRONG_VALUES:
            wire = dict(sample)
            wire[key] = bad
            try:
                msg = m.decode(codec.encode(wire), before_auth=False)
            except ProtocolError as exc:
                assert exc.close_code == m.CLOSE_PROTOCOL
            else:  # only an equally valid value may pass (e.g. [] for an empty list)
                assert msg.to_wire()[key] == bad, (t, key, bad)


@given(st.text(max_size=12).filter(lambda s: s not in m.MESSAGE_TYPES))
def test_unknown_t_rejected(t: str) -> None:
    assert close_code(codec.encode({"t": t})) == m.CLOSE_PROTOCOL


@pytest.mark.parametrize("wire", [{"t": 1}, {}, {"n": 1}, [1, 2], "hello", 5, None])
def test_not_a_message(wire: Any) -> None:
    assert close_code(codec.encode(wire)) == m.CLOSE_PROTOCOL


@pytest.mark.parametrize(
    "wire",
    [
        # unsorted, duplicate, badly shaped vector clocks
        {"t": "clock", "vc": [[A2, H], [A1, H]], "full": False},
        {"t": "clock", "vc": [[A1, H], [A1, H]], "full": False},
        {"t": "clock", "vc": [[A1, H[:11]]], "full": False},
        {"t": "clock", "vc": [[A1[:31], H]], "full": False},
        {"t": "clock", "vc": [[A1, H, H]], "full": False},
        {"t": "state", "vc": {"a": 1}, "oplog_digest": A1, "state_hash": A1},
        # hello cross-field and field shapes
        dict(SAMPLES["hello"], proto_min=2, proto_max=1),
        dict(SAMPLES["hello"], proto_min=0),
        dict(SAMPLES["hello"], nonce=b"\x00" * 31),
        dict(SAMPLES["hello"], ws=b"\x00" * 15),
        dict(SAMPLES["hello"], name="x" * (m.MAX_TEXT + 1)),
        dict(SAMPLES["auth"], sig=b"\x00" * 63),
        # records
        dict(SAMPLES["ops"], bundles=[[b"h", b"s"]]),
        dict(SAMPLES["ops"], bundles=[[b"h", b"s", [1]]]),
        dict(SAMPLES["ops"], bundles=[[b"h", "s", []]]),
        dict(SAMPLES["ops"], bundles=[b"hsb"]),
        dict(SAMPLES["ops"], cont=[1]),
        # ack rejections
        dict(SAMPLES["ack"], rejected=[[WS, "nope"]]),
        dict(SAMPLES["ack"], rejected=[[A1, "gap"]]),
        # directory entries
        dict(SAMPLES["directory"], workspaces=[{"ws": WS, "name": "x", "join": "open"}]),
        dict(SAMPLES["directory"],
             workspaces=[{"ws": WS, "name": "x", "join": "request", "gh": "0" * 16}]),
        dict(SAMPLES["directory"],
             workspaces=[{"ws": WS, "name": "x", "join": "open", "gh": "G" * 16}]),
        # blob limits
        dict(SAMPLES["blob_query"], hashes=[A1] * 65),
        dict(SAMPLES["blob_get"], len=m.MAX_CHUNK + 1),
        dict(SAMPLES["blob_get"], len=0),
        dict(SAMPLES["blob_chunk"], data=b"\x00" * (m.MAX_CHUNK + 1)),
        dict(SAMPLES["blob_have"], have=[[A1]]),
        dict(SAMPLES["blob_have"], have=[[A1, -1]]),
    ],
)
def test_malformed_fields_rejected(wire: dict[str, Any]) -> None:
    assert close_code(codec.encode(wire)) == m.CLOSE_PROTOCOL


@pytest.mark.parametrize("t", sorted(SAMPLES))
def test_non_canonical_bytes_rejected(t: str) -> None:
    wire = SAMPLES[t]
    # same map, keys in reverse (non-canonical) order
    loose = cbor2.dumps(dict(reversed(list(wire.items()))), canonical=False)
    if loose != codec.encode(wire):
        assert close_code(loose) == m.CLOSE_PROTOCOL
    # an indefinite-length map is never canonical
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in wire.items())
    assert close_code(b"\xbf" + body + b"\xff") == m.CLOSE_PROTOCOL
    # trailing garbage, truncation
    frame = codec.encode(wire)
    assert close_code(frame + b"\x00") == m.CLOSE_PROTOCOL
    assert close_code(frame[:-1]) == m.CLOSE_PROTOCOL


def test_non_minimal_integer_rejected() -> None:
    frame = codec.encode({"t": "ping", "n": 1, "wall_ms": 2})
    assert frame.endswith(b"\x02")
    loose = frame[:-1] + b"\x18\x02"  # 2 written as a one-byte-argument integer
    assert close_code(loose) == m.CLOSE_PROTOCOL


def test_oversized_is_1009() -> None:
    msg = m.BlobChunk(req=1, hash=A1, off=0, size=1, data=b"\x00" * 2000)
    frame = m.encode(msg)
    assert close_code(frame, max_size=len(frame) - 1) == m.CLOSE_TOO_BIG
    assert m.decode(frame, max_size=len(frame), before_auth=False) == msg
    # the size check comes before decoding: garbage that is too big is still 1009
    assert close_code(b"\xff" * 100, max_size=99) == m.CLOSE_TOO_BIG


@pytest.mark.parametrize("t", sorted(SAMPLES))
def test_before_auth_only_hello_auth_list(t: str) -> None:
    frame = codec.encode(SAMPLES[t])
    if t in {"hello", "auth", "list"}:
        assert t == m.decode(frame, before_auth=True).T
    else:
        assert close_code(frame, before_auth=True) == m.CLOSE_PROTOCOL
        assert t == m.decode(frame, before_auth=False).T


def test_directory_can_be_expected_before_auth() -> None:
    frame = codec.encode(SAMPLES["directory"])
    msg = m.decode(frame, before_auth=True, pre_auth=m.PRE_AUTH | {"directory"})
    assert isinstance(msg, m.Directory)


def directory_frame(size: int) -> bytes:
    """A valid `directory` frame of exactly `size` bytes (size well above 300)."""
    def frame(names: list[int]) -> bytes:
        entries = [{"ws": WS, "name": "n" * k, "join": "open", "gh": "0" * 16} for k in names]
        return codec.encode({"t": "directory", "workspaces": entries})

    names: list[int] = []
    while len(frame([*names, 0])) + 300 < size:
        names.append(200)
    for last in range(m.MAX_TEXT + 1):
        f = frame([*names, last])
        if len(f) == size:
            return f
    raise AssertionError(f"could not build a {size}-byte frame")


def test_pre_auth_size_limit() -> None:
    pre = m.PRE_AUTH | {"directory"}
    at_limit = directory_frame(m.MAX_PRE_AUTH_SIZE)
    assert isinstance(m.decode(at_limit, before_auth=True, pre_auth=pre), m.Directory)
    over = directory_frame(m.MAX_PRE_AUTH_SIZE + 1)
    with pytest.raises(ProtocolError) as info:
        m.decode(over, before_auth=True, pre_auth=pre)
    assert info.value.close_code == m.CLOSE_PROTOCOL
    # the same frame is fine once authenticated
    assert isinstance(m.decode(over, before_auth=False), m.Directory)
    # a hello padded past 4 KiB with garbage is refused on size alone
    assert close_code(b"\x00" * (m.MAX_PRE_AUTH_SIZE + 1), before_auth=True) == m.CLOSE_PROTOCOL


@given(st.binary(max_size=64))
def test_garbage_never_escapes_as_another_error(data: bytes) -> None:
    try:
        msg = m.decode(data, max_size=1 << 16, before_auth=False)
    except ProtocolError as exc:
        assert exc.close_code in (m.CLOSE_PROTOCOL, m.CLOSE_TOO_BIG)
    else:
        assert m.encode(msg) == data
