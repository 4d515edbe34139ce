"""Tests for openprod.core.codec: canonical CBOR (spec 01 §2, §11 item 1)."""

from __future__ import annotations

import math
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import codec
from openprod.core.errors import CodecError

# --- the allowed tree -------------------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda f: not (f == 0.0 and math.copysign(1.0, f) < 0)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=codec.INT_MIN, max_value=codec.INT_MAX),
    st.binary(max_size=40),
    st.text(max_size=24),
    finite_floats,
)
trees = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=5)
    | st.dictionaries(st.text(max_size=6), kids, max_size=5),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (1 != 1.0 != True here) and float bit patterns."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is float:
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def nest(levels: int, leaf: Any) -> Any:
    x = leaf
    for _ in range(levels):
        x = [x]
    return x


# --- spec vectors -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "hexbytes"),
    [
        ({"b": 1, "aa": 2}, "a2 61 62 01 62 61 61 02"),
        (["integer", -1], "82 67 69 6e 74 65 67 65 72 20"),
        (1.5, "f9 3e 00"),
        (0.1, "fb 3f b9 99 99 99 99 99 9a"),
    ],
)
def test_spec_vectors(value: Any, hexbytes: str) -> None:
    expected = bytes.fromhex(hexbytes.replace(" ", ""))
    assert codec.encode(value) == expected
    assert same(codec.decode(expected), value)


def test_map_key_order_is_by_encoded_bytes_not_insertion() -> None:
    assert codec.encode({"aa": 2, "b": 1}) == codec.encode({"b": 1, "aa": 2})


def test_tuples_encode_as_arrays() -> None:
    assert codec.encode((1, "a")) == codec.encode([1, "a"])
    assert codec.decode(codec.encode((1, "a"))) == [1, "a"]


def test_integer_range_bounds_round_trip() -> None:
    for x in (codec.INT_MIN, codec.INT_MAX, 0, -1, 23, 24, 255, 256, 2**32, -(2**63)):
        assert same(codec.decode(codec.encode(x)), x)


def test_bool_is_not_an_integer() -> None:
    assert codec.encode(True) == b"\xf5"
    assert codec.encode(False) == b"\xf4"
    assert same(codec.decode(b"\xf5"), True)
    assert codec.encode(1) != codec.encode(True)


# --- round trip -------------------------------------------------------------------------------

@given(trees)
def test_round_trip_is_identity(x: Any) -> None:
    data = codec.encode(x)
    back = codec.decode(data)
    assert same(back, x)
    assert codec.encode(back) == data


@given(trees)
def test_encode_matches_cbor2_canonical(x: Any) -> None:
    assert codec.encode(x) == cbor2.dumps(x, canonical=True)
    assert codec.encode_trusted(x) == codec.encode(x)


# --- rejection of non-canonical input ---------------------------------------------------------

NON_CANONICAL = {
    "long head for 1": "1801",
    "long head for 0 (2 bytes)": "190000",
    "long head for 23": "1817",
    "long head for text length": "780161",
    "long head for array length": "980101",
    "long head for negative": "3800",
    "indefinite array": "9f01ff",
    "indefinite map": "bf616101ff",
    "indefinite bytes": "5f4101ff",
    "indefinite text": "7f6161ff",
    "unsorted map keys": "a2626161026162" "01",
    "unsorted same-length keys": "a2616201616101",
    "duplicate map keys": "a2616101616102",
    "1.5 as float32": "fa3fc00000",
    "1.5 as float64": "fb3ff8000000000000",
    "1.0 as float32": "fa3f800000",
    "0.0 as float64": "fb0000000000000000",
    "bignum tag 2 for 1": "c24101",
    "negative bignum tag 3": "c34101",
    "bignum 2**64": "c249010000000000000000",
    "datetime tag 0": "c074323031332d30332d32315432303a30343a30305a",
    "epoch tag 1": "c11a514b67b0",
    "self-describe tag 55799": "d9d9f701",
    "set tag 258": "d9010281" "01",
    "undefined": "f7",
    "simple value 16": "f0",
    "simple value 255": "f8ff",
    "NaN half": "f97e00",
    "NaN single": "fa7fc00000",
    "NaN double": "fb7ff8000000000000",
    "+Inf": "f97c00",
    "-Inf": "f9fc00",
    "-0.0 half": "f98000",
    "-0.0 double": "fb8000000000000000",
    "int map key": "a10101",
    "bytes map key": "a1416101",
    "array map key": "a1800101",
    "null map key": "a1f601",
    "trailing byte": "0100",
    "trailing item": "8101" "02",
    "empty input": "",
    "lone break": "ff",
    "truncated array": "8201",
    "truncated text": "6361",
    "invalid utf-8": "61ff",
}


