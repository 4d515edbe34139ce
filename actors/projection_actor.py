"""ProjectionActor: how an actor owns one projection and applies what the writer appended.

It wakes when notified (the writer's append, or the projection before it in the chain), catches
up in a worker thread (one SQLite transaction per batch, never awaiting inside it), publishes
its events once that transaction has committed, then marks the seq applied: waiters
(read-your-writes) resume and listeners (the next actor in the chain) are told.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, Protocol, TypeVar

import trio

from actors import blocking
from actors.events import EventHub
from actors.follower import Follower

R = TypeVar("R")


class Projection(Protocol):
    conn: Any

    @property
    def checkpoint(self) -> int: ...


P = TypeVar("P", bound=Projection)


class ProjectionActor(ABC, Generic[P, R]):
    def __init__(self, proj: P, hub: EventHub) -> None:
        self.proj = proj
        self.hub = hub
        self._limiter = trio.CapacityLimiter(1)
        self.follow = Follower(proj.checkpoint)
        self.notify = self.follow.notify
        self.wait_applied = self.follow.wait
        self.listeners = self.follow.listeners

    @property
    def applied(self) -> int:
        return self.follow.done

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        task_status.started()
        try:
            while True:
                await self.follow.next()
                result = await blocking.run_sync(self._catch_up, limiter=self._limiter)
                seq = self._publish(result)  # after the commit, before waiters resume
                self.follow.advance(seq)
        finally:
            self.proj.conn.close()

    @abstractmethod
    def _catch_up(self) -> R:
        """Apply everything appended (in a worker thread); what `_publish` needs."""

    @abstractmethod
    def _publish(self, result: R) -> int:
        """Publish the events of a committed catch-up; return the seq now applied."""
