"""OverlayManager: drift detection after canonical changes (spec 02 §2.6).

Overlays (local-only staging) live in the OplogWriter's Workspace, which routes record commands
into the active one; this actor only re-checks drift. It wakes after each ConflictManager
catch-up (so the state and conflict projections are both current), looks on a connection of its
own whether any overlay stages ops at all and, if so, runs `check_drift()` through the writer
(which serialises every access to the overlay store) and publishes one `overlay_drift` event
per overlay with newly drifted fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from actors import blocking
from actors.events import EventHub
from actors.follower import Follower
from actors.oplog_writer import OplogWriter, ShuttingDown
from openprod.core import ids
from openprod.storage import db


class OverlayManager:
    def __init__(self, oplog_path: Path, writer: OplogWriter, hub: EventHub) -> None:
        self.conn = db.connect(oplog_path, synchronous="NORMAL")
        self.writer = writer
        self.hub = hub
        self._limiter = trio.CapacityLimiter(1)
        # woken after the ConflictManager applied new ops (both projections are then current)
        self.follow = Follower(0)
        self.notify = self.follow.notify
        self.wait_checked = self.follow.wait  # until the drift check after a seq is out

    @property
    def checked(self) -> int:
        """The canonical seq the last drift check saw."""
        return self.follow.done

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        task_status.started()
        try:
            while True:
                target = await self.follow.next()
                if await blocking.run_sync(self._staging, limiter=self._limiter):
                    try:
                        events, seq = await self.writer.call(_check, "check_drift")
                    except ShuttingDown:
                        return
                    for ev in events:
                        self.hub.publish(drift_event(ev, seq))
                self.follow.advance(target)
        finally:
            self.conn.close()

    def _staging(self) -> bool:
        for _ in self.conn.execute("SELECT 1 FROM overlay_ops LIMIT 1"):
            return True
        return False


def drift_event(ev: dict[str, Any], seq: int) -> dict[str, Any]:
    """An engine `overlay_drift` event (overlay id as bytes) as published on /events."""
    return {**ev, "overlay_id": ids.to_text(ev["overlay_id"]), "seq": seq}


def _check(ws: Any) -> tuple[list[dict[str, Any]], int]:
    return ws.check_drift(), ws.storage.head_seq()
