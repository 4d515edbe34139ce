"""Reader: query-side access to the derived tables on its own connection, off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from actors import blocking
from openprod.engine.state import StateProjection
from openprod.engine.views import Views
from openprod.storage import db

T = TypeVar("T")


class Reader:
    def __init__(self, oplog_path: Path) -> None:
        self._proj = StateProjection(db.connect(oplog_path, synchronous="NORMAL"))
        self.views = Views(self._proj)
        self._limiter = trio.CapacityLimiter(1)

    async def read(self, fn: Callable[[Views], T]) -> T:
        """Run fn(views) in a worker thread inside one read snapshot."""
        return await blocking.run_sync(self._run, fn, limiter=self._limiter)

    def _run(self, fn: Callable[[Views], T]) -> T:
        conn = self._proj.conn
        conn.execute("BEGIN")
        try:
            self._proj.refresh()
            return fn(self.views)
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        self._proj.conn.close()
