"""LAN discovery records, sans I/O (spec 03 §4 "Discovery and connecting", mDNS).

Owns what an openprod mDNS advert *says*: the service type, the instance name, the TXT
properties we publish, parsing a resolved record back into an `Advert` (dropping anything
malformed), the dial decision, and the order in which a peer's addresses are tried.

Nothing here touches trio, sockets or zeroconf: the runtime (`actors.discovery`) feeds resolved
records in and acts on the answers. A TXT record is only a hint — whoever we dial still has to
pass the handshake (`openprod.sync.handshake`), which is what actually decides.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

from openprod.core import ids

SERVICE_TYPE = "_openprod._tcp.local."
WSNAME_MAX_BYTES = 63
JOIN_MODES: frozenset[str] = frozenset({"open", "key"})
JoinMode = Literal["open", "key"]

ACTOR_SIZE = 32
WS_SIZE = 16
GH_HEX_LEN = 16

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
# Canonical hyphenated UUID text only: uuid.UUID() would also take braces, "urn:uuid:" and bare
# hex, and a record we would never emit ourselves is more likely garbage than a peer.
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# A protocol version list: "1" or "1,2". Bounded digits so a hostile record cannot make us
# build huge ints.
_PROTO_ITEM = re.compile(r"[0-9]{1,4}")
_MAX_PROTO_ITEMS = 16


def instance_name(actor: bytes, ws: bytes) -> str:
    """`op-<actor hex[:12]>-<ws hex[:8]>`: one instance per (device, workspace)."""
    return f"op-{actor.hex()[:12]}-{ws.hex()[:8]}"


def service_name(actor: bytes, ws: bytes) -> str:
    """The full service instance name before any `allow_name_change` renaming."""
    return f"{instance_name(actor, ws)}.{SERVICE_TYPE}"


def truncate_utf8(text: str, max_bytes: int = WSNAME_MAX_BYTES) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `max_bytes`.

    Cuts on a code-point boundary: decoding with errors="ignore" drops the partial trailing
    sequence a byte slice can leave, and nothing else (the input was valid UTF-8).
    """
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def txt_properties(ws: bytes, actor: bytes, wsname: str, join: str, gh: str,
                   proto: int = 1) -> dict[str, str]:
    """The TXT properties we advertise for one workspace; ValueError on bad inputs.

    `gh` is the first 16 hex digits of the workspace's genesis hash, so a peer can tell two
    workspaces with the same `ws` apart before dialing (the handshake still checks the full hash).
    """
    if len(ws) != WS_SIZE:
        raise ValueError("ws is 16 bytes")
    if len(actor) != ACTOR_SIZE:
        raise ValueError("actor is 32 bytes")
    if join not in JOIN_MODES:
        raise ValueError(f"join is one of {sorted(JOIN_MODES)}")
    if not _HEX16.fullmatch(gh):
        raise ValueError("gh is 16 hex digits")
    if proto < 1:
        raise ValueError("proto is a positive int")
    return {
        "ws": ids.to_text(ws),
        "actor": actor.hex(),
        "proto": str(proto),
        "wsname": truncate_utf8(wsname),
        "join": join,
        "gh": gh.lower(),
    }


@attrs.frozen
class Advert:
    """One resolved, well-formed advert. `proto` is the set of versions the peer offers."""

    name: str
    ws: bytes
    actor: bytes
    proto: frozenset[int]
    wsname: str
    join: JoinMode
    gh: str
    addresses: tuple[str, ...]
    port: int


def _text(properties: Mapping[bytes, bytes | None], key: bytes) -> str | None:
    value = properties.get(key)
    if not isinstance(value, bytes):  # missing, or a bare key without "=" (None)
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse_proto(text: str) -> frozenset[int] | None:
    items = text.split(",")
    if len(items) > _MAX_PROTO_ITEMS:
        return None
    versions: set[int] = set()
    for item in items:
        item = item.strip()
        if not _PROTO_ITEM.fullmatch(item):
            return None
        v = int(item)
        if v < 1:
            return None
        versions.add(v)
    return frozenset(versions)


