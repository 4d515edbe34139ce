"""Overlays (spec 02 §2): local-only staging areas for changes not yet committed.

`OverlayStore` owns the `overlays` and `overlay_ops` tables in `oplog.db` (never synced, never
in the state hash) and the in-memory overlay undo/redo stacks. Staged ops are unsigned payloads
with local ids, plus the canonical base they were staged against (for drift, §2.6). The
Workspace facade routes user commands here while an overlay is active and commits overlays as
one `overlay_commit` bundle.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apsw
import attrs

from openprod.core import codec, ids
from openprod.core import ops as O
from openprod.core.errors import NotFound, ValidationError
from openprod.storage import db

SCHEMA = """
CREATE TABLE IF NOT EXISTS overlays(
  id BLOB PRIMARY KEY, name TEXT NOT NULL, source BLOB NOT NULL, status TEXT NOT NULL,
  created_at INTEGER NOT NULL, commit_bundle BLOB, meta BLOB);
CREATE TABLE IF NOT EXISTS overlay_ops(
  overlay_id BLOB NOT NULL, seq INTEGER NOT NULL, local_op_id BLOB NOT NULL, t TEXT NOT NULL,
  payload BLOB NOT NULL, entity_id BLOB, skey TEXT, base_op_id BLOB, base_value BLOB,
  base_tips BLOB, drifted INTEGER NOT NULL DEFAULT 0, drift_kind TEXT, step INTEGER NOT NULL,
  PRIMARY KEY (overlay_id, seq));
"""

# Ops an overlay can stage (records, fields, facets, edges). Anything else goes canonical.
STAGEABLE = frozenset([
    "CreateEntity", "DeleteEntity", "RestoreEntity", "AttachFacet", "DetachFacet", "SetField",
    "ClearField", "CreateEdge", "DeleteEdge", "RestoreEdge", "SetEdgeProperty",
    "ClearEdgeProperty", "CreateOrderedEdge", "MoveOrderedEdge",
])
KEPT_DELETED = "kept_deleted"  # drift_kind of rows whose `deleted` drift was answered keep_mine


class OverlayNotFound(NotFound):
    code = "overlay_not_found"


class UnresolvedDriftError(ValidationError):
    code = "unresolved_drift"

    def __init__(self, message: str, fields: list[dict[str, Any]]) -> None:
        super().__init__(message, fields=fields)
        self.fields = fields


@attrs.frozen
class Row:
    """One staged op."""

    overlay_id: bytes
    seq: int
    local_op_id: bytes
    payload: O.Payload
    entity_id: bytes | None
    skey: str | None
    base_op_id: bytes | None
    base_value: bytes | None
    base_tips: bytes | None
    drifted: bool
    drift_kind: str | None
    step: int

    def db_tuple(self) -> tuple[Any, ...]:
        return (self.overlay_id, self.seq, self.local_op_id, self.payload.t,
                codec.encode(self.payload.to_wire()), self.entity_id, self.skey,
                self.base_op_id, self.base_value, self.base_tips, int(self.drifted),
                self.drift_kind, self.step)


_COLS = ("overlay_id, seq, local_op_id, t, payload, entity_id, skey, base_op_id, base_value,"
         " base_tips, drifted, drift_kind, step")


def _row(r: Sequence[Any]) -> Row:
    (oid, seq, lid, t, payload, e, skey, bop, bval, btips, drifted, kind, step) = r
    payload_obj = O.payload_from_wire(t, codec.decode(bytes(payload)))
    return Row(bytes(oid), int(seq), bytes(lid), payload_obj,
               bytes(e) if e is not None else None, skey,
               bytes(bop) if bop is not None else None, bytes(bval) if bval is not None else None,
               bytes(btips) if btips is not None else None, bool(drifted), kind, int(step))


class OverlayState:
    """What an overlay's staged ops change, for validation and reads (later ops win)."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self.created: set[bytes] = set()
        self.deleted: set[bytes] = set()
        self.facets: dict[tuple[bytes, str], bool] = {}  # (e, facet) -> attached
        self.writes: dict[tuple[bytes, str], Row] = {}  # (e, skey) -> latest staged write
        self.edges_created: dict[bytes, O.Payload] = {}
        self.edges_deleted: set[bytes] = set()
        self.drifted: set[tuple[bytes, str]] = set()
        for r in rows:
            p = r.payload
            if isinstance(p, O.CreateEntity):
                self.created.add(p.e)
            elif isinstance(p, O.DeleteEntity):
                self.deleted.add(p.e)
                self.edges_deleted.update(p.cascade)
            elif isinstance(p, O.RestoreEntity):
                self.deleted.discard(p.e)
            elif isinstance(p, O.AttachFacet | O.DetachFacet):
                self.facets[(p.e, p.facet)] = isinstance(p, O.AttachFacet)
            elif isinstance(p, O.SetField | O.ClearField) and r.skey is not None:
                self.writes[(p.e, r.skey)] = r
            elif isinstance(p, O.CreateEdge | O.CreateOrderedEdge):
                self.edges_created[p.edge] = p
                self.edges_deleted.discard(p.edge)
            elif isinstance(p, O.DeleteEdge):
                self.edges_deleted.add(p.edge)
            elif isinstance(p, O.RestoreEdge):
                self.edges_deleted.discard(p.edge)
            if r.drifted and r.entity_id is not None:
                self.drifted.add((r.entity_id, r.skey or "$entity"))

    def staged_facets(self, e: bytes) -> dict[str, bool]:
        return {f: a for (x, f), a in self.facets.items() if x == e}


