"""Follower: how an actor follows the oplog. `notify(seq)` wakes its loop; `done` is how far it
has processed; `wait(seq)` parks a caller until then (read-your-writes); listeners hear each
advance (that is how the StateDeriver wakes the ConflictManager, which wakes the OverlayManager).
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Follower:
    def __init__(self, done: int = 0) -> None:
        self.done = done
        self._target = done
        self._wake = trio.Event()
        self._lot = trio.lowlevel.ParkingLot()
        # called on the trio thread with the new `done`; they must not block
        self.listeners: list[Callable[[int], None]] = []

    def notify(self, seq: int) -> None:
        """Something up to `seq` is ready for this actor."""
        if seq > self._target:
            self._target = seq
            self._wake.set()

    async def next(self) -> int:
        """Wait until notified; return the seq to process up to."""
        await self._wake.wait()
        self._wake = trio.Event()
        return self._target

    def advance(self, seq: int) -> None:
        """Processed up to `seq`: wake waiters, then tell listeners."""
        self.done = max(self.done, seq)
        self._lot.unpark_all()
        for listener in self.listeners:
            listener(self.done)

    async def wait(self, seq: int) -> None:
        while self.done < seq:
            await self._lot.park()