@pytest.mark.parametrize("hexbytes", list(NON_CANONICAL.values()), ids=list(NON_CANONICAL))
def test_non_canonical_forms_are_rejected(hexbytes: str) -> None:
    with pytest.raises(CodecError):
        codec.decode(bytes.fromhex(hexbytes))


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        -0.0,
        [1, [float("nan")]],
        {"a": -0.0},
        {1: "x"},
        {b"k": "x"},
        {(1,): "x"},
        {None: 1},
        {"a": {2: 1}},
        codec.INT_MAX + 1,
        codec.INT_MIN - 1,
        {1, 2},
        frozenset(),
        bytearray(b"x"),
        object(),
        cbor2.CBORTag(2, b"\x01"),
        cbor2.undefined,
        cbor2.CBORSimpleValue(16),
    ],
    ids=repr,
)
def test_encode_rejects_values_outside_the_tree(value: Any) -> None:
    with pytest.raises(CodecError):
        codec.encode(value)
    with pytest.raises(CodecError):
        codec.check(value)


def test_depth_limit_on_encode_and_decode() -> None:
    # depth counts every level of the tree, leaves included
    ok = [nest(31, 1), nest(31, []), {"a": nest(30, 1)}]
    for x in ok:
        assert codec.decode(codec.encode(x)) == x
    too_deep = [nest(32, 1), nest(32, []), {"a": nest(31, 1)}]
    for x in too_deep:
        with pytest.raises(CodecError):
            codec.encode(x)
        with pytest.raises(CodecError):
            codec.decode(cbor2.dumps(x, canonical=True))


def test_hostile_nesting_is_a_codec_error_not_a_crash() -> None:
    with pytest.raises(CodecError):
        codec.decode(b"\x81" * 100_000 + b"\x01")
    with pytest.raises(CodecError):
        codec.decode(b"\xa1\x61a" * 50_000 + b"\x01")


def test_size_cap() -> None:
    data = codec.encode(b"x" * 100)
    assert codec.decode(data, max_size=len(data)) == b"x" * 100
    with pytest.raises(CodecError):
        codec.decode(data, max_size=len(data) - 1)


def test_decode_accepts_bytes_like() -> None:
    data = codec.encode(["a", 1])
    assert codec.decode(bytearray(data)) == ["a", 1]
    assert codec.decode(memoryview(data)) == ["a", 1]


@given(finite_floats)
def test_floats_use_the_shortest_exact_width(f: float) -> None:
    data = codec.encode(f)
    assert data[0] in (0xF9, 0xFA, 0xFB)
    assert same(codec.decode(data), f)
    # every wider encoding of the same float is refused
    wider = [b"\xfb" + struct.pack(">d", f)]
    if data[0] == 0xF9:
        wider.append(b"\xfa" + struct.pack(">f", f))
    for w in wider:
        if w != data:
            with pytest.raises(CodecError):
                codec.decode(w)


@given(st.integers(min_value=0, max_value=codec.INT_MAX))
def test_ints_refuse_every_longer_head(n: int) -> None:
    data = codec.encode(n)
    for ai, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 256 ** struct.calcsize(fmt):
            longer = bytes([ai]) + struct.pack(fmt, n)
            if longer != data:
                with pytest.raises(CodecError):
                    codec.decode(longer)


# --- mutated canonical bytes ------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(codec.encode(draw(trees)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "insert" or not data:
            data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, 255)))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


@given(mutated())
def test_mutated_bytes_decode_canonically_or_raise_codec_error(data: bytes) -> None:
    try:
        x = codec.decode(data)
    except CodecError:
        return
    assert codec.encode(x) == data


@given(st.binary(max_size=64))
def test_random_bytes_decode_canonically_or_raise_codec_error(data: bytes) -> None:
    try:
        x = codec.decode(data)
    except CodecError:
        return
    assert codec.encode(x) == data