class OverlayStore:
    """The overlays of one workspace and their staged ops; at most one is active."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        with db.transaction(conn):
            conn.execute(SCHEMA)
            if "meta" not in {r[1] for r in conn.execute("PRAGMA table_info(overlays)")}:
                conn.execute("ALTER TABLE overlays ADD COLUMN meta BLOB")  # before issue 7
            conn.execute("UPDATE overlays SET status = 'stashed' WHERE status = 'active'")
        # in-memory overlay undo/redo: oid -> list of steps (each a list of rows)
        self.undo: dict[bytes, list[list[Row]]] = {}
        self.redo: dict[bytes, list[list[Row]]] = {}
        self._step = 0
        self.version = 0  # bumped on every change (the facade caches the active state on it)
        # a script run's overlay, standing in for the active one while one of its calls runs
        # (the user's own active overlay is untouched; see Workspace.staging_into)
        self.override: bytes | None = None

    # --- lifecycle -----------------------------------------------------------------------
    def forget_committed(self, in_oplog: Any) -> list[bytes]:
        """Delete overlays whose noted commit bundle is already in the oplog (§2.7 step 5)."""
        gone = [bytes(o) for o, b in self.conn.execute(
            "SELECT id, commit_bundle FROM overlays WHERE commit_bundle IS NOT NULL")
            if in_oplog(bytes(b))]
        for oid in gone:
            self._delete(oid)
        return gone

    def create(self, name: str, source: Sequence[str] = ("user",), *, active: bool = True,
               meta: Mapping[str, Any] | None = None) -> bytes:
        """A new overlay. `meta` (a script run's: its `script` document and trigger depth) is
        kept with it and the `script` part goes into the commit bundle's meta."""
        if not isinstance(name, str) or not name.strip() or len(name) > O.MAX_LABEL:
            raise ValidationError(f"an overlay needs a name of 1-{O.MAX_LABEL} characters")
        oid = ids.new_id()
        with db.transaction(self.conn):
            if active:
                self.conn.execute("UPDATE overlays SET status = 'stashed' WHERE status = 'active'")
            self.conn.execute(
                "INSERT INTO overlays(id, name, source, status, created_at, meta)"
                " VALUES (?,?,?,?,?,?)",
                (oid, name.strip(), codec.encode(list(source)), "active" if active else "stashed",
                 int(time.time() * 1000), codec.encode(dict(meta)) if meta else None))
        self._clear_stacks()
        return oid

    def get(self, oid: bytes) -> dict[str, Any]:
        for _id, name, source, status, created, cb, meta in self.conn.execute(
            "SELECT id, name, source, status, created_at, commit_bundle, meta FROM overlays"
            " WHERE id = ?", (oid,)
        ):
            n = self._scalar("SELECT count(*) FROM overlay_ops WHERE overlay_id = ?", oid)
            d = self._scalar("SELECT count(*) FROM overlay_ops WHERE overlay_id = ?"
                             " AND drifted = 1", oid)
            return {"id": oid, "name": name, "source": list(codec.decode(bytes(source))),
                    "status": status, "created_at": created,
                    "commit_bundle": bytes(cb) if cb is not None else None,
                    "changes": int(n), "drifted": int(d),
                    "meta": codec.decode(bytes(meta)) if meta is not None else {}}
        raise OverlayNotFound(f"no overlay {ids.to_text(oid) if ids.is_id(oid) else oid!r}",
                              overlay_id=ids.to_text(oid) if ids.is_id(oid) else repr(oid))

    def list_all(self) -> list[dict[str, Any]]:
        return [self.get(bytes(o)) for (o,) in self.conn.execute(
            "SELECT id FROM overlays ORDER BY created_at, id")]

    def overlay_ids(self) -> list[bytes]:
        return [bytes(o) for (o,) in self.conn.execute("SELECT id FROM overlays")]

    @property
    def active(self) -> bytes | None:
        if self.override is not None:
            return self.override
        for (o,) in self.conn.execute("SELECT id FROM overlays WHERE status = 'active'"):
            return bytes(o)
        return None

    def activate(self, oid: bytes) -> None:
        self.get(oid)
        if self.active == oid:
            return
        with db.transaction(self.conn):
            self.conn.execute("UPDATE overlays SET status = 'stashed' WHERE status = 'active'")
            self.conn.execute("UPDATE overlays SET status = 'active' WHERE id = ?", (oid,))
        self._clear_stacks()

    def stash(self, oid: bytes) -> None:
        self.get(oid)
        with db.transaction(self.conn):
            self.conn.execute("UPDATE overlays SET status = 'stashed' WHERE id = ?", (oid,))
        self._clear_stacks()

    def discard(self, oid: bytes) -> None:
        self.get(oid)
        self._delete(oid)

    def drop(self, oid: bytes) -> None:
        """Delete a committed overlay and its rows."""
        self._delete(oid)

    def _delete(self, oid: bytes) -> None:
        self.version += 1
        with db.transaction(self.conn):
            self.conn.execute("DELETE FROM overlay_ops WHERE overlay_id = ?", (oid,))
            self.conn.execute("DELETE FROM overlays WHERE id = ?", (oid,))
        self.undo.pop(oid, None)
        self.redo.pop(oid, None)

    def note_commit(self, oid: bytes, bundle_id: bytes | None) -> None:
        with db.transaction(self.conn):
            self.conn.execute("UPDATE overlays SET commit_bundle = ? WHERE id = ?",
                              (bundle_id, oid))

    def _clear_stacks(self) -> None:
        """Switching overlays clears every overlay undo/redo stack (§2.9)."""
        self.version += 1
        self.undo.clear()
        self.redo.clear()

    # --- staged rows ---------------------------------------------------------------------
    def rows(self, oid: bytes) -> list[Row]:
        return [_row(r) for r in self.conn.execute(
            f"SELECT {_COLS} FROM overlay_ops WHERE overlay_id = ? ORDER BY seq", (oid,))]

    def state(self, oid: bytes) -> OverlayState:
        return OverlayState(self.rows(oid))

    def has_rows(self) -> bool:
        return self.conn.execute("SELECT 1 FROM overlay_ops LIMIT 1").fetchone() is not None

    def next_seq(self, oid: bytes) -> int:
        return int(self._scalar("SELECT max(seq) FROM overlay_ops WHERE overlay_id = ?",
                                oid) or 0) + 1

    def _scalar(self, q: str, *args: Any) -> Any:
        for (v,) in self.conn.execute(q, args):
            return v
        return None

    def new_step(self) -> int:
        self._step += 1
        return self._step

    def insert(self, rows: Sequence[Row], *, undoable: bool = True) -> None:
        self.version += 1
        with db.transaction(self.conn):
            self.conn.executemany(
                f"INSERT INTO overlay_ops({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [r.db_tuple() for r in rows])
        if rows and undoable:
            oid = rows[0].overlay_id
            self.undo.setdefault(oid, []).append(list(rows))
            self.redo.pop(oid, None)

    def remove(self, oid: bytes, local_ids: Iterable[bytes]) -> None:
        self.version += 1
        lids = set(local_ids)
        with db.transaction(self.conn):
            self.conn.executemany(
                "DELETE FROM overlay_ops WHERE overlay_id = ? AND local_op_id = ?",
                [(oid, x) for x in lids])

    def update_base(self, oid: bytes, lids: Iterable[bytes], *, base_op_id: bytes | None,
                    base_value: bytes | None, base_tips: bytes | None, drift_kind: str | None,
                    ) -> None:
        self.version += 1
        with db.transaction(self.conn):
            self.conn.executemany(
                "UPDATE overlay_ops SET base_op_id = ?, base_value = ?, base_tips = ?,"
                " drifted = 0, drift_kind = ? WHERE overlay_id = ? AND local_op_id = ?",
                [(base_op_id, base_value, base_tips, drift_kind, oid, x) for x in lids])

    def mark_drift(self, oid: bytes, lids: Iterable[bytes], kind: str) -> None:
        self.version += 1
        with db.transaction(self.conn):
            self.conn.executemany(
                "UPDATE overlay_ops SET drifted = 1, drift_kind = ?"
                " WHERE overlay_id = ? AND local_op_id = ?", [(kind, oid, x) for x in lids])

    # --- knockout --------------------------------------------------------------------------
    def knockout(self, oid: bytes, local_op_id: bytes) -> list[bytes]:
        """Remove one staged op (a CreateEntity/CreateEdge takes the ops referencing it)."""
        self.get(oid)
        rows = self.rows(oid)
        hit = [r for r in rows if r.local_op_id == local_op_id]
        if not hit:
            raise NotFound("no such staged change", local_op_id=ids.to_text(local_op_id)
                           if ids.is_id(local_op_id) else repr(local_op_id))
        return self._knock(oid, rows, hit)

    def knockout_field(self, oid: bytes, e: bytes, skeys: Iterable[str]) -> list[bytes]:
        self.get(oid)
        ks = set(skeys)
        rows = self.rows(oid)
        return self._knock(oid, rows, [r for r in rows if r.entity_id == e and r.skey in ks
                                       and isinstance(r.payload, O.SetField | O.ClearField)])

    def knockout_entity(self, oid: bytes, e: bytes) -> list[bytes]:
        """Every staged op touching e (Use Canonical on a `deleted`/`edited` drift)."""
        rows = self.rows(oid)
        return self._knock(oid, rows, [r for r in rows if e in _touches(r.payload)])

    def _knock(self, oid: bytes, rows: list[Row], hit: list[Row]) -> list[bytes]:
        gone = {r.local_op_id for r in hit}
        created = {x for r in hit for x in _creates(r.payload)}
        while created:  # cascade to ops referencing entities/edges created by knocked-out ops
            more = [r for r in rows if r.local_op_id not in gone and _touches(r.payload) & created]
            created = set()
            for r in more:
                gone.add(r.local_op_id)
                created |= _creates(r.payload)
        self.remove(oid, gone)
        steps = self.undo.get(oid, [])
        self.undo[oid] = [s2 for s2 in ([r for r in s if r.local_op_id not in gone]
                                        for s in steps) if s2]
        self.redo.pop(oid, None)
        return sorted(gone)

    # --- overlay undo/redo -------------------------------------------------------------------
    def undo_step(self, oid: bytes) -> bool:
        steps = self.undo.get(oid)
        if not steps:
            return False
        step = steps.pop()
        self.remove(oid, [r.local_op_id for r in step])
        self.redo.setdefault(oid, []).append(step)
        return True

    def redo_step(self, oid: bytes) -> bool:
        steps = self.redo.get(oid)
        if not steps:
            return False
        step = steps.pop()
        self.version += 1
        with db.transaction(self.conn):
            self.conn.executemany(
                f"INSERT INTO overlay_ops({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [r.db_tuple() for r in step])
        self.undo.setdefault(oid, []).append(step)
        return True


def _creates(p: O.Payload) -> set[bytes]:
    if isinstance(p, O.CreateEntity):
        return {p.e}
    if isinstance(p, O.CreateEdge | O.CreateOrderedEdge):
        return {p.edge}
    return set()


def _touches(p: O.Payload) -> set[bytes]:
    """Entities and edges an op is about or references."""
    out: set[bytes] = set()
    for k in ("e", "edge", "src", "dst"):
        v = getattr(p, k, None)
        if isinstance(v, bytes):
            out.add(v)
    return out


def touched_entities(p: O.Payload) -> set[bytes]:
    """Entities (not edges) whose deletion makes a staged op drift `deleted`."""
    out: set[bytes] = set()
    for k in ("e", "src", "dst"):
        v = getattr(p, k, None)
        if isinstance(v, bytes):
            out.add(v)
    return out
