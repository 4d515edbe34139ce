"""Canonical CBOR (RFC 8949 §4.2.1 deterministic encoding) over cbor2.

`encode` checks the value tree and writes the one canonical form; `decode` refuses every byte
string that is not exactly that form, so byte equality is value equality everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import cbor2

from openprod.core.errors import CodecError

MAX_DEPTH = 32
INT_MIN = -(2**64)
INT_MAX = 2**64 - 1
DEFAULT_MAX_SIZE = 64 * 1024 * 1024


def _check(x: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CodecError("nesting deeper than 32")
    t = type(x)
    # bool before int: bool is an int subclass in Python.
    if t is bool or x is None or t is str or t is bytes:
        return
    if t is int:
        if not INT_MIN <= x <= INT_MAX:
            raise CodecError("integer out of CBOR range")
        return
    if t is float:
        if not math.isfinite(x):
            raise CodecError("NaN and infinities are not allowed")
        if x == 0.0 and math.copysign(1.0, x) < 0:
            raise CodecError("-0.0 is not allowed")
        return
    if t is list or t is tuple:
        for item in x:
            _check(item, depth + 1)
        return
    if t is dict:
        for k, v in x.items():
            if type(k) is not str:
                raise CodecError("map keys must be text")
            _check(v, depth + 1)
        return
    raise CodecError(f"type {t.__name__} is not allowed in canonical CBOR")


def check(x: Any) -> None:
    """Raise CodecError unless x is in the allowed tree."""
    _check(x, 1)


def encode(x: Any) -> bytes:
    """The canonical bytes of x (tuples encode as arrays)."""
    _check(x, 1)
    try:
        return bytes(cbor2.dumps(x, canonical=True))
    except (ValueError, TypeError, cbor2.CBOREncodeError) as exc:  # guarded by _check
        raise CodecError(str(exc)) from exc


def encode_trusted(x: Any) -> bytes:
    """Canonical bytes of a tree built by our own code from already-checked parts (hot path)."""
    return bytes(cbor2.dumps(x, canonical=True))


def decode(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Strictly decode: size cap, allowed tree, and re-encoding must give identical bytes."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > max_size:
        raise CodecError(f"{len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        x = cbor2.loads(
            data,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH + 1,
            semantic_decoders={},
        )
    except Exception as exc:  # cbor2 raises a variety of decode errors on hostile input
        raise CodecError(f"undecodable CBOR: {exc}") from exc
    _check(x, 1)
    if cbor2.dumps(x, canonical=True) != data:
        raise CodecError("not in canonical form")
    return x
