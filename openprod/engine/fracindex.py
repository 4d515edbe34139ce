"""Fractional index keys for ordered edges (spec 01 §1.5).

This module owns the key format and the only sanctioned ways of making keys:
validation, the deterministic `midpoint`, the author-side `key_between` (with
optional random suffix), and the evenly spaced keys used when a list is
rebalanced.

A key is a base-62 fraction with no integer part: digits `0-9A-Za-z`, whose
ASCII order equals their value, 1..128 characters, and no trailing `0`.
Forbidding the trailing zero makes every value have exactly one spelling, so
plain string comparison is numeric comparison and equal values are equal
strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = [
    "DIGITS",
    "FIRST_KEY",
    "MAX_KEY_LEN",
    "REBALANCE_LEN",
    "is_valid_key",
    "key_between",
    "midpoint",
    "needs_rebalance",
    "rebalance",
]

DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BASE = len(DIGITS)
FIRST_KEY = "V"
MAX_KEY_LEN = 128
REBALANCE_LEN = 32

_VALUE: dict[str, int] = {ch: i for i, ch in enumerate(DIGITS)}
_DIGIT_SET = frozenset(DIGITS)


def is_valid_key(s: object) -> bool:
    """True if `s` is a well-formed index key."""
    return (
        isinstance(s, str)
        and 1 <= len(s) <= MAX_KEY_LEN
        and s[-1] != "0"
        and all(ch in _DIGIT_SET for ch in s)
    )


def _midpoint(a: str, b: str | None) -> str:
    """Spec algorithm on pre-validated input (a < b).

    Written as a loop rather than recursion; each pass corresponds to one
    recursive step of the spec. `a` may become empty and `b`'s remainder may
    start with `0` (e.g. a="", b="0V" strips to "0" + mid("", "V")), which is
    why this helper does not re-validate its arguments.
    """
    out: list[str] = []
    while True:
        if b is not None:
            # `a` is padded with 0s while matching: the missing digits of a
            # shorter fraction are zeros. `b` never needs padding because a
            # valid a < b cannot outlast b inside the common prefix.
            n = 0
            while n < len(b) and (a[n] if n < len(a) else "0") == b[n]:
                n += 1
            if n:
                out.append(b[:n])
                a = a[n:]
                b = b[n:]
        da = _VALUE[a[0]] if a else 0
        db = _VALUE[b[0]] if b else BASE
        if db - da >= 2:
            out.append(DIGITS[(da + db) // 2])
            return "".join(out)
        if b is not None and len(b) > 1:
            # b's first digit alone is shorter than b, hence below it, and
            # above a since it exceeds a's first digit.
            out.append(b[0])
            return "".join(out)
        # Consecutive first digits and no room below b: keep a's digit and
        # go above the rest of a with no upper bound.
        out.append(DIGITS[da])
        a = a[1:]
        b = None


def _check_bounds(a: str, b: str | None) -> None:
    if not isinstance(a, str) or (a != "" and not is_valid_key(a)):
        raise ValueError(f"invalid lower key: {a!r}")
    if b is not None:
        if not is_valid_key(b):
            raise ValueError(f"invalid upper key: {b!r}")
        if not a < b:
            raise ValueError(f"lower key {a!r} is not below upper key {b!r}")


def midpoint(a: str, b: str | None) -> str:
    """The deterministic key strictly between `a` and `b`.

    `a` is the lower key ("" = start of list), `b` the upper key (None = end).
    Raises ValueError on malformed keys, if not a < b, or if the result would
    exceed MAX_KEY_LEN (the result is at most one digit longer than the longer
    bound, so this only happens near the limit; rebalance first).
    """
    _check_bounds(a, b)
    result = _midpoint(a, b)
    if len(result) > MAX_KEY_LEN:
        raise ValueError("no key fits between these bounds; rebalance first")
    return result


def key_between(
    a: str | None,
    b: str | None,
    rand: Callable[[int], int] | None = None,
) -> str:
    """Author helper: a key strictly between `a` (None/"" = start) and `b` (None = end).

    With `rand` (called as rand(n) -> int in [0, n), e.g. `random.randrange`),
    two random digits are appended when the result stays below `b`, so that
    concurrent inserts at the same spot by different authors rarely tie.
    """
    lower = "" if a is None else a
    mid = midpoint(lower, b)
    if rand is None or len(mid) + 2 > MAX_KEY_LEN:
        return mid
    first = _draw(rand, BASE)
    # Last digit drawn from 1..61 so the key stays canonical.
    last = 1 + _draw(rand, BASE - 1)
    candidate = mid + DIGITS[first] + DIGITS[last]
    # Appending to `mid` only ever raises it, so `candidate > a` holds; only
    # the upper bound can be crossed, when `mid` is a prefix of `b`.
    if b is None or candidate < b:
        return candidate
    return mid


def _draw(rand: Callable[[int], int], n: int) -> int:
    value = rand(n)
    if not isinstance(value, int) or not 0 <= value < n:
        raise ValueError(f"rand({n}) returned {value!r}, expected an int in [0, {n})")
    return value


def needs_rebalance(keys: Sequence[str]) -> bool:
    """True if any key is longer than REBALANCE_LEN or two keys are equal."""
    seen: set[str] = set()
    for key in keys:
        if len(key) > REBALANCE_LEN or key in seen:
            return True
        seen.add(key)
    return False


def _rebalance_len(n: int) -> int:
    # Smallest L with 62^L >= 62(n+1): leaves at least 62 units of room
    # between neighbours so later inserts stay short.
    length = 1
    while BASE**length < BASE * (n + 1):
        length += 1
    return length


def rebalance(n: int) -> list[str]:
    """n evenly spaced, strictly increasing keys (spec 01 §1.5 rebalance)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"rebalance needs a non-negative int, got {n!r}")
    length = _rebalance_len(n)
    scale = BASE**length
    keys: list[str] = []
    for i in range(n):
        value = (i + 1) * scale // (n + 1)
        digits = ["0"] * length
        for pos in range(length - 1, -1, -1):
            value, rem = divmod(value, BASE)
            digits[pos] = DIGITS[rem]
        keys.append("".join(digits).rstrip("0"))
    return keys
