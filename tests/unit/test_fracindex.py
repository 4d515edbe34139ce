"""Tests for openprod.engine.fracindex (spec 01 §1.5)."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from openprod.engine.fracindex import (
    DIGITS,
    FIRST_KEY,
    MAX_KEY_LEN,
    REBALANCE_LEN,
    is_valid_key,
    key_between,
    midpoint,
    needs_rebalance,
    rebalance,
)


def value(key: str) -> Fraction:
    """Numeric value of a key as an exact fraction in [0, 1)."""
    total = Fraction(0)
    for pos, ch in enumerate(key, start=1):
        total += Fraction(DIGITS.index(ch), 62**pos)
    return total


keys = st.builds(
    lambda body, last: body + last,
    st.text(alphabet=DIGITS, max_size=40),
    st.sampled_from(DIGITS[1:]),
)
# Keys biased towards shared prefixes and zeros, where the algorithm has its
# subtle cases.
tricky_keys = st.builds(
    lambda body, last: body + last,
    st.text(alphabet="01yz", max_size=12),
    st.sampled_from("1yz"),
)
any_key = st.one_of(keys, tricky_keys)


# -- constants and validation -------------------------------------------------


def test_digits_are_ascii_ordered_base62() -> None:
    assert len(DIGITS) == 62
    assert list(DIGITS) == sorted(DIGITS)
    assert DIGITS[:10] == "0123456789"
    assert DIGITS[10] == "A" and DIGITS[35] == "Z"
    assert DIGITS[36] == "a" and DIGITS[61] == "z"
    assert FIRST_KEY == "V" and DIGITS.index("V") == 31
    assert MAX_KEY_LEN == 128 and REBALANCE_LEN == 32


@pytest.mark.parametrize("s", ["V", "1", "z", "0V", "00001", "a" * 128, "Zz9", DIGITS[1:]])
def test_valid_keys(s: str) -> None:
    assert is_valid_key(s)


@pytest.mark.parametrize(
    "s",
    ["", "0", "V0", "a" * 129, "V-", "V ", "é", "V\n", None, 5, b"V", ["V"]],
)
def test_invalid_keys(s: object) -> None:
    assert not is_valid_key(s)


# -- midpoint -----------------------------------------------------------------


def test_explicit_vectors() -> None:
    # Start/end: (0 + 62) // 2 = 31 -> "V".
    assert midpoint("", None) == "V"
    # (31 + 62) // 2 = 46 = 36 + 10 -> "k".
    assert DIGITS[46] == "k"
    assert midpoint("V", None) == "k"
    # (0 + 31) // 2 = 15 = 10 + 5 -> "F".
    assert DIGITS[15] == "F"
    assert midpoint("", "V") == "F"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Shared prefix where `a` must be padded with 0s.
        ("", "0V", "0F"),
        ("1", "10V", "10F"),
        ("", "01", "00V"),
        ("y", "y1", "y0V"),
        ("", "1", "0V"),
        # Consecutive first digits, b longer than one digit: b's first digit.
        ("V", "W5", "W"),
        # Consecutive first digits, b a single digit: go above a's tail.
        ("V", "W", "VV"),
        ("49", "5", "4Z"),
        ("z", None, "zV"),
        ("zz", None, "zzV"),
        ("y", "z", "yV"),
        # Common prefix then plenty of room.
        ("V1", "V3", "V2"),
        ("V1", "V2", "V1V"),
    ],
)
def test_midpoint_vectors(a: str, b: str | None, expected: str) -> None:
    got = midpoint(a, b)
    assert got == expected
    assert a < got
    assert b is None or got < b


def test_midpoint_consecutive_digits_arithmetic() -> None:
    # "49","5": first digits 4 and 5 are consecutive and b is one digit, so
    # the result is "4" + midpoint("9", None) = "4" + digit((9 + 62) // 2).
    assert DIGITS[(9 + 62) // 2] == "Z"
    assert midpoint("49", "5") == "4Z"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("V", "V"),
        ("W", "V"),
        ("V0", None),
        ("", "V0"),
        ("", ""),
        ("", "0"),
        ("x-", None),
        ("", "a" * 129),
    ],
)
def test_midpoint_rejects_bad_input(a: str, b: str | None) -> None:
    with pytest.raises(ValueError):
        midpoint(a, b)


def test_midpoint_refuses_to_exceed_max_len() -> None:
    a = "z" * MAX_KEY_LEN
    assert is_valid_key(a)
    with pytest.raises(ValueError):
        midpoint(a, None)
    b = "0" * (MAX_KEY_LEN - 1) + "1"
    assert is_valid_key(b)
    with pytest.raises(ValueError):
        midpoint("", b)


@given(any_key, any_key)
@settings(max_examples=2000)
def test_midpoint_strictly_between(x: str, y: str) -> None:
    assume(x != y)
    a, b = min(x, y), max(x, y)
    m = midpoint(a, b)
    assert is_valid_key(m)
    assert a < m < b
    assert value(a) < value(m) < value(b)
    assert len(m) <= max(len(a), len(b)) + 1
    assert midpoint(a, b) == m  # deterministic


@given(any_key)
def test_midpoint_open_bounds(k: str) -> None:
    lo = midpoint("", k)
    hi = midpoint(k, None)
    assert is_valid_key(lo) and is_valid_key(hi)
    assert lo < k < hi


# -- key_between --------------------------------------------------------------


def test_key_between_without_rand_is_midpoint() -> None:
    assert key_between(None, None) == FIRST_KEY
    assert key_between("", None) == FIRST_KEY
    assert key_between("V", None) == "k"
    assert key_between(None, "V") == "F"


def test_key_between_appends_two_random_digits() -> None:
    k = key_between(None, None, random.Random(1).randrange)
    assert len(k) == 3 and k[0] == "V" and k[-1] != "0"
    assert is_valid_key(k)


def test_key_between_falls_back_when_suffix_would_cross_b() -> None:
    # midpoint("V", "W5") == "W", a prefix of b; "W" + two digits is below
    # "W5" only when the first digit is below "5".
    def high(n: int) -> int:
        return n - 1

    assert key_between("V", "W5", high) == "W"

    def low(n: int) -> int:
        return 0

    assert key_between("V", "W5", low) == "W01"


def test_key_between_rejects_bad_rand() -> None:
    with pytest.raises(ValueError):
        key_between(None, None, lambda n: n)


def test_key_between_concurrent_inserts_usually_differ() -> None:
    rng_a, rng_b = random.Random(10), random.Random(20)
    diffs = sum(
        key_between("V", "k", rng_a.randrange) != key_between("V", "k", rng_b.randrange)
        for _ in range(200)
    )
    assert diffs > 190


@given(st.one_of(st.none(), any_key), st.one_of(st.none(), any_key), st.randoms())
@settings(max_examples=1000)
def test_key_between_with_rand_strictly_between(
    a: str | None, b: str | None, rnd: random.Random
) -> None:
    if a is not None and b is not None:
        assume(a != b)
        a, b = min(a, b), max(a, b)
    k = key_between(a, b, rnd.randrange)
    assert is_valid_key(k)
    assert (a or "") < k
    assert b is None or k < b


# -- long insert sequences ----------------------------------------------------


def _check_sorted_valid(items: list[str]) -> None:
    assert all(is_valid_key(k) for k in items)
    assert all(x < y for x, y in itertools.pairwise(items))


@pytest.mark.parametrize("use_rand", [False, True])
def test_ten_thousand_random_inserts(use_rand: bool) -> None:
    rng = random.Random(20240611)
    items: list[str] = []
    for _ in range(10_000):
        pos = rng.randint(0, len(items))
        lower = items[pos - 1] if pos > 0 else None
        upper = items[pos] if pos < len(items) else None
        k = key_between(lower, upper, rng.randrange if use_rand else None)
        assert (lower or "") < k
        assert upper is None or k < upper
        items.insert(pos, k)
    _check_sorted_valid(items)
    assert len(set(items)) == len(items)


def test_repeated_append_and_prepend() -> None:
    items = [key_between(None, None)]
    for _ in range(400):
        items.append(key_between(items[-1], None))
        items.insert(0, key_between(None, items[0]))
    _check_sorted_valid(items)
    # Each step halves the gap to the open end, so a digit is added about
    # every 5-6 steps: 400 steps stay within MAX_KEY_LEN but long past the
    # point where the list should have been rebalanced.
    assert max(len(k) for k in items) < MAX_KEY_LEN
    assert needs_rebalance(items)
    assert items[0].startswith("0" * 60)
    assert items[-1].startswith("z" * 60)


def test_repeated_insert_same_gap_until_rebalance_needed() -> None:
    lo, hi = "V", "W"
    for _ in range(200):
        lo = midpoint(lo, hi)
        if needs_rebalance([lo]):
            break
    assert len(lo) > REBALANCE_LEN
    assert is_valid_key(lo) and "V" < lo < "W"


# -- rebalance ----------------------------------------------------------------


def _expected_len(n: int) -> int:
    length = 1
    while 62**length < 62 * (n + 1):
        length += 1
    return length


@pytest.mark.parametrize(
    ("n", "length"),
    [(1, 2), (2, 2), (61, 2), (62, 3), (3843, 3), (3844, 4), (10_000, 4)],
)
def test_rebalance_lengths(n: int, length: int) -> None:
    assert _expected_len(n) == length
    # L is the smallest with 62^L >= 62(n+1).
    assert 62**length >= 62 * (n + 1) > 62 ** (length - 1)
    out = rebalance(n)
    assert len(out) == n
    _check_sorted_valid(out)
    assert max(len(k) for k in out) <= length
    scale = 62**length
    for i, k in enumerate(out):
        assert value(k) == Fraction((i + 1) * scale // (n + 1), scale)
    assert not needs_rebalance(out)


def test_rebalance_small_cases() -> None:
    assert rebalance(0) == []
    # 62^2 / 2 = 1922 = 31*62 + 0 -> "V0" -> "V".
    assert rebalance(1) == ["V"]
    assert rebalance(61) == [DIGITS[i] for i in range(1, 62)]


@given(st.integers(min_value=0, max_value=5000))
@settings(max_examples=60)
def test_rebalance_property(n: int) -> None:
    out = rebalance(n)
    assert len(out) == n
    _check_sorted_valid(out)
    assert all(len(k) <= _expected_len(n) for k in out)


@pytest.mark.parametrize("n", [-1, 1.5, True, "3"])
def test_rebalance_rejects_bad_n(n: object) -> None:
    with pytest.raises(ValueError):
        rebalance(n)  # type: ignore[arg-type]


def test_needs_rebalance() -> None:
    assert not needs_rebalance([])
    assert not needs_rebalance(["V", "k", "a" * REBALANCE_LEN])
    assert needs_rebalance(["V", "a" * (REBALANCE_LEN + 1)])
    assert needs_rebalance(["V", "k", "V"])
    assert needs_rebalance(("F", "F"))
