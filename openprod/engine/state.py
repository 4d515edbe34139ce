"""The state projection (StateDeriver's domain): entities, facets, fields, tips, edges, schema.

Applies whole bundles from the oplog in `seq` order, incrementally, with its checkpoint in the
same transaction; rebuilds by full replay in canonical `(hlc, op_id)` order when spec 01 §7
requires it. Derivation never rejects: an op applies or is recorded in `inert_ops`. Registers
are LWW on the 28-byte stamp `hlc ‖ op_id`; tips (the writes no other write has seen) make
concurrent differing writes visible as conflicts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import apsw
import cbor2
from blake3 import blake3 as _blake3

from openprod.core import codec
from openprod.core.ops import STRUCTURAL
from openprod.engine import crdt
from openprod.engine.projection import Corrupt, ProjectionBase, Replay, seen
from openprod.engine.rowcache import Rows
from openprod.storage import db

PROJECTION_VERSION = 2
ZERO_STAMP = bytes(28)
ENTITY_KEY = "$entity"
SCHEMA_TOKEN = "schema_token"  # derive_meta key (see StateProjection.schema_token)
FLUSH_EVERY = 20_000
REDIRECT_CAP = 64
_dumps = cbor2.dumps
_loads = cbor2.loads
SCHEMA_OPS = frozenset([
    "DefineTable", "DefineField", "DefineEdgeType", "ConfirmFieldMapping", "RejectFieldMapping",
])
CACHE_KIB = 16 * 1024  # SQLite page cache of the projection connection

SCHEMA = """
CREATE TABLE IF NOT EXISTS entities(
    entity BLOB PRIMARY KEY, deleted INTEGER NOT NULL, created INTEGER NOT NULL, redirect BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS facets(
    entity BLOB, facet TEXT, attached INTEGER NOT NULL, stamp BLOB NOT NULL,
    PRIMARY KEY(entity, facet)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fields(
    entity BLOB, slot TEXT, value BLOB, stamp BLOB NOT NULL, actor BLOB NOT NULL,
    bundle BLOB NOT NULL, fkey TEXT, PRIMARY KEY(entity, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS crdt_docs(
    entity BLOB, slot TEXT, state BLOB NOT NULL, PRIMARY KEY(entity, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tips(
    kind TEXT, owner BLOB, key TEXT, tips BLOB NOT NULL, PRIMARY KEY(kind, owner, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges(
    edge BLOB PRIMARY KEY, type TEXT, src BLOB, dst BLOB, deleted INTEGER NOT NULL,
    dstamp BLOB NOT NULL, idx TEXT, istamp BLOB, cstamp BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edge_props(
    edge BLOB, key TEXT, value BLOB, stamp BLOB NOT NULL, actor BLOB NOT NULL,
    bundle BLOB NOT NULL, PRIMARY KEY(edge, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schema_tables(
    facet TEXT PRIMARY KEY, label TEXT NOT NULL, stamp BLOB NOT NULL, module TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_fields(
    facet TEXT, field TEXT, ftype TEXT NOT NULL, crdt INTEGER NOT NULL, def_stamp BLOB NOT NULL,
    label TEXT NOT NULL, opts BLOB, stamp BLOB NOT NULL, PRIMARY KEY(facet, field)
);
CREATE TABLE IF NOT EXISTS schema_edge_types(
    type TEXT PRIMARY KEY, ordered INTEGER NOT NULL, ostamp BLOB NOT NULL, label TEXT NOT NULL,
    props BLOB, stamp BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS field_slots(fkey TEXT PRIMARY KEY, slot TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mappings(
    key_a TEXT, key_b TEXT, confirmed INTEGER NOT NULL, stamp BLOB NOT NULL,
    PRIMARY KEY(key_a, key_b)
);
CREATE TABLE IF NOT EXISTS redirects(absorbed BLOB PRIMARY KEY, survivor BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS merge_exceptions(a BLOB, b BLOB, PRIMARY KEY(a, b));
CREATE TABLE IF NOT EXISTS config(
    ns TEXT, key TEXT, value BLOB, stamp BLOB NOT NULL, PRIMARY KEY(ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inert_ops(op_id BLOB NOT NULL, seq INTEGER, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lifecycle_ops(
    stamp BLOB PRIMARY KEY, actor BLOB NOT NULL, t TEXT NOT NULL, p BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS derive_meta(k TEXT PRIMARY KEY, v);
"""

SECONDARY_INDEXES = """
CREATE INDEX IF NOT EXISTS facets_by_facet ON facets(facet, attached);
CREATE INDEX IF NOT EXISTS fields_slot_value ON fields(slot, value);
CREATE INDEX IF NOT EXISTS edges_src ON edges(src, type);
CREATE INDEX IF NOT EXISTS edges_dst ON edges(dst, type, idx, edge);
"""
SECONDARY_INDEX_NAMES = ("facets_by_facet", "fields_slot_value", "edges_src", "edges_dst")

DERIVED_TABLES = (
    "entities", "facets", "fields", "crdt_docs", "tips", "edges", "edge_props",
    "schema_tables", "schema_fields", "schema_edge_types", "field_slots", "mappings",
    "redirects", "merge_exceptions", "config", "inert_ops", "lifecycle_ops",
)
# ops whose effect depends on who the owner is at their canonical position: kept as a set and
# interpreted in canonical order on read (openprod.engine.lifecycle), whatever the arrival order
LIFECYCLE_NS = frozenset(["workspace", "access_key", "admit"])

# Tip entries: [op_id, actor, hlc, bundle_id, value, fkey]; value = canonical value bytes,
# None for a tombstone, or "c"/"d"/"r" for existence writes. For fields and edge properties a
# lone tip that is the register's own write is implicit (no `tips` row): that is the common case,
# and the LWW winner is always a tip because no write can have seen a larger stamp.
Tip = list[Any]
WRITE_OPS = {
    "f": frozenset(["SetField", "ClearField"]),
    "p": frozenset(["SetEdgeProperty", "ClearEdgeProperty", "CreateEdge", "CreateOrderedEdge"]),
    "e": frozenset(["CreateEntity", "DeleteEntity", "RestoreEntity"]),
}


class _Op:
    __slots__ = ("actor", "bundle", "hlc", "op_id", "p", "seq", "stamp", "t")

    def __init__(
        self, seq: int, op_id: bytes, bundle: bytes, hlc: bytes, actor: bytes, t: str,
        p: dict[str, Any],
    ) -> None:
        self.seq = seq
        self.op_id = op_id
        self.bundle = bundle
        self.hlc = hlc
        self.actor = actor
        self.t = t
        self.p = p
        self.stamp = hlc + op_id


class _TipRows(Rows):
    """Rows whose single column is a tip list: decoded in the cache, encoded when flushed."""

    def decode(self, stored: tuple[Any, ...]) -> tuple[Any, ...]:
        return (cbor2.loads(stored[0]),)

    def encode(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return (codec.encode_trusted(row[0]),)


class StateProjection(ProjectionBase):
    """The state projection over one apsw connection to `oplog.db` (reads ops, writes state)."""

    META_TABLE = "derive_meta"

    def __init__(self, conn: apsw.Connection) -> None:
        super().__init__(conn)
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        with db.transaction(conn):
            conn.execute(SCHEMA)
            conn.execute(SECONDARY_INDEXES)
            self._init_meta()
        self.entities = Rows(conn, "entities", ["entity"], ["deleted", "created", "redirect"])
        self.facets = Rows(conn, "facets", ["entity", "facet"], ["attached", "stamp"])
        self.fields = Rows(
            conn, "fields", ["entity", "slot"], ["value", "stamp", "actor", "bundle", "fkey"]
        )
        self.docs = Rows(conn, "crdt_docs", ["entity", "slot"], ["state"])
        self.tips = _TipRows(conn, "tips", ["kind", "owner", "key"], ["tips"], owner=1)
        self.edges = Rows(
            conn, "edges", ["edge"],
            ["type", "src", "dst", "deleted", "dstamp", "idx", "istamp", "cstamp"],
        )
        self.props = Rows(
            conn, "edge_props", ["edge", "key"], ["value", "stamp", "actor", "bundle"]
        )
        self.config = Rows(conn, "config", ["ns", "key"], ["value", "stamp"])
        self._caches = (
            self.entities, self.facets, self.fields, self.docs, self.tips, self.edges,
            self.props, self.config,
        )
        self._inert: list[tuple[Any, ...]] = []
        self._handlers: dict[str, Callable[[_Op], None]] = {
            "CreateEntity": self._create_entity,
            "DeleteEntity": self._delete_entity,
            "RestoreEntity": self._restore_entity,
            "AttachFacet": self._attach,
            "DetachFacet": self._detach,
            "SetField": self._set_field,
            "ClearField": self._set_field,
            "SetCRDTField": self._set_crdt,
            "CreateEdge": self._create_edge,
            "CreateOrderedEdge": self._create_edge,
            "DeleteEdge": self._delete_edge,
            "RestoreEdge": self._delete_edge,
            "SetEdgeProperty": self._set_prop,
            "ClearEdgeProperty": self._set_prop,
            "MoveOrderedEdge": self._move_edge,
            "RebalanceOrderedEdges": self._rebalance,
            "DefineTable": self._define_table,
            "DefineField": self._define_field,
            "DefineEdgeType": self._define_edge_type,
            "ConfirmFieldMapping": self._mapping,
            "RejectFieldMapping": self._mapping,
            "MergeEntities": self._merge,
            "SplitEntity": self._split,
            "CreateWorkspace": self._create_workspace,
            "RecoverOwnership": self._recover_ownership,
            "PutConfig": self._config,
            "DeleteConfig": self._config,
        }
        self.sgen: bytes | None = None  # the schema token the caches below were loaded at
        self._load_schema()
        self.replays = 0
        self._hw = ZERO_STAMP
        # Entities whose records changed, and whether the schema did, since the owner last
        # cleared them (only while applying incrementally; a full replay invalidates all).
        self.track_changes = False
        self.touched: set[bytes] = set()
        self.schema_changed = False
        self.config_changed: set[str] = set()  # config namespaces written (track_changes)

    # --- meta ----------------------------------------------------------------------------
    def _init_meta(self) -> None:
        have = {k for (k,) in self.conn.execute("SELECT k FROM derive_meta")}
        defaults = {"version": PROJECTION_VERSION, "seq": 0, "hw": ZERO_STAMP, "sk": ZERO_STAMP,
                    SCHEMA_TOKEN: os.urandom(8)}
        for k, v in defaults.items():
            if k not in have:
                self.conn.execute("INSERT INTO derive_meta(k, v) VALUES (?, ?)", (k, v))

    def refresh(self) -> None:
        """Reload the schema caches (for a read-only user of a projection another owner drives)
        if the schema token says the schema, slots, redirects or edge types changed since."""
        tok = self.schema_token()
        if tok is None or tok != self.sgen:
            self._load_schema()

    def schema_token(self) -> bytes | None:
        """A random token the projection writes again with every change to the schema, field
        slots, merge redirects or edge types (and on a full replay), in the same transaction:
        equal tokens, same schema (as this connection's snapshot sees it)."""
        for (v,) in self.conn.execute(f"SELECT v FROM derive_meta WHERE k = '{SCHEMA_TOKEN}'"):
            return bytes(v)
        return None

    def _schema_changed(self) -> None:
        tok = os.urandom(8)  # never reused, even after a rollback
        self.conn.execute(f"INSERT OR REPLACE INTO derive_meta(k, v) VALUES ('{SCHEMA_TOKEN}', ?)",
                          (tok,))
        self.sgen = tok  # this projection's own caches follow its handlers

    def _load_schema(self) -> None:
        self.sgen = self.schema_token()  # read first: never newer than the caches
        self.fdefs: dict[tuple[str, str], tuple[str, bool]] = {
            (f, n): (t, bool(c))
            for f, n, t, c in self.conn.execute(
                "SELECT facet, field, ftype, crdt FROM schema_fields"
            )
        }
        self.slots: dict[str, str] = dict(self.conn.execute("SELECT fkey, slot FROM field_slots"))
        self.redirects: dict[bytes, bytes] = {
            bytes(a): bytes(s)
            for a, s in self.conn.execute("SELECT absorbed, survivor FROM redirects")
        }
        self.edge_ordered: dict[str, bool] = {
            t: bool(o) for t, o in self.conn.execute(
                "SELECT type, ordered FROM schema_edge_types"
            )
        }

    # --- driving -------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Apply every op appended since the checkpoint; return the new checkpoint."""
        with db.transaction(self.conn):
            try:
                meta = self._meta()
                head = self._head()
                seq = int(meta["seq"])
                if int(meta["version"]) != PROJECTION_VERSION or self._quarantine_hits(seq):
                    self._full_replay(head)
                elif head > seq:
                    self._incremental(seq, bytes(meta["hw"]), bytes(meta["sk"]), head)
            except BaseException:
                self._reset_caches()
                self._load_schema()
                raise
        # The row caches serve one transaction; keeping them would grow memory without bound.
        self._reset_caches()
        return self.checkpoint

    def rebuild(self) -> int:
        """Drop the derived tables and replay the whole oplog in canonical order."""
        with db.transaction(self.conn):
            try:
                self._full_replay(self._head())
            except BaseException:
                self._reset_caches()
                self._load_schema()
                raise
        return self.checkpoint

    def _incremental(self, seq: int, hw: bytes, sk: bytes, head: int) -> None:
        quarantined = self._quarantined()
        by_bundle: dict[bytes, list[tuple[Any, ...]]] = {}
        for row in self.conn.execute(
            "SELECT seq, op_id, bundle_id, hlc, actor, t, body, op_hash FROM ops"
            " WHERE seq > ? AND seq <= ? ORDER BY seq", (seq, head),
        ):
            by_bundle.setdefault(bytes(row[2]), []).append(row)
        pending: list[_Op] = []
        for bid, rows in by_bundle.items():
            if bid in quarantined:
                continue
            try:
                pending.extend([self._decode(r) for r in rows])  # whole bundle or none
            except Corrupt:
                self._quarantine(bid, head)
        pending.sort(key=lambda o: o.stamp)
        try:
            for op in pending:
                structural = op.t in STRUCTURAL
                if op.stamp <= hw and (structural or op.stamp < sk):
                    raise Replay
                self._hw = hw
                self._apply(op)
                if op.stamp > hw:
                    hw = op.stamp
                if structural and op.stamp > sk:
                    sk = op.stamp
        except Replay:
            self._reset_caches()
            self._inert.clear()
            self._full_replay(head)
            return
        self._flush()
        self._save_meta(head, hw, sk)

    def _decode(self, row: tuple[Any, ...]) -> _Op:
        # apsw returns BLOBs as bytes, so no copies are needed here (hot path of a replay).
        seq, op_id, bid, h, actor, t, body, oh = row
        if _blake3(body).digest() != oh:
            raise Corrupt(bid)
        try:
            # The body's op_hash matches, so these are the admitted canonical bytes.
            p = _loads(body)["p"]
        except Exception as exc:  # a stored body that no longer decodes is corrupt too
            raise Corrupt(bid) from exc
        return _Op(seq, op_id, bid, h, actor, t, p)

    def _full_replay(self, head: int) -> None:
        self.replays += 1
        while True:
            # Bulk inserts into unindexed tables, then one sorted index build, beat keeping
            # the secondary indexes up to date row by row.
            for name in SECONDARY_INDEX_NAMES:
                self.conn.execute(f"DROP INDEX IF EXISTS {name}")
            for table in DERIVED_TABLES:
                self.conn.execute(f"DELETE FROM {table}")
            self._reset_caches(fresh=True)
            self._inert.clear()
            self._schema_changed()
            self._load_schema()
            quarantined = self._quarantined()
            hw = sk = ZERO_STAMP
            n = 0
            # In canonical order no op is late (each stamp is the newest so far), so the high
            # water used by `_is_late` can stay at zero; a replay is announced as one resync, so
            # per-op change tracking is skipped too.
            self._hw = ZERO_STAMP
            handlers, decode = self._handlers, self._decode
            try:
                cur = self.conn.cursor()
                for row in cur.execute(
                    "SELECT seq, op_id, bundle_id, hlc, actor, t, body, op_hash FROM ops"
                    " WHERE seq <= ? ORDER BY hlc, op_id", (head,),
                ):
                    if quarantined and row[2] in quarantined:
                        continue
                    op = decode(row)
                    handlers[op.t](op)
                    hw = op.stamp
                    if op.t in STRUCTURAL:
                        sk = op.stamp
                    n += 1
                    if n % FLUSH_EVERY == 0:
                        self._flush()
                        self._reset_caches(fresh=None)
            except Corrupt as bad:
                # A corrupt body anywhere: quarantine its bundle and replay without it.
                self._quarantine(bad.bundle_id, head)
                continue
            break
        self._flush()
        self._reset_caches(fresh=False)
        self.conn.execute(SECONDARY_INDEXES)
        self._save_meta(head, hw, sk)

    def _save_meta(self, seq: int, hw: bytes, sk: bytes) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO derive_meta(k, v) VALUES (?, ?)",
            [("version", PROJECTION_VERSION), ("seq", seq), ("hw", hw), ("sk", sk)],
        )

    def _reset_caches(self, *, fresh: bool | None = False) -> None:
        for c in self._caches:
            c.reset(fresh=fresh)

    def _flush(self) -> None:
        for c in self._caches:
            c.flush()
        if self._inert:
            self.conn.executemany(
                "INSERT INTO inert_ops(op_id, seq, reason) VALUES (?,?,?)", self._inert
            )
            self._inert.clear()

    def _apply(self, op: _Op) -> None:
        self._handlers[op.t](op)
        if self.track_changes:
            self._note_change(op)

    def _note_change(self, op: _Op) -> None:
        """Remember what an op changed, for the runtime's change events."""
        if op.t in SCHEMA_OPS:
            self.schema_changed = True
            return
        p = op.p
        if op.t in ("PutConfig", "DeleteConfig"):
            self.config_changed.add(p["ns"])
            return
        for k in ("e", "src", "dst", "survivor", "absorbed", "source", "new_entity"):
            v = p.get(k)
            if v is not None:
                self.touched.add(self.resolve(v))
        if "edge" in p and "src" not in p:
            for src, dst in self.conn.execute(
                "SELECT src, dst FROM edges WHERE edge = ?", (p["edge"],)
            ):
                if src is not None:
                    self.touched.update((bytes(src), bytes(dst)))

    def _inert_op(self, op: _Op, reason: str) -> None:
        self._inert.append((op.op_id, op.seq, reason))

    # --- helpers ---------------------------------------------------------------------------
    def resolve(self, e: bytes) -> bytes:
        """Follow merge redirects (each hop goes to a smaller id; capped at 64 hops)."""
        r = self.redirects
        for _ in range(REDIRECT_CAP):
            nxt = r.get(e)
            if nxt is None:
                return e
            e = nxt
        return e

    def slot_of(self, facet: str, field: str) -> str:
        key = f"{facet}.{field}"
        return self.slots.get(key, key)

    def _next_tips(self, tips: list[Tip], op: _Op, value: Any, fkey: str | None,
                   kind: str, owner: bytes, key: str) -> list[Tip]:
        """The tips after write op: drop those op has seen; add op unless a write saw it."""
        me = [op.op_id, op.actor, op.hlc, op.bundle, value, fkey]
        if not tips:
            return [me]
        vc = self._vc(op.bundle)
        kept = [t for t in tips if not seen(op.hlc, op.actor, vc, t[2], t[1])]
        if not self._is_late(op) or not self._dominated(kind, owner, key, op):
            kept.append(me)
        return kept

    def _saw(self, op: _Op, hlc: bytes, actor: bytes) -> bool:
        if actor == op.actor:
            return op.hlc > hlc
        return seen(op.hlc, op.actor, self._vc(op.bundle), hlc, actor)

    def _reg_tips(self, kind: str, owner: bytes, key: str, reg: tuple[Any, ...] | None,
                  ) -> list[Tip]:
        """The tips of a field or edge property: explicit row, else the register's writer."""
        row = self.tips.get((kind, owner, key))
        if row is not None:
            return list(row[0])
        if reg is None:
            return []
        stamp = reg[1]
        return [[stamp[12:], reg[2], stamp[:12], reg[3], reg[0], reg[4] if kind == "f" else None]]

    def _store_reg_tips(self, kind: str, owner: bytes, key: str, tips: list[Tip],
                        reg: tuple[Any, ...] | None) -> None:
        implicit = reg is not None and len(tips) == 1 and tips[0][0] == reg[1][12:]
        tk = (kind, owner, key)
        if implicit:
            if self.tips.get(tk) is not None:
                self.tips.delete(tk)
        else:
            self.tips.put(tk, (tips,))

    def _dominated(self, kind: str, owner: bytes, key: str, op: _Op) -> bool:
        """Has a stored write of (kind, owner, key) seen op? Only late arrivals ask.

        Reads the oplog itself (index on entity, hlc): writes stored but not yet applied count
        too, which is harmless since applying them later removes op from the tips anyway.
        """
        names = [owner] + [a for a in self.redirects if self.resolve(a) == owner]
        types = WRITE_OPS[kind]
        quarantined = self._quarantined()
        for name in names:
            for oid, h, actor, bid, t, body in self.conn.execute(
                "SELECT op_id, hlc, actor, bundle_id, t, body FROM ops WHERE entity = ?"
                " AND hlc > ?", (name, op.hlc),
            ):
                if t not in types or bytes(oid) == op.op_id or bytes(bid) in quarantined:
                    continue
                # the causal check first: it needs no body decode, and concurrent writes (the
                # common case for a late arrival) fail it
                if not seen(bytes(h), bytes(actor), self._vc(bytes(bid)), op.hlc, op.actor):
                    continue
                if kind == "e" or self._writes_key(kind, key, cbor2.loads(body)["p"]):
                    return True
        return False

    def _writes_key(self, kind: str, key: str, p: dict[str, Any]) -> bool:
        if kind == "p":
            return p.get("key") == key or key in (p.get("props") or {})
        d = self.fdefs.get((p["facet"], p["field"]))
        return not (d is not None and d[1]) and self.slot_of(p["facet"], p["field"]) == key

    # --- entities --------------------------------------------------------------------------
    def _existence(self, op: _Op, code: str) -> None:
        e = self.resolve(op.p["e"])
        tk = ("e", e, ENTITY_KEY)
        row = self.tips.get(tk)
        tips = self._next_tips(list(row[0]) if row else [], op, code, None, "e", e, ENTITY_KEY)
        self.tips.put(tk, (tips,))
        erow = self.entities.get((e,))
        deleted, created, redirect = erow if erow is not None else (0, 0, None)
        if code == "c":
            created = 1
        deleted = int(any(t[4] == "d" for t in tips))
        self.entities.put((e,), (deleted, created, redirect))

    def _is_late(self, op: _Op) -> bool:
        """Could a write already applied have seen op? Only if op is not the newest stamp."""
        return op.stamp <= self._hw

    def _create_entity(self, op: _Op) -> None:
        self._existence(op, "c")

    def _delete_entity(self, op: _Op) -> None:
        self._existence(op, "d")
        for edge in op.p["cascade"]:
            self._edge_deleted(edge, 1, op.stamp)

    def _restore_entity(self, op: _Op) -> None:
        self._existence(op, "r")

    def _attach(self, op: _Op) -> None:
        self._facet(self.resolve(op.p["e"]), op.p["facet"], 1, op.stamp)

    def _detach(self, op: _Op) -> None:
        self._facet(self.resolve(op.p["e"]), op.p["facet"], 0, op.stamp)

    def _facet(self, e: bytes, facet: str, attached: int, stamp: bytes) -> None:
        row = self.facets.get((e, facet))
        if row is None or stamp > row[1]:
            self.facets.put((e, facet), (attached, stamp))

    # --- fields ----------------------------------------------------------------------------
    def _set_field(self, op: _Op) -> None:
        p = op.p
        facet, field = p["facet"], p["field"]
        d = self.fdefs.get((facet, field))
        if d is not None and d[1]:
            self._inert_op(op, "scalar write to a CRDT field")
            return
        e = p["e"]
        if self.redirects:
            e = self.resolve(e)
        fkey = f"{facet}.{field}"
        slot = self.slots.get(fkey, fkey)
        value = _dumps(p["value"], canonical=True) if op.t == "SetField" else None
        key = (e, slot)
        reg = self.fields.get(key)
        new_reg = (value, op.stamp, op.actor, op.bundle, fkey)
        # Fast path (no explicit tips row, op is the newest stamp): the first write, or a write
        # that saw the register's writer, leaves op as the lone (implicit) tip.
        if (self.tips.get(("f", e, slot)) is None and not self._is_late(op)
                and (reg is None or self._saw(op, reg[1][:12], reg[2]))):
            self.fields.put(key, new_reg)
            return
        tips = self._next_tips(self._reg_tips("f", e, slot, reg), op, value, fkey, "f", e, slot)
        if reg is None or op.stamp > reg[1]:
            reg = new_reg
            self.fields.put(key, reg)
        self._store_reg_tips("f", e, slot, tips, reg)

    def _set_crdt(self, op: _Op) -> None:
        p = op.p
        d = self.fdefs.get((p["facet"], p["field"]))
        if d is not None and not d[1]:
            self._inert_op(op, "CRDT delta to a scalar field")
            return
        e = self.resolve(p["e"])
        slot = self.slot_of(p["facet"], p["field"])
        row = self.docs.get((e, slot))
        try:
            state = crdt.apply_delta(row[0] if row is not None else None, p["delta"])
        except crdt.CrdtError as exc:
            self._inert_op(op, f"bad CRDT delta: {exc}")
            return
        self.docs.put((e, slot), (state,))

    # --- edges -----------------------------------------------------------------------------
    def _create_edge(self, op: _Op) -> None:
        p = op.p
        edge = p["edge"]
        row = self.edges.get((edge,))
        src, dst = self.resolve(p["src"]), self.resolve(p["dst"])
        idx = p.get("index")
        if row is None:
            self.edges.put((edge,), (p["type"], src, dst, 0, op.stamp, idx,
                                     op.stamp if idx is not None else None, op.stamp))
        else:
            typ, osrc, odst, deleted, dstamp, oidx, istamp, cstamp = row
            if cstamp is None or op.stamp < cstamp:  # first creation wins
                typ, osrc, odst, cstamp = p["type"], src, dst, op.stamp
            if op.stamp > dstamp:
                deleted, dstamp = 0, op.stamp
            if idx is not None and (istamp is None or op.stamp > istamp):
                oidx, istamp = idx, op.stamp
            self.edges.put((edge,), (typ, osrc, odst, deleted, dstamp, oidx, istamp, cstamp))
        for key, value in (p.get("props") or {}).items():
            self._prop_write(op, edge, key, codec.encode_trusted(value))

    def _edge_deleted(self, edge: bytes, deleted: int, stamp: bytes) -> None:
        row = self.edges.get((edge,))
        if row is None:
            self.edges.put((edge,), (None, None, None, deleted, stamp, None, None, None))
        elif stamp > row[4]:
            self.edges.put((edge,), (*row[:3], deleted, stamp, *row[5:]))

    def _delete_edge(self, op: _Op) -> None:
        self._edge_deleted(op.p["edge"], 1 if op.t == "DeleteEdge" else 0, op.stamp)

    def _set_index(self, edge: bytes, idx: str, stamp: bytes) -> None:
        row = self.edges.get((edge,))
        if row is None:
            self.edges.put((edge,), (None, None, None, 0, ZERO_STAMP, idx, stamp, None))
        elif row[6] is None or stamp > row[6]:
            self.edges.put((edge,), (*row[:5], idx, stamp, row[7]))

    def _move_edge(self, op: _Op) -> None:
        self._set_index(op.p["edge"], op.p["index"], op.stamp)

    def _rebalance(self, op: _Op) -> None:
        for edge, idx in op.p["order"]:
            self._set_index(edge, idx, op.stamp)

    def _set_prop(self, op: _Op) -> None:
        value = codec.encode_trusted(op.p["value"]) if op.t == "SetEdgeProperty" else None
        self._prop_write(op, op.p["edge"], op.p["key"], value)

    def _prop_write(self, op: _Op, edge: bytes, key: str, value: bytes | None) -> None:
        reg = self.props.get((edge, key))
        tips = self._next_tips(self._reg_tips("p", edge, key, reg), op, value, None, "p", edge,
                               key)
        if reg is None or op.stamp > reg[1]:
            reg = (value, op.stamp, op.actor, op.bundle)
            self.props.put((edge, key), reg)
        self._store_reg_tips("p", edge, key, tips, reg)

    # --- schema ----------------------------------------------------------------------------
    def _define_table(self, op: _Op) -> None:
        self._schema_changed()
        facet, label = op.p["facet"], op.p["label"]
        rows = list(self.conn.execute(
            "SELECT stamp FROM schema_tables WHERE facet = ?", (facet,)
        ))
        if not rows or op.stamp > bytes(rows[0][0]):
            self.conn.execute(
                "INSERT OR REPLACE INTO schema_tables(facet, label, stamp, module)"
                " VALUES (?,?,?,?)", (facet, label, op.stamp, facet.split(".")[0]),
            )

    def _define_field(self, op: _Op) -> None:
        self._schema_changed()
        p = op.p
        facet, field, ftype, is_crdt = p["facet"], p["field"], p["ftype"], bool(p.get("crdt"))
        opts = codec.encode_trusted(p["opts"]) if p.get("opts") is not None else None
        rows = list(self.conn.execute(
            "SELECT ftype, crdt, def_stamp, stamp FROM schema_fields WHERE facet = ? AND field = ?",
            (facet, field),
        ))
        if not rows:
            self.conn.execute(
                "INSERT INTO schema_fields(facet, field, ftype, crdt, def_stamp, label, opts,"
                " stamp) VALUES (?,?,?,?,?,?,?,?)",
                (facet, field, ftype, int(is_crdt), op.stamp, p["label"], opts, op.stamp),
            )
            self.fdefs[(facet, field)] = (ftype, is_crdt)
            return
        oftype, ocrdt, _, stamp = rows[0]
        if (oftype, bool(ocrdt)) != (ftype, is_crdt):
            self._inert_op(op, "field already defined with another type")
            return
        if op.stamp > bytes(stamp):
            self.conn.execute(
                "UPDATE schema_fields SET label = ?, opts = ?, stamp = ? WHERE facet = ?"
                " AND field = ?", (p["label"], opts, op.stamp, facet, field),
            )

    def _define_edge_type(self, op: _Op) -> None:
        self._schema_changed()
        p = op.p
        props = codec.encode_trusted(p["props"]) if p.get("props") is not None else None
        rows = list(self.conn.execute(
            "SELECT ordered, ostamp, stamp FROM schema_edge_types WHERE type = ?", (p["type"],)
        ))
        if not rows:
            self.conn.execute(
                "INSERT INTO schema_edge_types(type, ordered, ostamp, label, props, stamp)"
                " VALUES (?,?,?,?,?,?)",
                (p["type"], int(p["ordered"]), op.stamp, p["label"], props, op.stamp),
            )
            self.edge_ordered[p["type"]] = bool(p["ordered"])
            return
        ordered, ostamp, stamp = rows[0]
        if op.stamp < bytes(ostamp):  # first `ordered` wins
            ordered, ostamp = int(p["ordered"]), op.stamp
            self.edge_ordered[p["type"]] = bool(ordered)
        if op.stamp > bytes(stamp):
            self.conn.execute(
                "UPDATE schema_edge_types SET ordered = ?, ostamp = ?, label = ?, props = ?,"
                " stamp = ? WHERE type = ?",
                (ordered, ostamp, p["label"], props, op.stamp, p["type"]),
            )
        else:
            self.conn.execute(
                "UPDATE schema_edge_types SET ordered = ?, ostamp = ? WHERE type = ?",
                (ordered, ostamp, p["type"]),
            )

    def _lifecycle(self, op: _Op) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO lifecycle_ops(stamp, actor, t, p) VALUES (?,?,?,?)",
            (op.stamp, op.actor, op.t, codec.encode_trusted(op.p)))

    def _config(self, op: _Op) -> None:
        if op.p["ns"] in LIFECYCLE_NS:
            self._lifecycle(op)
        key = (op.p["ns"], op.p["key"])
        value = codec.encode_trusted(op.p["value"]) if op.t == "PutConfig" else None
        row = self.config.get(key)
        if row is None or op.stamp > row[1]:
            self.config.put(key, (value, op.stamp))

    def _create_workspace(self, op: _Op) -> None:
        self._lifecycle(op)
        for k in ("name", "owner", "recovery_pub"):
            key = ("workspace", k)
            row = self.config.get(key)
            if row is None or op.stamp < row[1]:  # the genesis record: first wins
                self.config.put(key, (codec.encode_trusted(op.p[k]), op.stamp))

    def _recover_ownership(self, op: _Op) -> None:
        # Valid only against the recovery key current at its canonical position (spec 03 §2):
        # decided on read by openprod.engine.lifecycle over the whole set, in canonical order.
        self._lifecycle(op)

    # --- structural: mappings, merge, split --------------------------------------------------
    def _structural_begin(self) -> None:
        """Flush the caches so set-based SQL below sees (and may rewrite) every row."""
        self._flush()
        self._reset_caches(fresh=False)

    def _mapping(self, op: _Op) -> None:
        self._schema_changed()
        p = op.p
        ka, kb = f"{p['facet_a']}.{p['field_a']}", f"{p['facet_b']}.{p['field_b']}"
        da = self.fdefs.get((p["facet_a"], p["field_a"]))
        db_ = self.fdefs.get((p["facet_b"], p["field_b"]))
        if da is None or db_ is None or da[0] != db_[0] or da[1] or db_[1]:
            self._inert_op(op, "mapping needs two defined non-CRDT fields of the same type")
            return
        rows = list(self.conn.execute(
            "SELECT stamp FROM mappings WHERE key_a = ? AND key_b = ?", (ka, kb)
        ))
        if rows and op.stamp < bytes(rows[0][0]):
            return
        self._structural_begin()
        self.conn.execute(
            "INSERT OR REPLACE INTO mappings(key_a, key_b, confirmed, stamp) VALUES (?,?,?,?)",
            (ka, kb, int(op.t == "ConfirmFieldMapping"), op.stamp),
        )
        self._regroup(op)

    def _regroup(self, op: _Op) -> None:
        parent: dict[str, str] = {}

        def find(k: str) -> str:
            while parent.get(k, k) != k:
                k = parent[k]
            return k

        for a, b in self.conn.execute("SELECT key_a, key_b FROM mappings WHERE confirmed = 1"):
            ra, rb = find(a), find(b)
            if ra != rb:
                lo, hi = min(ra, rb), max(ra, rb)
                parent[hi] = lo
                parent.setdefault(lo, lo)
        keys = set(parent) | set(self.slots) | set(self.slots.values())  # old roots too
        old = dict(self.slots)
        new = {k: find(k) for k in keys if find(k) != k}
        changed = {k for k in keys if old.get(k, k) != new.get(k, k)}
        if not changed:
            return
        # Groups by slot, before and after.
        def members(m: dict[str, str]) -> dict[str, set[str]]:
            g: dict[str, set[str]] = {}
            for k in keys:
                g.setdefault(m.get(k, k), set()).add(k)
            return g

        old_g, new_g = members(old), members(new)
        affected_old = {old.get(k, k) for k in changed}
        targets = {new.get(k, k) for k in old_g_keys(old_g, affected_old)}
        snap_slots = sorted(affected_old | targets)
        snap: dict[str, dict[bytes, tuple[Any, list[Tip]]]] = {}
        for e, slot in self._owners_of_slots(snap_slots):
            reg = self.fields.get((e, slot))
            snap.setdefault(slot, {})[e] = (reg, self._reg_tips("f", e, slot, reg))
            self.fields.delete((e, slot))
            if self.tips.get(("f", e, slot)) is not None:
                self.tips.delete(("f", e, slot))
        out: dict[tuple[bytes, str], tuple[Any, list[Tip]]] = {}
        for n in sorted(targets):
            mem_new = new_g[n]
            for o in sorted({old.get(k, k) for k in mem_new}):
                whole = old_g[o] <= mem_new
                for e, (reg, tl) in snap.get(o, {}).items():
                    if reg is not None and not whole and o != n:
                        # a split copies the register, stamped by the reject op (spec 01 §1.4)
                        reg = (reg[0], op.stamp, op.actor, op.bundle, reg[4])
                    cur_reg, cur_tips = out.get((e, n), (None, []))
                    if reg is not None and (cur_reg is None or reg[1] > cur_reg[1]):
                        cur_reg = reg
                    keep = tl if whole else [t for t in tl if t[5] in mem_new]
                    out[(e, n)] = (cur_reg, cur_tips + keep)
        for (e, n), (reg, tl) in out.items():
            if reg is not None:
                self.fields.put((e, n), reg)
            self._store_reg_tips("f", e, n, tl, reg)
        self.conn.execute("DELETE FROM field_slots")
        self.conn.executemany(
            "INSERT INTO field_slots(fkey, slot) VALUES (?, ?)", sorted(new.items())
        )
        self.slots = new

    def _owners_of_slots(self, slots: list[str]) -> list[tuple[bytes, str]]:
        q = ",".join("?" * len(slots))
        return sorted({(bytes(e), k) for e, k in self.conn.execute(
            f"SELECT entity, slot FROM fields WHERE slot IN ({q}) UNION"
            f" SELECT owner, key FROM tips WHERE kind = 'f' AND key IN ({q})", [*slots, *slots],
        )})

    def _merge(self, op: _Op) -> None:
        s0, a0 = self.resolve(op.p["survivor"]), self.resolve(op.p["absorbed"])
        if s0 == a0:
            self._inert_op(op, "both ids already resolve to one entity")
            return
        s, a = min(s0, a0), max(s0, a0)
        self._structural_begin()
        self._schema_changed()
        c = self.conn
        c.execute("INSERT OR REPLACE INTO redirects(absorbed, survivor) VALUES (?, ?)", (a, s))
        self.redirects[a] = s
        rows = list(c.execute("SELECT deleted, created FROM entities WHERE entity = ?", (a,)))
        deleted, created = rows[0] if rows else (0, 0)
        c.execute(
            "INSERT OR REPLACE INTO entities(entity, deleted, created, redirect) VALUES (?,?,?,?)",
            (a, deleted, created, s),
        )
        for facet, attached, _stamp in list(c.execute(
            "SELECT facet, attached, stamp FROM facets WHERE entity = ?", (a,)
        )):
            if attached:
                srow = list(c.execute(
                    "SELECT stamp FROM facets WHERE entity = ? AND facet = ?", (s, facet)
                ))
                if not srow or bytes(srow[0][0]) < op.stamp:
                    c.execute(
                        "INSERT OR REPLACE INTO facets(entity, facet, attached, stamp)"
                        " VALUES (?,?,1,?)", (s, facet, op.stamp),
                    )
        # Per slot S keeps the LWW winner and tips_S ∪ tips_A, unpruned (spec 01 §1.6).
        for (slot,) in list(c.execute(
            "SELECT slot FROM fields WHERE entity = ? UNION"
            " SELECT key FROM tips WHERE kind = 'f' AND owner = ?", (a, a),
        )):
            ra = self.fields.get((a, slot))
            ta = self._reg_tips("f", a, slot, ra)
            rs = self.fields.get((s, slot))
            ts = self._reg_tips("f", s, slot, rs)
            reg = rs if ra is None or (rs is not None and rs[1] >= ra[1]) else ra
            self.fields.delete((a, slot))
            if self.tips.get(("f", a, slot)) is not None:
                self.tips.delete(("f", a, slot))
            if reg is not None:
                self.fields.put((s, slot), reg)
            self._store_reg_tips("f", s, slot, ts + ta, reg)
        self._flush()
        for slot, state in list(c.execute(
            "SELECT slot, state FROM crdt_docs WHERE entity = ?", (a,)
        )):
            srow = list(c.execute(
                "SELECT state FROM crdt_docs WHERE entity = ? AND slot = ?", (s, slot)
            ))
            merged_doc = crdt.merge_states(bytes(srow[0][0]) if srow else None, bytes(state))
            c.execute(
                "INSERT OR REPLACE INTO crdt_docs(entity, slot, state) VALUES (?,?,?)",
                (s, slot, merged_doc),
            )
        c.execute("DELETE FROM crdt_docs WHERE entity = ?", (a,))
        c.execute("UPDATE edges SET src = ? WHERE src = ?", (s, a))
        c.execute("UPDATE edges SET dst = ? WHERE dst = ?", (s, a))

    def _split(self, op: _Op) -> None:
        p = op.p
        src, new = self.resolve(p["source"]), p["new_entity"]
        if self.entities.get((new,)) is not None or self.tips.get(("e", new, ENTITY_KEY)):
            self._inert_op(op, "the new entity already exists")
            return
        self._existence(_Op(op.seq, op.op_id, op.bundle, op.hlc, op.actor, "CreateEntity",
                            {"e": new}), "c")
        for facet in p["facets"]:
            row = self.facets.get((src, facet))
            if row is None or not row[0]:
                continue
            self.facets.put((src, facet), (0, op.stamp))
            self.facets.put((new, facet), (1, op.stamp))
            for (f, name) in [k for k in self.fdefs if k[0] == facet]:
                slot = self.slot_of(f, name)
                frow = self.fields.get((src, slot))
                if frow is not None:
                    self.fields.put((new, slot), (frow[0], op.stamp, op.actor, op.bundle,
                                                  frow[4]))
                drow = self.docs.get((src, slot))
                if drow is not None:
                    self.docs.put((new, slot), drow)
        self._flush()
        self.conn.execute(
            "INSERT OR IGNORE INTO merge_exceptions(a, b) VALUES (?, ?)", (src, new)
        )


def old_g_keys(old_g: dict[str, set[str]], slots: Iterable[str]) -> set[str]:
    """Every key that belonged to one of the given old slots' groups."""
    out: set[str] = set()
    for s in slots:
        out |= old_g.get(s, {s})
    return out
