"""Helpers for the conflict and overlay routes: concurrent writes from a second replica
(sealed by another identity, ingested through the node's writer), overlays, event waits, and the
body factories the generic route tests of test_api.py use for these routes.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors.events import Subscription
from openprod.core import ids
from openprod.core.identity import Identity
from openprod.engine.workspace import Workspace
from tests.api.conftest import Api

_n = itertools.count()

# overlay commands change no oplog (their answer's seq is the head); commit does write
NO_WRITE = frozenset(["/overlays/create", "/overlays/activate", "/overlays/stash",
                      "/overlays/discard", "/overlays/drop-change", "/overlays/resolve-drift"])


class Other:
    """A second replica of the node's workspace with its own identity (a concurrent writer)."""

    def __init__(self, api: Api, name: str = "Other", *, named: bool = False) -> None:
        self.api = api
        path = api.home.path.parent / f"replica-{next(_n)}"
        self.ident = Identity.generate(name)
        self.ws = Workspace.join(path, self.ident, ids.from_text(api.ws_id))
        self.named = named

    async def pull(self) -> None:
        """Receive everything the node has."""
        vc = self.ws.vclock()
        recs = await self.api.node.current.writer.call(lambda ws: ws.ops_since(vc))
        report = self.ws.ingest(recs)
        assert not report.rejected, report.rejected
        if self.named:
            self.named = False
            self.ws.put_config("actor", self.ident.actor.hex(), {"display_name": "Other",
                                                                  "device_name": "laptop"})

    async def push(self) -> int:
        """Deliver what the node lacks through its writer; the seq it reached."""
        writer = self.api.node.current.writer
        vc = await writer.call(lambda ws: ws.vclock())
        recs = self.ws.ops_since(vc)
        report = await writer.call(lambda ws: ws.ingest(recs))
        assert not report.rejected, report.rejected
        return report.seq

    def close(self) -> None:
        self.ws.close()


async def field_name(api: Api, table: str, label: str) -> str:
    tables = (await api.ok("GET", "/tables/list"))["tables"]
    (t,) = [t for t in tables if t["id"] == table]
    return str(next(f["name"] for f in t["fields"] if f["label"] == label))


async def field_conflict(api: Api, *, named: bool = False, table: str | None = None,
                         ) -> dict[str, Any]:
    """A record whose Name was set concurrently here ("mine") and by another replica
    ("theirs"): one open field conflict. Returns table, record id and the conflict record."""
    table = table or await api.table()
    rec = await api.record(table, Name="orig")
    other = Other(api, named=named)
    try:
        await other.pull()
        await api.ok("POST", "/records/update", {"id": rec, "values": {"Name": "mine"}})
        other.ws.update_record(rec, {"Name": "theirs"})
        seq = await other.push()
    finally:
        other.close()
    data = await api.ok("GET", f"/conflicts/list?after={seq}")
    (c,) = [c for c in data["conflicts"] if c["entity_id"] == rec]
    return {"table": table, "id": rec, "conflict": c, "seq": seq}


async def delete_conflict(api: Api, table: str | None = None) -> dict[str, Any]:
    """A record deleted here while another replica edited it: one open delete conflict."""
    table = table or await api.table()
    rec = await api.record(table, Name="orig")
    other = Other(api)
    try:
        await other.pull()
        await api.ok("POST", "/records/delete", {"ids": [rec]})
        other.ws.update_record(rec, {"Name": "edited"})
        seq = await other.push()
    finally:
        other.close()
    data = await api.ok("GET", f"/conflicts/list?after={seq}")
    (c,) = [c for c in data["conflicts"] if c["entity_id"] == rec]
    return {"table": table, "id": rec, "conflict": c, "seq": seq}


async def overlay(api: Api, name: str = "Plan B") -> str:
    return str((await api.ok("POST", "/overlays/create", {"name": name}))["overlay_id"])


async def staged(api: Api) -> dict[str, Any]:
    """A table, a record (Name "orig") and an active overlay staging Name "staged"."""
    table = await api.table()
    rec = await api.record(table, Name="orig")
    oid = await overlay(api)
    r = await api.ok("POST", "/records/update", {"id": rec, "values": {"Name": "staged"}})
    assert r.get("staged") is True
    changes = (await api.ok("GET", f"/overlays/{oid}/changes"))["changes"]
    return {"table": table, "id": rec, "overlay": oid, "local_op_id": changes[0]["local_op_id"],
            "field": changes[0]["field_name"]}


async def drifted(api: Api) -> dict[str, Any]:
    """`staged`, then the overlay stashed and Name changed canonically: the overlay drifts."""
    s = await staged(api)
    sub, _ = api.node.hub.subscribe()
    try:
        await api.ok("POST", "/overlays/stash", {"id": s["overlay"]})
        await api.ok("POST", "/records/update", {"id": s["id"], "values": {"Name": "canon"}})
        ev = await next_event(sub, "overlay_drift")
    finally:
        sub.close()
    await api.ok("POST", "/overlays/activate", {"id": s["overlay"]})
    return {**s, "event": ev}


async def next_event(sub: Subscription, kind: str, timeout: float = 10) -> dict[str, Any]:
    """The next event of type `kind` (others are skipped), bounded."""
    with trio.fail_after(timeout):
        while True:
            ev = await sub.recv.receive()
            if ev["type"] == kind:
                return ev


async def _b_resolve(api: Api) -> dict[str, Any]:
    c = (await field_conflict(api))["conflict"]
    return {"conflict_id": c["conflict_id"], "value": "agreed",
            "expected_tips": [t["op_id"] for t in c["tips"]]}


async def _b_ov_create(api: Api) -> dict[str, Any]:
    return {"name": "Plan B"}


async def _b_ov_activate(api: Api) -> dict[str, Any]:
    first = await overlay(api, "first")
    await overlay(api, "second")
    return {"id": first, "stash_current": True}


async def _b_ov_id(api: Api) -> dict[str, Any]:
    return {"id": (await staged(api))["overlay"]}


async def _b_drop(api: Api) -> dict[str, Any]:
    s = await staged(api)
    return {"overlay_id": s["overlay"], "local_op_id": s["local_op_id"]}


async def _b_resolve_drift(api: Api) -> dict[str, Any]:
    s = await drifted(api)
    return {"overlay_id": s["overlay"], "entity_id": s["id"], "field": s["field"],
            "choice": "keep_mine"}


BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/conflicts/resolve": _b_resolve, "/overlays/create": _b_ov_create,
    "/overlays/activate": _b_ov_activate, "/overlays/stash": _b_ov_id,
    "/overlays/commit": _b_ov_id, "/overlays/discard": _b_ov_id, "/overlays/drop-change": _b_drop,
    "/overlays/resolve-drift": _b_resolve_drift,
}


async def path_of(api: Api, path: str) -> str | None:
    """A concrete path for the parametrised GET routes of these features (None: not ours)."""
    if path == "/overlays/<id>/changes":
        return f"/overlays/{(await staged(api))['overlay']}/changes"
    return None
