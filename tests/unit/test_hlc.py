"""Tests for openprod.core.hlc (spec 01 §6, §11 item 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import hlc
from openprod.core.errors import ClockDriftError, HlcOverflow
from tests.helpers import T0, ManualClock

walls = st.integers(min_value=0, max_value=2**64 - 1)
counters = st.integers(min_value=0, max_value=hlc.MAX_COUNTER)


def clock_at(now_ms: int, wall: int = 0, c: int = 0) -> tuple[hlc.Clock, ManualClock]:
    mc = ManualClock(now_ms)
    clk = hlc.Clock(mc)
    clk.l, clk.c = wall, c
    return clk, mc


def test_spec_vector() -> None:
    packed = hlc.pack(1_700_000_000_000, 42)
    assert packed == bytes.fromhex("0000018bcfe56800" "0000002a")
    assert len(packed) == 12
    assert hlc.unpack(packed) == (1_700_000_000_000, 42)
    assert hlc.wall_ms(packed) == 1_700_000_000_000
    assert hlc.is_hlc(packed)
    assert not hlc.is_hlc(packed[:11])
    assert not hlc.is_hlc(bytearray(packed))


def test_limits_are_the_spec_values() -> None:
    assert hlc.MAX_DRIFT_MS == 300_000
    assert hlc.STALE_MS == 604_800_000
    assert hlc.MAX_COUNTER == 2**32 - 1


@given(walls, counters)
def test_pack_unpack_round_trip(w: int, c: int) -> None:
    assert hlc.unpack(hlc.pack(w, c)) == (w, c)


@given(walls, counters, walls, counters)
def test_bytewise_order_equals_tuple_order(w1: int, c1: int, w2: int, c2: int) -> None:
    a, b = hlc.pack(w1, c1), hlc.pack(w2, c2)
    assert (a < b) == ((w1, c1) < (w2, c2))
    assert (a == b) == ((w1, c1) == (w2, c2))


# --- tick -------------------------------------------------------------------------------------

def test_tick_follows_the_spec_rule() -> None:
    clk, mc = clock_at(T0)
    assert hlc.unpack(clk.tick()) == (T0, 0)
    assert hlc.unpack(clk.tick()) == (T0, 1)  # frozen clock: counter
    mc.advance(5)
    assert hlc.unpack(clk.tick()) == (T0 + 5, 0)  # wall moved: counter resets
    mc.set(T0 - 1000)
    assert hlc.unpack(clk.tick()) == (T0 + 5, 1)  # clock went backwards: keep l
    assert clk.current() == hlc.pack(T0 + 5, 1)


@given(
    st.integers(min_value=0, max_value=2**50),
    st.lists(st.integers(min_value=-10_000, max_value=10_000), min_size=1, max_size=60),
)
def test_tick_strictly_increases_under_frozen_and_backward_clocks(
    start: int, steps: list[int]
) -> None:
    clk, mc = clock_at(start)
    prev = clk.tick()
    for step in steps:
        mc.set(max(0, mc.ms + step))
        h = clk.tick()
        assert h > prev
        assert hlc.wall_ms(h) >= mc.ms
        prev = h


def test_tick_many_stamps_consecutive_increasing_hlcs() -> None:
    clk, _ = clock_at(T0)
    hs = clk.tick_many(5)
    assert hs == sorted(hs) and len(set(hs)) == 5
    assert hs[-1] == clk.current()
    assert hlc.unpack(hs[0]) == (T0, 0) and hlc.unpack(hs[-1]) == (T0, 4)


def test_tick_overflow_raises_and_leaves_state_unchanged() -> None:
    clk, _ = clock_at(T0, T0, hlc.MAX_COUNTER)
    with pytest.raises(HlcOverflow):
        clk.tick()
    assert (clk.l, clk.c) == (T0, hlc.MAX_COUNTER)


def test_tick_at_max_counter_recovers_when_wall_advances() -> None:
    clk, mc = clock_at(T0, T0, hlc.MAX_COUNTER)
    mc.advance(1)
    assert hlc.unpack(clk.tick()) == (T0 + 1, 0)


def test_tick_many_is_all_or_nothing() -> None:
    clk, _ = clock_at(T0, T0, hlc.MAX_COUNTER - 2)
    with pytest.raises(HlcOverflow):
        clk.tick_many(3)
    assert (clk.l, clk.c) == (T0, hlc.MAX_COUNTER - 2)
    assert [hlc.unpack(h)[1] for h in clk.tick_many(2)] == [
        hlc.MAX_COUNTER - 1, hlc.MAX_COUNTER,
    ]


# --- receive ----------------------------------------------------------------------------------

@given(
    st.integers(min_value=1_000_000, max_value=2**48),
    st.integers(min_value=-1_000_000, max_value=1_000_000),
    st.integers(min_value=0, max_value=2**31),
    st.integers(min_value=-1_000_000, max_value=hlc.MAX_DRIFT_MS),
    st.integers(min_value=0, max_value=2**31),
)
def test_receive_result_exceeds_local_and_remote(
    now: int, dl: int, c: int, dr: int, rc: int
) -> None:
    clk, _ = clock_at(now, max(0, now + dl), c)
    local = clk.current()
    remote = hlc.pack(now + dr, rc)
    clk.receive(remote)
    after = clk.current()
    assert after > local
    assert after > remote
    assert hlc.wall_ms(after) >= now
    assert clk.tick() > after


@pytest.mark.parametrize(
    ("local", "remote", "now", "expected"),
    [
        ((T0, 5), (T0, 9), T0 - 10, (T0, 10)),  # l' = l = r.wall: max(c, r.c) + 1
        ((T0, 5), (T0 - 1, 9), T0 - 10, (T0, 6)),  # only l' = l
        ((T0, 5), (T0 + 7, 9), T0, (T0 + 7, 10)),  # only l' = r.wall
        ((T0, 5), (T0 - 3, 9), T0 + 2, (T0 + 2, 0)),  # now dominates
    ],
)
def test_receive_follows_the_spec_rule(
    local: tuple[int, int], remote: tuple[int, int], now: int, expected: tuple[int, int]
) -> None:
    clk, _ = clock_at(now, *local)
    clk.receive(hlc.pack(*remote))
    assert (clk.l, clk.c) == expected


def test_drift_boundary_300000_accepted_300001_rejected() -> None:
    clk, _ = clock_at(T0, T0 - 50, 3)
    ok = hlc.pack(T0 + 300_000, 0)
    too_far = hlc.pack(T0 + 300_001, 0)
    with pytest.raises(ClockDriftError) as ei:
        clk.check_drift(too_far)
    assert ei.value.code == "future_hlc"
    with pytest.raises(ClockDriftError):
        clk.receive(too_far)
    assert (clk.l, clk.c) == (T0 - 50, 3)
    clk.check_drift(ok)
    clk.receive(ok)
    assert clk.current() > ok


def test_receive_overflow_raises_and_leaves_state_unchanged() -> None:
    clk, _ = clock_at(T0, T0, 7)
    with pytest.raises(HlcOverflow):
        clk.receive(hlc.pack(T0, hlc.MAX_COUNTER))
    assert (clk.l, clk.c) == (T0, 7)


def test_drift_limit_is_configurable() -> None:
    mc = ManualClock(T0)
    clk = hlc.Clock(mc, max_drift_ms=10)
    with pytest.raises(ClockDriftError):
        clk.receive(hlc.pack(T0 + 11, 0))
    clk.receive(hlc.pack(T0 + 10, 0))


# --- stale, observe ---------------------------------------------------------------------------

def test_is_stale_boundary_is_seven_days() -> None:
    clk, _ = clock_at(T0 + hlc.STALE_MS)
    assert not clk.is_stale(hlc.pack(T0, 0))  # exactly 7 days old
    assert not clk.is_stale(hlc.pack(T0, hlc.MAX_COUNTER))
    assert clk.is_stale(hlc.pack(T0 - 1, 0))  # 7 days and 1 ms
    assert not clk.is_stale(hlc.pack(T0 + hlc.STALE_MS + 10_000, 0))  # future


def test_observe_only_raises_the_state() -> None:
    clk, _ = clock_at(T0)
    clk.observe(hlc.pack(T0 + 100, 4))
    assert clk.current() == hlc.pack(T0 + 100, 4)
    clk.observe(hlc.pack(T0 + 50, 9))
    assert clk.current() == hlc.pack(T0 + 100, 4)
    assert clk.tick() == hlc.pack(T0 + 100, 5)


def test_system_clock_is_milliseconds() -> None:
    clk = hlc.Clock()
    h = clk.tick()
    assert abs(hlc.wall_ms(h) - hlc.system_ms()) < 60_000
    assert hlc.wall_ms(h) > T0
