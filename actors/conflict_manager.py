"""ConflictManager: owns the conflict projection and its connection (spec 02 §1.10).

It wakes after the StateDeriver applied new ops (a deriver listener), catches up in a worker
thread (one SQLite transaction per batch, never awaiting inside it), publishes "applied up to N"
to waiters (read-your-writes; the OplogWriter waits for it before validating the next command,
since resolution commands read conflict state) and, after the commit, the conflict events
`conflict_opened` / `conflict_updated` / `conflict_resolved` / `resolution_rejected`.

`ConflictReader` answers the API's conflict queries on a connection of its own, in one read
snapshot of both projections (a conflict record names its table, field and the tips' authors).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from actors import blocking
from actors.events import EventHub
from actors.projection_actor import ProjectionActor
from openprod.core import hlc as hlcmod
from openprod.core import ids, values
from openprod.engine.conflicts import ConflictProjection
from openprod.engine.state import ENTITY_KEY, StateProjection
from openprod.engine.views import Views
from openprod.engine.views import actor_names as views_actor_names
from openprod.storage import db

T = TypeVar("T")


class ConflictManager(ProjectionActor[ConflictProjection, tuple[list[dict[str, Any]], int]]):
    def __init__(self, oplog_path: Path, hub: EventHub) -> None:
        # woken after the StateDeriver applied new ops; listeners (the OverlayManager) hear each
        # applied seq after its events
        super().__init__(ConflictProjection(db.connect(oplog_path, synchronous="NORMAL")), hub)

    def _catch_up(self) -> tuple[list[dict[str, Any]], int]:
        events = self.proj.catch_up()
        return events, self.proj.checkpoint

    def _publish(self, result: tuple[list[dict[str, Any]], int]) -> int:
        events, seq = result
        for ev in events:
            self.hub.publish({**ev, "seq": seq})
        return seq


class ConflictReader:
    """Conflict queries off the event loop, in one snapshot of the conflict and state tables."""

    def __init__(self, oplog_path: Path) -> None:
        conn = db.connect(oplog_path, synchronous="NORMAL")
        self._state = StateProjection(conn)
        self.views = Views(self._state)
        self.proj = ConflictProjection(conn)
        self._limiter = trio.CapacityLimiter(1)

    async def read(self, fn: Callable[[ConflictReader], T]) -> T:
        return await blocking.run_sync(self._run, fn, limiter=self._limiter)

    def _run(self, fn: Callable[[ConflictReader], T]) -> T:
        conn = self._state.conn
        conn.execute("BEGIN")
        try:
            self._state.refresh()
            self.proj.refresh()
            return fn(self)
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        self._state.conn.close()

    # --- queries (run inside `read`) --------------------------------------------------------
    def count_open(self) -> int:
        for (n,) in self._state.conn.execute(
            "SELECT count(*) FROM cf_records WHERE status = 'open'"
        ):
            return int(n)
        return 0

    def list(self, status: str = "open") -> list[dict[str, Any]]:
        names = self.actor_names()
        return [self._api_json(rec, names) for rec in self.proj.list_conflicts(status)]

    def get(self, cid: bytes) -> dict[str, Any] | None:
        rec = self.proj.get(cid)
        return None if rec is None else self._api_json(rec, self.actor_names())

    def actor_names(self) -> dict[str, str]:
        return views_actor_names(self._state.conn)

    def _api_json(self, rec: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        """The projection's record plus what the UI shows: table, field name/label, authors."""
        e = ids.from_text(rec["entity_id"])
        skey = rec["field"]
        out = dict(rec)
        if rec["kind"] == "property":  # entity_id is the edge id, field_name the property
            table, field_name, label = None, rec["property"], None
            edge = self.views.edge(e)
            out["edge_type"] = edge["type"] if edge is not None else None
            out["src"] = ids.to_text(edge["src"]) if edge is not None else None
            out["dst"] = ids.to_text(edge["dst"]) if edge is not None else None
        else:
            table, field_name, label = self._place(e, skey)
        out["table"] = table
        out["field_name"] = field_name
        if label is not None:
            out["field_label"] = label
        out["tips"] = [{**t, "actor_name": names.get(t["actor"], t["actor"][:8]),
                        "at_ms": hlcmod.wall_ms(bytes.fromhex(t["hlc"]))} for t in rec["tips"]]
        for k in ("resolutions", "rejected_resolutions"):
            out[k] = [{**r, "actor_name": names.get(r["actor"], r["actor"][:8]),
                       "at_ms": hlcmod.wall_ms(bytes.fromhex(r["hlc"]))} for r in rec[k]]
        return out

    def _place(self, e: bytes, skey: str) -> tuple[str | None, str | None, str | None]:
        """(table id, field name, field label) a conflict shows in."""
        attached = self.views.attached(e)
        if skey == ENTITY_KEY or not values.is_field_key(skey):
            if not attached:  # deleted entity: the tables it was in
                attached = [f for (f,) in self._state.conn.execute(
                    "SELECT facet FROM facets WHERE entity = ? ORDER BY facet", (e,))]
            return (attached[0] if attached else None), None, None
        others = sorted(k for k, s in self._state.slots.items() if s == skey and k != skey)
        members = [skey, *others]
        for key in members:
            facet, name = values.split_field_key(key)
            if facet in attached:
                f = self.views.field_def(facet, name)
                return facet, name, f.label if f is not None else None
        facet, name = values.split_field_key(skey)
        f = self.views.field_def(facet, name)
        return (facet if f is not None else None), name, f.label if f is not None else None
