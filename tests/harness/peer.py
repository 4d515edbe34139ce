"""`Peer`: one full in-process node driven through its real HTTP routes (spec 03 §9 "Harness API").

A peer is a `Node` (all actors, its own home and `oplog.db`, no Hypercorn) with an injectable
`ManualClock` for its HLC wall time. Every command and query goes through the same Quart routes a
browser uses, via `create_app(node).test_client()`: JSON in, JSON out, the same validation, and
each 4xx/5xx answer re-raised as the typed exception the API mapped to that `error.code` (the
`OpenprodError` subclass whose `code` matches, else `HarnessApiError`). Reads pass
`after=<writer head>`, so they see every write made before them (read-your-writes).

The few methods of the contract that have no route yet (`merge`, `split`, `add_to_table`,
`edit_text`, `set_edge_property`, `clear_edge_property`, `get_edge`) run the same `Workspace`
command through `actors.api._command`, the helper the routes use, so semantics and errors match.

    async with trio.open_nursery() as n:
        a = await open_peer(n, tmp_path, "a")
        t = await a.create_table("Cues", [("Name", "text"), ("Dur", "float")])
        rec = await a.create_record(t, {"Name": "Q1"})
        ...
        await a.aclose()
        n.cancel_scope.cancel()
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

import trio
from quart.testing import QuartClient
from quart_trio import QuartTrio

from actors import api as apimod
from actors.api import ApiError, create_app
from actors.events import Subscription
from actors.home import Home
from actors.node import Node
from openprod.core import ids
from openprod.core.errors import OpenprodError
from openprod.core.ops import open_bundle
from openprod.engine.workspace import Result, Workspace
from tests.helpers import ManualClock

__all__ = ["EventStream", "FieldSpec", "HarnessApiError", "Peer", "error_class", "open_peer"]

T = TypeVar("T")
FieldSpec = tuple[str, str] | tuple[str, str, Mapping[str, Any]] | Mapping[str, Any]
TOKEN = "harness-token"  # any secret string: the test client sends it as the Bearer token
# modules whose OpenprodError subclasses the API can answer with (imported so they register)
_ERROR_MODULES = ("openprod.core.errors", "openprod.engine.conflicts", "openprod.engine.overlays",
                  "openprod.sync.messages", "actors.oplog_writer", "actors.home", "actors.api")


class HarnessApiError(ApiError):
    """An API error whose `code` no `OpenprodError` subclass declares (e.g. `overlay_active`,
    `forbidden`, `timeout`: the codes the API raises as a plain `ApiError`)."""

    def __init__(self, code: str, message: str, status: int, details: Mapping[str, Any]) -> None:
        super().__init__(code, message, **dict(details))
        self.status = status


def _error_classes() -> dict[str, type[OpenprodError]]:
    """code -> the OpenprodError subclass declaring it (base classes first, domain modules only)."""
    for m in _ERROR_MODULES:
        importlib.import_module(m)
    out: dict[str, type[OpenprodError]] = {"error": OpenprodError}
    queue: list[type[OpenprodError]] = [OpenprodError]
    seen: set[type[OpenprodError]] = set()
    while queue:  # breadth first: a parent's code wins over a subclass that repeats it
        cls = queue.pop(0)
        for sub in cls.__subclasses__():
            if sub in seen:
                continue
            seen.add(sub)
            queue.append(sub)
            code = sub.__dict__.get("code")
            if (isinstance(code, str) and code not in out
                    and sub.__module__.startswith(("openprod.", "actors."))):
                out[code] = sub
    return out


def error_class(code: str) -> type[OpenprodError] | None:
    """The typed exception class the API maps to `code` (None: only a plain `ApiError` has it)."""
    return _error_classes().get(code)


def _raise_for(status: int, data: Any) -> None:
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        raise HarnessApiError("internal", f"HTTP {status} without an error body: {data!r}",
                              status, {})
    code = str(err.get("code", "error"))
    message = str(err.get("message", ""))
    raw = err.get("details")
    details: dict[str, Any] = raw if isinstance(raw, dict) else {}
    cls = error_class(code)
    if cls is None:
        raise HarnessApiError(code, message, status, details)
    try:
        exc = cls(message, **details)
    except TypeError:  # a subclass with its own constructor: build it field by field
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        exc.message, exc.details = message, dict(details)
    exc.status = status  # type: ignore[attr-defined]
    raise exc


def _field_spec(f: FieldSpec) -> dict[str, Any]:
    """`(label, type)`, `(label, type, options)` or a dict of the route's field shape (a dict
    naming the field only by `name` uses it as the label)."""
    if isinstance(f, tuple):
        out: dict[str, Any] = {"label": f[0], "type": f[1]}
        if len(f) == 3 and f[2]:
            out["options"] = dict(f[2])
        return out
    d = dict(f)
    if "label" not in d and "name" in d:
        d["label"] = d.pop("name")
    return d


def _json_safe(x: Any) -> Any:
    """Bytes as the API renders them: 16-byte ids as hyphenated text, other bytes as hex."""
    return apimod._json_safe(x)


class EventStream:
    """The node's events (the same dicts `WS /events` sends, without its `hello` frame), from
    the moment `Peer.events()` was called. An async iterator and an async context manager."""

    def __init__(self, sub: Subscription, backlog: list[dict[str, Any]]) -> None:
        self._sub = sub
        self._backlog = list(backlog)
        self._resynced = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._backlog:
            return self._backlog.pop(0)
        try:
            return await self._sub.recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._sub.overflowed and not self._resynced:  # as WS /events does
                self._resynced = True
                return {"type": "resync", "event_id": self._sub.hub.last_id}
            raise StopAsyncIteration from None

    async def next(self, type: str | None = None, *, timeout: float = 10) -> dict[str, Any]:
        """The next event (of `type`, skipping others), failing after `timeout` seconds."""
        with trio.fail_after(timeout):
            async for ev in self:
                if type is None or ev.get("type") == type:
                    return ev
        raise AssertionError(f"the event stream ended before a {type or 'any'} event")

    def close(self) -> None:
        self._sub.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


class Peer:
    """One node of a test network; methods mirror the command/query routes of spec 05 §5."""

    def __init__(self, name: str, node: Node, ws_id: str, clock: ManualClock) -> None:
        self.name = name
        self.node = node
        self.ws_id = ws_id
        self.clock = clock
        self.actor_id = node.ident.actor.hex()
        self.app: QuartTrio = create_app(node)
        self.client = self._test_client()

    def _test_client(self) -> QuartClient:
        # QuartTrio's default test client class is QuartClient (its typing protocol wrongly
        # makes `json` a required argument)
        return cast(QuartClient, self.app.test_client())

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.actor_id[:8]}>"

    # --- transport -------------------------------------------------------------------------
    @property
    def headers(self) -> dict[str, str]:
        return {"Host": f"127.0.0.1:{self.node.port}",
                "Authorization": f"Bearer {self.node.token}"}

    async def post(self, path: str, body: Mapping[str, Any] | None = None, *,
                   keep_none: bool = False) -> Any:
        """POST a command route; its JSON, or the typed exception of its error. Keys whose value
        is None are left out of the body unless `keep_none` (where null means "clear")."""
        payload = {k: v for k, v in (body or {}).items() if keep_none or v is not None}
        resp = await self.client.open(path, method="POST", headers=self.headers, json=payload)
        return await self._json(resp)

    async def get(self, path: str, **query: Any) -> Any:
        """GET a query route with `after=<writer head>` (read-your-writes)."""
        q = {k: v for k, v in query.items() if v is not None}
        q.setdefault("after", self.node.current.writer.appended)
        resp = await self.client.open(f"{path}?{urlencode(q)}", method="GET",
                                      headers=self.headers)
        return await self._json(resp)

    async def _json(self, resp: Any) -> Any:
        raw = await resp.get_data()
        data = json.loads(raw) if raw else None
        if resp.status_code != 200:
            _raise_for(resp.status_code, data)
        return data

    async def command(self, fn: Callable[[Workspace], T]) -> T:
        """A Workspace command through the routes' own helper (for commands without a route)."""
        result: T = await apimod._command(self.node, fn)
        return result

    @staticmethod
    def _result(r: Result, **extra: Any) -> dict[str, Any]:
        return dict(_json_safe(apimod._result(r, **extra)))

    # --- tables and records ----------------------------------------------------------------
    async def create_table(self, name: str, fields: Sequence[FieldSpec] = ()) -> str:
        r = await self.post("/tables/create", {"label": name,
                                               "fields": [_field_spec(f) for f in fields]})
        return str(r["table"])

    async def add_field(self, table: str, label: str, type: str = "text", *, crdt: bool = False,
                        options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(await self.post("/tables/add-field", {
            "table": table, "label": label, "type": type, "crdt": crdt or None,
            "options": dict(options) if options else None}))

    async def list_tables(self) -> list[dict[str, Any]]:
        return list((await self.get("/tables/list"))["tables"])

    async def create_record(self, table: str, values: Mapping[str, Any] | None = None) -> str:
        r = await self.post("/records/create", {"table": table, "values": dict(values or {})})
        return str(r["id"])

    async def update_record(self, id: str, table: str | None, values: Mapping[str, Any],
                            ) -> dict[str, Any]:
        return dict(await self.post("/records/update", {"id": id, "table": table,
                                                        "values": dict(values)}))

    async def update_records(self, updates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Several records in one change: `[{id, values, table?}, …]`."""
        return dict(await self.post("/records/update", {"updates": [dict(u) for u in updates]}))

    async def clear_field(self, id: str, table: str, field: str) -> dict[str, Any]:
        # /records/update with null clears a field (there is no separate clear route)
        return dict(await self.post("/records/update", {"id": id, "table": table,
                                                        "values": {field: None}}))

    async def delete_record(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/records/delete", {"ids": [id]}))

    async def delete_records(self, ids_: Sequence[str], table: str | None = None,
                             ) -> dict[str, Any]:
        return dict(await self.post("/records/delete", {"ids": list(ids_), "table": table}))

    async def get_record(self, id: str) -> dict[str, Any]:
        """The record as `GET /records/:id` returns it (values keyed by field name)."""
        return dict(await self.get(f"/records/{id}"))

    async def list_records(self, table: str) -> list[dict[str, Any]]:
        """`GET /records/list`, flattened: `{"id": …, <field label>: value, …}` per record."""
        head = self.node.current.writer.appended
        rows = (await self.get("/records/list", table=table, after=head))["records"]
        if not rows:
            return []
        tables = {t["id"]: t for t in (await self.get("/tables/list", after=head))["tables"]}
        out = []
        for r in rows:
            labels = {f["name"]: f["label"] for f in tables[r["table"]]["fields"]}
            out.append({"id": r["id"], **{labels.get(k, k): v for k, v in r["values"].items()}})
        return out

    async def add_to_table(self, id: str, table: str,
                           values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        e = apimod._id(id)
        vals = dict(values or {})
        return self._result(await self.command(lambda ws: ws.add_to_table(e, table, vals)))

    async def remove_from_table(self, id: str, table: str) -> dict[str, Any]:
        """Detach a record from one table (`/records/delete` with `table`; the record itself is
        deleted once it is in no table)."""
        return dict(await self.post("/records/delete", {"ids": [id], "table": table}))

    async def edit_text(self, id: str, table: str, field: str, index: int, insert: str = "",
                        delete: int = 0) -> dict[str, Any]:
        e = apimod._id(id)
        return self._result(await self.command(
            lambda ws: ws.edit_text(e, table, field, index, delete, insert)))

    # --- edges -----------------------------------------------------------------------------
    async def define_edge_type(self, type: str, ordered: bool = False,
                               props: Mapping[str, str] | None = None, *,
                               label: str | None = None) -> dict[str, Any]:
        return dict(await self.post("/edge-types/create", {
            "type": type, "label": label or type, "ordered": ordered,
            "props": dict(props) if props else None}))

    async def edge_types(self) -> list[dict[str, Any]]:
        return list((await self.get("/edge-types/list"))["edge_types"])

    async def create_edge(self, type: str, src: str, dst: str,
                          props: Mapping[str, Any] | None = None) -> str:
        r = await self.post("/edges/create", {"type": type, "src": src, "dst": dst,
                                              "props": dict(props) if props else None})
        return str(r["id"])

    async def create_ordered_edge(self, type: str, src: str, dst: str, after: str | None = None,
                                  before: str | None = None) -> str:
        r = await self.post("/edges/create", {"type": type, "src": src, "dst": dst,
                                              "after": after, "before": before})
        return str(r["id"])

    async def move_edge(self, id: str, after: str | None = None, before: str | None = None,
                        ) -> dict[str, Any]:
        return dict(await self.post("/edges/reorder", {"id": id, "after": after,
                                                       "before": before}))

    async def delete_edge(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/edges/delete", {"id": id}))

    async def list_edges(self, entity: str | None = None, *, type: str | None = None,
                         direction: str | None = None) -> list[dict[str, Any]]:
        r = await self.get("/edges/list", entity=entity, type=type, direction=direction)
        return list(r["edges"])

    async def get_edge(self, id: str) -> dict[str, Any]:
        """One visible edge, shaped like an item of `list_edges` (NotFound when deleted or
        hidden by a deleted end)."""
        g = apimod._id(id)

        def fn(ws: Workspace) -> dict[str, Any]:
            info = ws.views.edge(g)
            rows = (ws.list_edges(info["src"], info["type"], "out") if info is not None
                    else ws.list_edges())  # staged in the active overlay: not in the views yet
            for d in rows:
                if d["id"] == ids.to_text(g):
                    return d
            raise apimod.NotFound(f"no live edge {ids.to_text(g)}", edge=ids.to_text(g))
        return dict(_json_safe(await self.command(fn)))

    async def set_edge_property(self, id: str, key: str, value: Any) -> dict[str, Any]:
        g = apimod._id(id)
        return self._result(await self.command(lambda ws: ws.set_edge_property(g, key, value)))

    async def clear_edge_property(self, id: str, key: str) -> dict[str, Any]:
        g = apimod._id(id)
        return self._result(await self.command(lambda ws: ws.set_edge_property(g, key, None)))

    # --- identity repair -------------------------------------------------------------------
    async def merge(self, a: str, b: str) -> dict[str, Any]:
        """Merge two records; `survivor` is the smaller id (the absorbed one redirects to it)."""
        ea, eb = apimod._id(a, "a"), apimod._id(b, "b")
        r = await self.command(lambda ws: ws.merge(ea, eb))
        return self._result(r, survivor=ids.to_text(min(ea, eb)))

    async def split(self, source: str, facets: Sequence[str]) -> str:
        """Split the given tables off `source` into a new record; returns the new record's id."""
        e = apimod._id(source, "source")
        tables = list(facets)
        r = await self.command(lambda ws: ws.split(e, tables))
        return ids.to_text(r.id)

    # --- undo ------------------------------------------------------------------------------
    async def undo(self) -> dict[str, Any]:
        return dict(await self.post("/undo"))

    async def redo(self) -> dict[str, Any]:
        return dict(await self.post("/redo"))

    # --- conflicts -------------------------------------------------------------------------
    async def list_conflicts(self, status: str = "open") -> list[dict[str, Any]]:
        return list((await self.get("/conflicts/list", status=status))["conflicts"])

    async def resolve_conflict(self, conflict_id: str, value: Any = None, choice: str | None = None,
                               expected_tips: Sequence[str] | None = None) -> dict[str, Any]:
        """`value` for a field conflict (None clears), or `choice` restore / keep_deleted."""
        body: dict[str, Any] = {"conflict_id": conflict_id, "value": value}
        if choice is not None:
            body["choice"] = choice
        if expected_tips is not None:
            body["expected_tips"] = list(expected_tips)
        return dict(await self.post("/conflicts/resolve", body, keep_none=True))

    # --- rules (spec 04 §6) ---------------------------------------------------------------
    async def put_rule(self, rule: Mapping[str, Any] | None = None, /, **fields: Any,
                       ) -> dict[str, Any]:
        """`POST /rules/put` with `rule` and/or keyword fields (`id`, `label`, `source`,
        `target`, `when`, `set`, `auto_accept`, `on_condition_lost`, `enabled`,
        `apply_existing`); keys left out keep the current (or module manifest) value.
        Returns {id, seq, bundle_id?}."""
        return dict(await self.post("/rules/put", {**dict(rule or {}), **fields}))

    async def list_rules(self) -> list[dict[str, Any]]:
        """`GET /rules/list`: every rule document with its `status` (active, disabled, dormant,
        suspended, invalid, offered)."""
        return list((await self.get("/rules/list"))["rules"])

    async def delete_rule(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/rules/delete", {"id": id}))

    async def apply_rule(self, id: str) -> dict[str, Any]:
        """`POST /rules/apply`: {id, changed, seq, bundle_id?}."""
        return dict(await self.post("/rules/apply", {"id": id}))

    async def proposals(self) -> list[dict[str, Any]]:
        """`GET /rules/proposals`: this peer's open proposals, re-checked."""
        return list((await self.get("/rules/proposals"))["proposals"])

    async def accept_proposal(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/rules/proposals/accept", {"id": id}))

    async def dismiss_proposal(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/rules/proposals/dismiss", {"id": id}))

    # --- overlays --------------------------------------------------------------------------
    async def create_overlay(self, name: str) -> str:
        return str((await self.post("/overlays/create", {"name": name}))["overlay_id"])

    async def activate_overlay(self, id: str, stash_current: bool = False) -> dict[str, Any]:
        return dict(await self.post("/overlays/activate", {"id": id,
                                                           "stash_current": stash_current}))

    async def stash_overlay(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/overlays/stash", {"id": id}))

    async def commit_overlay(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/overlays/commit", {"id": id}))

    async def discard_overlay(self, id: str) -> dict[str, Any]:
        return dict(await self.post("/overlays/discard", {"id": id}))

    async def drop_change(self, overlay_id: str, local_op_id: str | None = None, *,
                          entity_id: str | None = None, field: str | None = None,
                          ) -> dict[str, Any]:
        return dict(await self.post("/overlays/drop-change", {
            "overlay_id": overlay_id, "local_op_id": local_op_id, "entity_id": entity_id,
            "field": field}))

    async def resolve_drift(self, overlay_id: str, entity_id: str, field: str, choice: str,
                            ) -> dict[str, Any]:
        return dict(await self.post("/overlays/resolve-drift", {
            "overlay_id": overlay_id, "entity_id": entity_id, "field": field,
            "choice": choice}))

    async def list_overlays(self) -> list[dict[str, Any]]:
        return list((await self.get("/overlays/list"))["overlays"])

    async def overlay_changes(self, id: str) -> dict[str, Any]:
        """`{"changes": [...], "drift": [...]}` as `GET /overlays/:id/changes` returns it."""
        return dict(await self.get(f"/overlays/{id}/changes"))

    # --- modules and scripts (spec 04 §3, §7) -----------------------------------------------
    async def install_module(self, path: Path | str) -> dict[str, Any]:
        """`POST /modules/install` of a package folder or .zip (an absolute path)."""
        return dict(await self.post("/modules/install", {"path": str(path)}))

    async def adopt_module(self, id: str, version: str | None = None) -> dict[str, Any]:
        return dict(await self.post("/modules/adopt", {"id": id, "version": version}))

    async def list_scripts(self) -> list[dict[str, Any]]:
        """`GET /scripts/list`: the runnable scripts with this user's decisions and triggers."""
        return list((await self.get("/scripts/list"))["scripts"])

    async def run_script(self, script: str, args: Mapping[str, Any] | None = None,
                         grants: Mapping[str, str] | None = None) -> dict[str, Any]:
        """`POST /scripts/run`: {run_id, status, script} (the run is queued)."""
        return dict(await self.post("/scripts/run", {"script": script, "args": args,
                                                     "grants": grants}))

    async def script_run(self, run_id: str) -> dict[str, Any]:
        """One recent run: status, log, error, overlay_id, op_count, ..."""
        return dict((await self.get("/scripts/runs", run_id=run_id))["run"])

    async def script_runs(self) -> list[dict[str, Any]]:
        return list((await self.get("/scripts/runs"))["runs"])

    async def cancel_script(self, run_id: str) -> dict[str, Any]:
        return dict(await self.post("/scripts/cancel", {"run_id": run_id}))

    async def set_script_trigger(self, script: str, enabled: bool) -> dict[str, Any]:
        """Switch this user's on-change trigger of `script` on or off."""
        return dict(await self.post("/scripts/triggers", {"script": script,
                                                          "enabled": enabled}))

    async def decide_capability(self, script: str, capability: str,
                                decision: str | None) -> dict[str, Any]:
        """Remember always / never, or forget (None) a capability decision."""
        return dict(await self.post("/scripts/capabilities", {
            "script": script, "capability": capability, "decision": decision},
            keep_none=True))

    @staticmethod
    async def script_ended(events: EventStream, run_id: str | None = None, *,
                           timeout: float = 10) -> dict[str, Any]:
        """The `script_completed` / `script_failed` event of run_id (or of the next run to
        end), read from a stream opened before the run started."""
        with trio.fail_after(timeout):
            async for ev in events:
                if ev.get("type") in ("script_completed", "script_failed") and (
                        run_id is None or ev.get("run_id") == run_id):
                    return ev
        raise AssertionError("the event stream ended before the run did")

    # --- workspace state -------------------------------------------------------------------
    async def current(self) -> dict[str, Any]:
        return dict(await self.get("/workspace/current"))

    async def state_hash(self) -> str:
        return str((await self.get("/workspace/state"))["state_hash"])

    async def oplog_digest(self) -> str:
        return str((await self.get("/workspace/state"))["oplog_digest"])

    async def vector_clock(self) -> dict[str, str]:
        vc = await self.node.current.writer.call(lambda ws: ws.vclock())
        return {a.hex(): h.hex() for a, h in sorted(vc.items())}

    async def bundles(self) -> list[dict[str, Any]]:
        """The stored oplog in canonical order (by first op stamp), decoded."""
        def read(ws: Workspace) -> list[dict[str, Any]]:
            out = []
            for rec in ws.storage.bundles_since({}):
                b = open_bundle(rec, ws.ws, verify_sig=False)
                out.append({
                    "bundle_id": ids.to_text(b.bundle_id), "kind": b.kind,
                    "actor": b.actor.hex(), "hlc": b.hlc.hex(),
                    "causal_vc": {a.hex(): h.hex() for a, h in sorted(b.causal_vc.items())},
                    "meta": _json_safe(b.meta),
                    "ops": [{"op_id": ids.to_text(o.op_id), "t": o.t, "hlc": o.hlc.hex(),
                             **_json_safe(o.p)} for o in b.ops],
                })
            return out
        return await self.node.current.writer.call(read)

    async def verify(self) -> bool:
        """Full replay of the oplog in a scratch database: does its state hash match?"""
        def run(ws: Workspace) -> bool:
            # The writer runs calls inside a read snapshot (BEGIN) of the derived tables, but
            # verify() catches the projection up in its own write transaction: end the snapshot
            # for the call (the deriver already applied every append, so nothing is written).
            conn = ws.proj.conn
            conn.execute("COMMIT")
            try:
                return bool(ws.verify()["ok"])
            finally:
                conn.execute("BEGIN")
        return await self.node.current.writer.call(run)

    def events(self, since: int | None = None) -> EventStream:
        """Events from now on (or replayed after event id `since`), as `WS /events` sends them."""
        sub, backlog = self.node.hub.subscribe(since)
        return EventStream(sub, backlog)

    async def settled(self) -> None:
        """Wait until both projections applied (and published the events of) every write."""
        s = self.node.current
        await s.deriver.wait_applied(s.writer.appended)
        await s.conflicts.wait_applied(s.writer.appended)

    # --- lifecycle -------------------------------------------------------------------------
    async def fork(self, name: str) -> dict[str, Any]:
        """`POST /workspace/fork`: the node now has the fork open (this peer's `ws_id` follows
        it); returns the route's answer {id, name, seq, report, …}."""
        r = dict(await self.post("/workspace/fork", {"name": name}))
        self.ws_id = str(r["id"])
        return r

    async def restart(self) -> None:
        """Stop the workspace's actors (closing its databases) and reopen it from its files."""
        await self.node.open_workspace(self.ws_id)
        self.app = create_app(self.node)
        self.client = self._test_client()

    async def aclose(self) -> None:
        """Stop the node: refuse new commands, let in-flight ones finish, close the databases."""
        self.node.shutdown.set()
        session, self.node.session = self.node.session, None
        if session is not None:
            await session.stop()


async def open_peer(nursery: trio.Nursery, root: Path, name: str, *, ws_id: str | None = None,
                    clock: ManualClock | None = None) -> Peer:
    """A node at `root / name` whose actors run in `nursery`: creating workspace "Test" (ws_id
    None) or holding an empty replica of `ws_id` for sync to fill. Its HLC reads `clock`."""
    clock = clock if clock is not None else ManualClock()
    home = Home(root / name)
    home.ensure()
    ident = home.identity(name)
    if ws_id is None:
        ws = home.create_workspace(ident, "Test", now=clock)
        ws_id = ids.to_text(ws.ws)
    else:
        ws = home.join_workspace(ident, ws_id)
        ws_id = ids.to_text(ws.ws)
    ws.close()
    node = Node(home, ident, TOKEN, now=clock)
    node.attach(nursery)
    await node.open_workspace(ws_id)
    return Peer(name, node, ws_id, clock)
