"""Overlays (spec 02 §2): local-only staging areas for changes not yet committed.

`OverlayStore` owns the `overlays` and `overlay_ops` tables in `oplog.db` (never synced, never
in the state hash) and the in-memory overlay undo/redo stacks. Staged ops are unsigned payloads
with local ids, plus the canonical base they were staged against (for drift, §2.6). The
Workspace facade routes user commands here while an overlay is active and commits overlays as
one `overlay_commit` bundle.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
STAGED_CACHE = 4  # overlays whose decoded rows and state are kept in memory


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
    """What an overlay's staged ops change, for validation and reads (later ops win).

    Built from the rows in staging order and kept up to date as rows are appended (`add`, the
    common path: a script run stages thousands of ops, one command at a time); the store builds
    it again when rows are removed or rewritten (knockout, undo/redo, drift)."""

    def __init__(self, rows: Iterable[Row] = ()) -> None:
        self.created: set[bytes] = set()
        self.deleted: set[bytes] = set()
        self.facets: dict[tuple[bytes, str], bool] = {}  # (e, facet) -> attached
        self.writes: dict[tuple[bytes, str], Row] = {}  # (e, skey) -> latest staged write
        # (e, skey) -> first staged write: its base is the canonical value the field had
        self.first_writes: dict[tuple[bytes, str], Row] = {}
        self.edges_created: dict[bytes, O.Payload] = {}
        self.edges_deleted: set[bytes] = set()
        self.drifted: set[tuple[bytes, str]] = set()
        self._facets_of: dict[bytes, dict[str, bool]] = {}  # e -> {facet: attached}
        self.add(rows)

    def add(self, rows: Iterable[Row]) -> None:
        """Apply rows staged after those already applied."""
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
                att = isinstance(p, O.AttachFacet)
                self.facets[(p.e, p.facet)] = att
                self._facets_of.setdefault(p.e, {})[p.facet] = att
            elif isinstance(p, O.SetField | O.ClearField) and r.skey is not None:
                self.writes[(p.e, r.skey)] = r
            elif isinstance(p, O.CreateEdge | O.CreateOrderedEdge):
                self.edges_created[p.edge] = p
                self.edges_deleted.discard(p.edge)
            elif isinstance(p, O.DeleteEdge):
                self.edges_deleted.add(p.edge)
            elif isinstance(p, O.RestoreEdge):
                self.edges_deleted.discard(p.edge)
            if r.skey is not None and r.entity_id is not None:
                self.first_writes.setdefault((r.entity_id, r.skey), r)
            if r.drifted and r.entity_id is not None:
                self.drifted.add((r.entity_id, r.skey or "$entity"))

    def staged_facets(self, e: bytes) -> dict[str, bool]:
        return dict(self._facets_of.get(e, {}))


class _Staged:
    """One overlay's decoded rows (in seq order) and their state, as last read or appended."""

    __slots__ = ("rows", "state")

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.state = OverlayState(rows)


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
        self.version = 0  # bumped on every change
        # bumped on every change other than rows appended (removed, rewritten, overlay gone):
        # what keeps a view of an overlay's rows by appending to it must then build it again
        self.rewrites = 0
        # decoded rows and their OverlayState per overlay read lately, kept up to date as rows
        # are appended (a script run stages thousands of ops, one command at a time; reading or
        # indexing all of them again for each command was quadratic), dropped on other changes
        self._staged: dict[bytes, _Staged] = {}
        # overlays whose staged rows need not survive a power loss until the next durable
        # write: those of script runs still running (a run a crash interrupts is discarded
        # on restart, and ending the run writes its meta durably, WAL included)
        self._volatile: set[bytes] = set()
        # inside `deferred()`: rows appended to a volatile overlay, in memory (its _staged)
        # and not yet in the table; written by `flush` before anything reads or changes it
        self._deferring = 0
        self._unflushed: list[Row] = []
        self._known: set[bytes] = set()  # overlays `exists` found (forgotten by _delete)
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
        if meta and meta.get("running"):
            self._volatile.add(oid)
        self._clear_stacks()
        return oid

    def get(self, oid: bytes) -> dict[str, Any]:
        self.flush()
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

    def record_counts(self, oid: bytes) -> dict[str, int]:
        """In words for people: an import of 47 rows is "47 new records", not its ops. Only the
        overlays list asks (it is a scan of the overlay's rows)."""
        self.flush()
        made = self._scalar("SELECT count(*) FROM overlay_ops WHERE overlay_id = ?"
                            " AND t = 'CreateEntity'", oid)
        touched = self._scalar("SELECT count(DISTINCT entity_id) FROM overlay_ops"
                               " WHERE overlay_id = ? AND entity_id IS NOT NULL", oid)
        return {"new_records": int(made), "records": int(touched)}

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

    def exists(self, oid: bytes) -> bool:
        """Whether the overlay exists (those seen here are remembered until deleted here)."""
        if oid in self._known:
            return True
        if self._scalar("SELECT 1 FROM overlays WHERE id = ?", oid) is None:
            return False
        self._known.add(oid)
        return True

    def _delete(self, oid: bytes) -> None:
        self.flush()
        self._invalidate(oid)
        self._volatile.discard(oid)
        self._known.discard(oid)
        with db.transaction(self.conn):
            self.conn.execute("DELETE FROM overlay_ops WHERE overlay_id = ?", (oid,))
            self.conn.execute("DELETE FROM overlays WHERE id = ?", (oid,))
        self.undo.pop(oid, None)
        self.redo.pop(oid, None)

    def set_meta(self, oid: bytes, meta: Mapping[str, Any]) -> None:
        """Replace an overlay's meta (a script run's, once the run has ended)."""
        with db.transaction(self.conn):
            self.conn.execute("UPDATE overlays SET meta = ? WHERE id = ?",
                              (codec.encode(dict(meta)) if meta else None, oid))
        if not (meta and meta.get("running")):
            self._volatile.discard(oid)  # durable from here (this commit synced the WAL)

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
    def _load(self, oid: bytes) -> _Staged:
        c = self._staged.get(oid)
        if c is None:
            self.flush()  # before reading the table, or evicting an overlay with rows unwritten
            c = _Staged([_row(r) for r in self.conn.execute(
                f"SELECT {_COLS} FROM overlay_ops WHERE overlay_id = ? ORDER BY seq", (oid,))])
            while len(self._staged) >= STAGED_CACHE:
                del self._staged[next(iter(self._staged))]
            self._staged[oid] = c
        return c

    def _invalidate(self, oid: bytes) -> None:
        self.version += 1
        self.rewrites += 1
        self._staged.pop(oid, None)

    def rows(self, oid: bytes) -> list[Row]:
        return list(self._load(oid).rows)

    def rows_since(self, oid: bytes, n: int) -> list[Row]:
        """The rows after the first n (what was appended since a view applied n rows)."""
        return self._load(oid).rows[n:]

    def count(self, oid: bytes) -> int:
        c = self._staged.get(oid)
        if c is not None:
            return len(c.rows)
        self.flush()
        return int(self._scalar("SELECT count(*) FROM overlay_ops WHERE overlay_id = ?", oid))

    def state(self, oid: bytes) -> OverlayState:
        """The overlay's current state: kept up to date in place, not a snapshot."""
        return self._load(oid).state

    def has_rows(self) -> bool:
        self.flush()
        return self.conn.execute("SELECT 1 FROM overlay_ops LIMIT 1").fetchone() is not None

    def next_seq(self, oid: bytes) -> int:
        c = self._staged.get(oid)
        if c is not None:
            return c.rows[-1].seq + 1 if c.rows else 1
        self.flush()
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
        """Append one overlay's rows (seqs after its last)."""
        if not rows:
            return
        oid = rows[0].overlay_id
        self.version += 1
        c = self._staged.get(oid)
        appendable = c is not None and all(r.overlay_id == oid for r in rows) and (
            rows[0].seq > (c.rows[-1].seq if c.rows else 0))
        if appendable and self._deferring and oid in self._volatile:
            self._unflushed.extend(rows)  # written by flush(), at the latest when deferred() ends
        else:
            self.flush()
            self._write(rows, volatile=oid in self._volatile)
        if c is not None:
            if appendable:
                c.rows.extend(rows)
                c.state.add(rows)
            else:
                self._invalidate(oid)
        if undoable:
            self.undo.setdefault(oid, []).append(list(rows))
            self.redo.pop(oid, None)

    def _write(self, rows: Sequence[Row], *, volatile: bool) -> None:
        try:
            if volatile:  # no fsync for these (see _volatile); synchronous is per connection
                self.conn.execute("PRAGMA synchronous=NORMAL")
            with db.transaction(self.conn):
                self.conn.executemany(
                    f"INSERT INTO overlay_ops({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [r.db_tuple() for r in rows])
        except BaseException:
            for oid in {r.overlay_id for r in rows}:
                self._invalidate(oid)  # the table is what counts again
            raise
        finally:
            if volatile:
                self.conn.execute("PRAGMA synchronous=FULL")

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, rows appended to a running script's overlay are kept in memory (where every
        read of the store sees them) and written in one transaction when the outermost block
        ends, or earlier when something reads or changes the table (a script's burst of calls
        in one writer command: one transaction for all of them)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            if not self._deferring:
                self.flush()

    def flush(self) -> None:
        """Write the rows `deferred()` kept in memory."""
        if self._unflushed:
            rows, self._unflushed = self._unflushed, []
            self._write(rows, volatile=True)

    def remove(self, oid: bytes, local_ids: Iterable[bytes]) -> None:
        self.flush()
        self._invalidate(oid)
        lids = set(local_ids)
        with db.transaction(self.conn):
            self.conn.executemany(
                "DELETE FROM overlay_ops WHERE overlay_id = ? AND local_op_id = ?",
                [(oid, x) for x in lids])

    def update_base(self, oid: bytes, lids: Iterable[bytes], *, base_op_id: bytes | None,
                    base_value: bytes | None, base_tips: bytes | None, drift_kind: str | None,
                    ) -> None:
        self.flush()
        self._invalidate(oid)
        with db.transaction(self.conn):
            self.conn.executemany(
                "UPDATE overlay_ops SET base_op_id = ?, base_value = ?, base_tips = ?,"
                " drifted = 0, drift_kind = ? WHERE overlay_id = ? AND local_op_id = ?",
                [(base_op_id, base_value, base_tips, drift_kind, oid, x) for x in lids])

    def mark_drift(self, oid: bytes, lids: Iterable[bytes], kind: str) -> None:
        self.flush()
        self._invalidate(oid)
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
        self.flush()
        self._invalidate(oid)
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
