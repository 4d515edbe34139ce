"""OplogWriter: the sole writer of the ops tables; serialises every command and every ingest.

Before running a command it waits until the StateDeriver (and the ConflictManager, when given)
have applied everything it appended, so validation reads its own writes; each command runs in a
worker thread inside one read snapshot of the derived tables, then `Appended(seq)` wakes the
projections. An in-flight command always finishes (worker threads are not abandoned); after
`close()` new commands are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import outcome
import trio

from actors import blocking
from actors.messages import Call
from actors.state_deriver import StateDeriver
from openprod.core.errors import OpenprodError
from openprod.engine.workspace import Workspace

if TYPE_CHECKING:
    from actors.conflict_manager import ConflictManager

T = TypeVar("T")
QUEUE = 64


class ShuttingDown(OpenprodError):
    code = "shutting_down"


class OplogWriter:
    def __init__(self, ws: Workspace, deriver: StateDeriver,
                 conflicts: ConflictManager | None = None) -> None:
        self.ws = ws
        self.deriver = deriver
        self.conflicts = conflicts
        self._send, self._recv = trio.open_memory_channel[Call](QUEUE)
        self._limiter = trio.CapacityLimiter(1)
        self.appended = ws.storage.head_seq()
        self.closing = False
        # told the new head after each append (the SyncService's fan-out); must not block
        self.listeners: list[Callable[[int], None]] = []
        # told the on-change runs a local commit fired (the ScriptRunner); must not block
        self.fired_listeners: list[Callable[[list[Any]], None]] = []

    async def call(self, fn: Callable[[Workspace], T], label: str = "") -> T:
        """Run fn(workspace) on the writer and return its result (or raise its error)."""
        if self.closing:
            raise ShuttingDown("the node is shutting down; try again after restart")
        reply_send, reply_recv = trio.open_memory_channel[outcome.Outcome[Any]](1)
        try:
            await self._send.send(Call(fn, reply_send, label))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ShuttingDown("the node is shutting down; try again after restart") from None
        async with reply_recv:
            result: outcome.Outcome[T] = await reply_recv.receive()
        return result.unwrap()

    def close(self) -> None:
        self.closing = True
        self._send.close()

    def waiting(self) -> int:
        """How many commands are queued behind the running one (a long command that can stop
        early, like a script's burst of calls, checks it from the writer's thread)."""
        return self._recv.statistics().current_buffer_used

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        task_status.started()
        async with self._recv:
            try:
                async for msg in self._recv:
                    # Waiting for the projections also keeps remote ingest from contending
                    # with them for the database's write lock (measured: faster overall).
                    await self.deriver.wait_applied(self.appended)
                    if self.conflicts is not None:  # resolutions read conflict state
                        await self.conflicts.wait_applied(self.appended)
                    result = await blocking.run_sync(self._run, msg.fn,
                                                           limiter=self._limiter)
                    fired = self.ws.take_fired()
                    if fired:
                        for fl in self.fired_listeners:
                            fl(fired)
                    head = self.ws.storage.head_seq()
                    if head > self.appended:
                        self.appended = head
                        self.deriver.notify(head)
                        for listener in self.listeners:
                            listener(head)
                    with trio.CancelScope(shield=True):
                        # the caller may have gone away; the command still happened
                        with contextlib.suppress(trio.BrokenResourceError,
                                                 trio.ClosedResourceError):
                            await msg.reply.send(result)
                        msg.reply.close()
            finally:
                self._refuse_queued()

    def _refuse_queued(self) -> None:
        """Commands still queued when the writer stops get ShuttingDown (never a silent hang)."""
        self.closing = True
        while True:
            try:
                msg = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            refused: outcome.Outcome[Any] = outcome.Error(
                ShuttingDown("the node is shutting down; try again after restart"))
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                                     trio.ClosedResourceError):
                msg.reply.send_nowait(refused)
            msg.reply.close()

    def _run(self, fn: Callable[[Workspace], Any]) -> outcome.Outcome[Any]:
        conn = self.ws.proj.conn
        conn.execute("BEGIN")  # one consistent snapshot of the derived tables for validation
        try:
            # schema/slot/redirect caches as the deriver committed them (one query when the
            # schema token says nothing changed)
            self.ws.proj.refresh()
            result: outcome.Outcome[Any] = outcome.capture(fn, self.ws)
            return result
        finally:
            conn.execute("COMMIT")