def _parse_addresses(addresses: Sequence[str]) -> tuple[str, ...] | None:
    out: list[str] = []
    for a in addresses:
        if not isinstance(a, str):
            return None
        try:
            text = str(ipaddress.IPv4Address(a))
        except ValueError:
            return None
        if text not in out:  # the same address via two interfaces is one address to try
            out.append(text)
    return tuple(out) if out else None


def _parse(name: str, properties: Mapping[bytes, bytes | None], addresses: Sequence[str],
           port: int) -> Advert | None:
    if not isinstance(name, str) or not name:
        return None
    if not isinstance(properties, Mapping):
        return None
    if type(port) is not int or not 0 < port < 65536:
        return None

    ws_text = _text(properties, b"ws")
    actor_text = _text(properties, b"actor")
    proto_text = _text(properties, b"proto")
    wsname = _text(properties, b"wsname")
    join = _text(properties, b"join")
    gh = _text(properties, b"gh")
    if ws_text is None or actor_text is None or proto_text is None or wsname is None \
            or join is None or gh is None:
        return None

    if not _UUID_TEXT.fullmatch(ws_text) or not _HEX64.fullmatch(actor_text) \
            or not _HEX16.fullmatch(gh):
        return None
    join_mode: JoinMode
    if join == "open":
        join_mode = "open"
    elif join == "key":
        join_mode = "key"
    else:
        return None
    proto = _parse_proto(proto_text)
    addrs = _parse_addresses(addresses)
    if proto is None or addrs is None:
        return None

    return Advert(
        name=name,
        ws=ids.from_text(ws_text),
        actor=bytes.fromhex(actor_text),
        proto=proto,
        # The name is cosmetic: an over-long one is cut like ours rather than losing the peer.
        wsname=truncate_utf8(wsname),
        join=join_mode,
        gh=gh.lower(),
        addresses=addrs,
        port=port,
    )


def parse_advert(name: str, properties: Mapping[bytes, bytes | None], addresses: Sequence[str],
                 port: int) -> Advert | None:
    """A resolved mDNS record as an `Advert`, or None if anything about it is malformed.

    Never raises: the record comes off the network from anyone on the LAN.
    """
    try:
        return _parse(name, properties, addresses, port)
    except (ValueError, TypeError, AttributeError, UnicodeError):
        # Defence in depth for inputs of a shape the checks above did not foresee (a Mapping
        # whose .get misbehaves, a non-sequence of addresses, ...).
        return None


def should_dial(ad: Advert, *, ws: bytes, actor: bytes, proto_min: int = 1,
                proto_max: int = 1) -> bool:
    """Dial only our workspace, never ourselves, and only if a protocol version overlaps."""
    if ad.ws != ws or ad.actor == actor:
        return False
    return any(proto_min <= v <= proto_max for v in ad.proto)


def _own_networks(own_subnets: Iterable[str]) -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for entry in own_subnets:
        try:
            if "/" in entry:
                nets.append(ipaddress.IPv4Network(entry, strict=False))
            else:
                # A bare address stands for its /24: the common home/venue LAN shape.
                nets.append(ipaddress.IPv4Network(f"{entry}/24", strict=False))
        except ValueError:
            continue
    return nets


def order_addresses(addresses: Sequence[str], own_subnets: Iterable[str]) -> list[str]:
    """`addresses` with those on one of our subnets first, otherwise in their given order.

    `own_subnets` holds our IPv4 addresses (each taken as its /24) or CIDR networks. Addresses
    on our own subnets are most likely to be reachable directly, so they are tried first
    (spec 03 §4 Manual: "own subnets first"); the sort is stable so ties keep the peer's order.
    """
    nets = _own_networks(own_subnets)

    def on_own_subnet(a: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(a)
        except ValueError:
            return False
        return any(ip in n for n in nets)

    return sorted(addresses, key=lambda a: 0 if on_own_subnet(a) else 1)
