"""EventHub: fan-out of engine events to WebSocket subscribers, with a replay buffer.

Every event gets an increasing `event_id` (increasing across launches too). A reconnecting client
passes the last id it saw and receives what it missed from the buffer, or `{"type": "resync"}`
when that is no longer held (it then re-queries everything on screen). A subscriber too slow to
keep up is dropped with `resync` rather than growing memory.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

BUFFER = 2048
SUBSCRIBER_QUEUE = 512


class Subscription:
    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.send, self.recv = trio.open_memory_channel[dict[str, Any]](SUBSCRIBER_QUEUE)
        self.overflowed = False

    def close(self) -> None:
        self.hub._subs.discard(self)
        self.send.close()


class EventHub:
    def __init__(self) -> None:
        self._buffer: deque[dict[str, Any]] = deque(maxlen=BUFFER)
        self._subs: set[Subscription] = set()
        # ids go on across launches (they start at a microsecond clock reading), so a `since`
        # from an earlier launch predates the buffer and gets resync, never a wrong replay
        self.last_id = time.time_ns() // 1000

    def publish(self, event: dict[str, Any]) -> None:
        self.last_id += 1
        event = {**event, "event_id": self.last_id}
        self._buffer.append(event)
        for sub in list(self._subs):
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.overflowed = True
                sub.close()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subs.discard(sub)

    def subscribe(self, since: int | None = None) -> tuple[Subscription, list[dict[str, Any]]]:
        """A live subscription plus the backlog after `since` (or a resync marker)."""
        sub = Subscription(self)
        self._subs.add(sub)
        if since is None or since >= self.last_id:
            return sub, []
        oldest = self._buffer[0]["event_id"] if self._buffer else self.last_id + 1
        if since + 1 < oldest:
            return sub, [{"type": "resync", "event_id": self.last_id}]
        return sub, [e for e in self._buffer if e["event_id"] > since]

    @property
    def subscribers(self) -> int:
        return len(self._subs)
