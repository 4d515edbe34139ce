"""Hybrid logical clock: 12 bytes = wall ms (u64 BE) ‖ counter (u32 BE), compared bytewise.

`tick` stamps each local op; `receive` folds in the header HLC of each admitted bundle and refuses
one from further than `max_drift_ms` in the future, leaving the clock unchanged.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from openprod.core.errors import ClockDriftError, HlcOverflow

MAX_DRIFT_MS = 300_000
STALE_MS = 604_800_000
MAX_COUNTER = 2**32 - 1
ZERO = bytes(12)

_HLC = struct.Struct(">QI")


def pack(wall: int, counter: int) -> bytes:
    return _HLC.pack(wall, counter)


def unpack(h: bytes) -> tuple[int, int]:
    wall, counter = _HLC.unpack(h)
    return wall, counter


def wall_ms(h: bytes) -> int:
    return int.from_bytes(h[:8], "big")


def is_hlc(h: object) -> bool:
    return type(h) is bytes and len(h) == 12


def system_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """The (l, c) state of one node's HLC. `now` is injectable for tests and simulation."""

    def __init__(
        self,
        now: Callable[[], int] = system_ms,
        *,
        max_drift_ms: int = MAX_DRIFT_MS,
        stale_ms: int = STALE_MS,
    ) -> None:
        self.now = now
        self.max_drift_ms = max_drift_ms
        self.stale_ms = stale_ms
        self.l = 0
        self.c = 0

    def current(self) -> bytes:
        return pack(self.l, self.c)

    def observe(self, h: bytes) -> None:
        """Raise the state to at least h without checks (startup: the max HLC in the oplog)."""
        w, c = unpack(h)
        if (w, c) > (self.l, self.c):
            self.l, self.c = w, c

    def tick(self) -> bytes:
        now = self.now()
        l2 = max(self.l, now)
        c2 = self.c + 1 if l2 == self.l else 0
        if c2 > MAX_COUNTER:
            raise HlcOverflow("HLC counter overflow")
        self.l, self.c = l2, c2
        return pack(l2, c2)

    def tick_many(self, n: int) -> list[bytes]:
        """n consecutive ticks, all or nothing (a bundle is stamped in one go)."""
        saved = (self.l, self.c)
        try:
            return [self.tick() for _ in range(n)]
        except HlcOverflow:
            self.l, self.c = saved
            raise

    def check_drift(self, remote: bytes) -> None:
        rw = wall_ms(remote)
        if rw > self.now() + self.max_drift_ms:
            raise ClockDriftError(
                "bundle clock is too far in the future", remote_ms=rw, limit_ms=self.max_drift_ms
            )

    def receive(self, remote: bytes) -> None:
        rw, rc = unpack(remote)
        now = self.now()
        if rw > now + self.max_drift_ms:
            raise ClockDriftError(
                "bundle clock is too far in the future", remote_ms=rw, limit_ms=self.max_drift_ms
            )
        lw, c = self.l, self.c
        l2 = max(lw, rw, now)
        if l2 == lw and l2 == rw:
            c2 = max(c, rc) + 1
        elif l2 == lw:
            c2 = c + 1
        elif l2 == rw:
            c2 = rc + 1
        else:
            c2 = 0
        if c2 > MAX_COUNTER:
            raise HlcOverflow("HLC counter overflow")
        self.l, self.c = l2, c2

    def is_stale(self, remote: bytes) -> bool:
        return wall_ms(remote) < self.now() - self.stale_ms
