"""Node: the supervisor. One nursery tree runs the open workspace's actors and the API.

    Node
    ├── Session (one open workspace; replaced on /workspace/open)
    │   ├── StateDeriver     projection + events
    │   ├── ConflictManager  conflict projection + conflict events (wakes after the deriver)
    │   ├── OplogWriter      sole writer: commands and ingest; owns the overlay store
    │   └── OverlayManager   drift re-check after canonical changes (wakes after conflicts)
    └── Api                Quart-Trio on Hypercorn (HTTP, WebSocket /events, web/)

A crash in any actor cancels the whole tree (structured concurrency) and `serve` re-raises it
after closing the databases; SIGINT/SIGTERM shut down gracefully: WebSocket clients get 1001,
in-flight commands finish, new ones are refused, the databases close.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from actors.conflict_manager import ConflictManager, ConflictReader
from actors.events import EventHub
from actors.home import Home
from actors.oplog_writer import OplogWriter
from actors.overlay_manager import OverlayManager
from actors.reader import Reader
from actors.state_deriver import StateDeriver
from actors.sync_service import SyncService
from openprod.core import hlc as hlcmod
from openprod.core import ids
from openprod.core.identity import Identity
from openprod.engine.workspace import OPLOG_FILE, Workspace

log = logging.getLogger("openprod.node")


class Session:
    """The actors of one open workspace."""

    def __init__(self, path: Path, ident: Identity, hub: EventHub, *,
                 now: Callable[[], int] = hlcmod.system_ms,
                 sync: dict[str, Any] | None = None) -> None:
        self.path = path
        self.ws = Workspace.open(path, ident, now=now, derive=False)
        self.ws_id = ids.to_text(self.ws.ws)
        self.deriver = StateDeriver(path / OPLOG_FILE, hub)
        self.conflicts = ConflictManager(path / OPLOG_FILE, hub)
        self.deriver.listeners.append(self.conflicts.notify)
        self.writer = OplogWriter(self.ws, self.deriver, self.conflicts)
        self.overlays = OverlayManager(path / OPLOG_FILE, self.writer, hub)
        self.conflicts.listeners.append(self.overlays.notify)
        self.reader = Reader(path / OPLOG_FILE)
        self.conflict_reader = ConflictReader(path / OPLOG_FILE)
        self.sync = SyncService(self, hub, now_ms=now, **(sync or {}))
        # the active overlay as of the last writer call (overlays all load stashed)
        self.active_overlay: bytes | None = self.ws.overlays.active
        self.cancel_scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as n:
                    await n.start(self.deriver.run)
                    await n.start(self.conflicts.run)
                    await n.start(self.writer.run)
                    await n.start(self.overlays.run)
                    await n.start(self.sync.run)
                    # bring the projections up to the oplog head before serving reads
                    head = self.ws.storage.head_seq()
                    self.deriver.notify(head)
                    self.conflicts.notify(head)
                    await self.deriver.wait_applied(head)
                    await self.conflicts.wait_applied(head)
                    task_status.started()
        finally:
            self.writer.close()
            self.reader.close()
            self.conflict_reader.close()
            self.ws.close()
            self.done.set()

    async def stop(self) -> None:
        """Refuse new commands, let the in-flight one finish, then cancel the actors."""
        self.writer.close()
        self.cancel_scope.cancel()
        await self.done.wait()


class Node:
    def __init__(self, home: Home, ident: Identity, token: str, *,
                 now: Callable[[], int] = hlcmod.system_ms) -> None:
        self.home = home
        self.now = now
        self.ident = ident
        self.token = token
        self.hub = EventHub()
        self.session: Session | None = None
        self.shutdown = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.url = ""
        self.port = 0

    def attach(self, nursery: trio.Nursery) -> None:
        """Run sessions in this nursery (tests drive the API in-process without Hypercorn)."""
        self._nursery = nursery

    @property
    def current(self) -> Session:
        if self.session is None:
            from actors.oplog_writer import ShuttingDown

            raise ShuttingDown("no workspace is open")
        return self.session

    async def open_workspace(self, ws_id: str) -> Session:
        path = self.home.workspace_path(ws_id)
        assert self._nursery is not None
        if self.session is not None:
            old, self.session = self.session, None
            await old.stop()
        session = Session(path, self.ident, self.hub, now=self.now)
        await self._nursery.start(session.run)
        self.session = session
        self.home.set_last(ws_id)
        self.hub.publish({"type": "workspace_opened", "workspace_id": ws_id})
        return session

    async def run(self, ws_id: str, host: str, port: int, *,
                  task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from actors.api import serve_api

        async with trio.open_nursery() as n:
            self._nursery = n
            await self.open_workspace(ws_id)
            bound: list[str] = await n.start(serve_api, self, host, port)
            self.url = bound[0]
            task_status.started(self.url)
            n.start_soon(self._signals)
            await self.shutdown.wait()
            if self.session is not None:
                await self.session.stop()
            n.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for sig in sigs:
                log.info("received %s, shutting down", signal.Signals(sig).name)
                self.shutdown.set()
                return

    def info(self) -> dict[str, Any]:
        s = self.session
        return {"workspace_id": s.ws_id if s else None, "url": self.url}
