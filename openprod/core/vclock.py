"""Vector clocks {actor -> max HLC integrated}, encoded as [actor, hlc] pairs sorted by actor."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openprod.core import hlc as hlcmod
from openprod.core.errors import CodecError

VClock = dict[bytes, bytes]


def merge(a: Mapping[bytes, bytes], b: Mapping[bytes, bytes]) -> VClock:
    out = dict(a)
    for k, v in b.items():
        if v > out.get(k, hlcmod.ZERO):
            out[k] = v
    return out


def covers(a: Mapping[bytes, bytes], b: Mapping[bytes, bytes]) -> bool:
    """a[x] >= b[x] for every actor x."""
    return all(a.get(k, hlcmod.ZERO) >= v for k, v in b.items())


def to_wire(vc: Mapping[bytes, bytes]) -> list[list[bytes]]:
    return [[k, vc[k]] for k in sorted(vc)]


def from_wire(x: Any) -> VClock:
    """Validate and convert the wire form; pairs must be sorted by actor and unique."""
    if type(x) is not list:
        raise CodecError("vector clock must be an array")
    out: VClock = {}
    prev: bytes | None = None
    for pair in x:
        if type(pair) is not list or len(pair) != 2:
            raise CodecError("vector clock entry must be [actor, hlc]")
        actor, h = pair
        if type(actor) is not bytes or len(actor) != 32 or not hlcmod.is_hlc(h):
            raise CodecError("vector clock entry has a bad actor or hlc")
        if prev is not None and actor <= prev:
            raise CodecError("vector clock entries must be sorted by actor and unique")
        prev = actor
        out[actor] = h
    return out


def from_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> VClock:
    return {a: h for a, h in pairs}
