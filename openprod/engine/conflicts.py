"""Conflicts (spec 02 §1): conflict identity and the ConflictManager's projection.

A conflict record is derived, identical on every peer: its id depends only on the entity and the
semantic field (`skey`, the field's slot, or `"$entity"` for a delete conflict), so every episode
of one field's conflicts shares one record and every replica names it the same way.

`ConflictProjection` is a projection of its own over `oplog.db` (tables `cf_*`, checkpoint in
`cf_meta`), independent of the state projection: it keeps every write per semantic field and, on
every change to a field, recomputes the field from its whole write set (resolution acceptance,
tips, open/reopened, display value), so its records are a pure function of the op set.

Design notes (choices the spec leaves open):
- Slots and redirects are recomputed from the oplog by this projection (`cf_mappings`,
  `cf_redirects`, `cf_fdefs`), never read from the state projection, so the two projections may
  run at different paces. A mapping confirm/reject or a merge always triggers a full replay (they
  are rare; a replay re-keys every write by the final slots and redirects).
- Writes to a field from different origins (another member of a mapping group, or an entity that
  was merged in) are united *unpruned* (spec 01 §1.4, §1.6): x prunes such a y only if x had seen
  y and also the mapping confirm(s) / merge(s) joining their origins.
- A record exists iff its conflict is open or it has an accepted resolution (a pure function of
  the op set, so a record can disappear if, e.g., a mapping is rejected; never otherwise).
- Edge properties (spec 02 §0) are tracked exactly like fields, in the same tables and by the
  same recompute: a `SetEdgeProperty`/`ClearEdgeProperty`, and each property value written by a
  `CreateEdge`/`CreateOrderedEdge` `props` map (a write of that property by the create op), is a
  write of the semantic field `(edge_id, PROP_PREFIX + property)`, e.g. `(edge, "@weight")`.
  Its record has kind `"property"`, `entity` = the edge id and `skey` = `"@" + property name`;
  `conflict_id(edge_id, "@name")` follows the spec formula. The `@` prefix cannot collide with
  field slots (`module.Table.field`, always two dots and no `@`) nor with `"$entity"`. Edge ids
  are never redirected (edges of merged entities keep their id) and property keys are never
  mapped, so such writes are never re-keyed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apsw
import cbor2
from blake3 import blake3

from openprod.core import ids, values
from openprod.core.errors import NotFound, ValidationError
from openprod.core.ops import STRUCTURAL
from openprod.engine.projection import Corrupt, ProjectionBase, Replay, seen
from openprod.engine.state import ENTITY_KEY
from openprod.storage import db

CONFLICT_PREFIX = b"openprod/conflict"
CF_VERSION = 2  # 2: edge property conflicts (cf_writes.t)
ZERO_STAMP = bytes(28)
REDIRECT_CAP = 64
REPLAY_OPS = frozenset(["ConfirmFieldMapping", "RejectFieldMapping", "MergeEntities"])
FIELD_WRITES = frozenset(["SetField", "ClearField"])
PROP_WRITES = frozenset(["SetEdgeProperty", "ClearEdgeProperty"])
EDGE_CREATES = frozenset(["CreateEdge", "CreateOrderedEdge"])
PROP_PREFIX = "@"  # skey of an edge property = PROP_PREFIX + property name
EXISTENCE = frozenset(["CreateEntity", "DeleteEntity", "RestoreEntity"])
ACT_ONLY = frozenset(["SetCRDTField", "AttachFacet", "DetachFacet"])
DELETE = "DeleteEntity"


def conflict_id(entity: bytes, skey: str) -> bytes:
    """The 16-byte conflict_id of semantic field `skey` on `entity`."""
    return blake3(CONFLICT_PREFIX + entity + skey.encode()).digest()[:16]


def prop_skey(key: str) -> str:
    """The semantic-field key of edge property `key` (see the module notes)."""
    return PROP_PREFIX + key


def is_prop_skey(skey: str) -> bool:
    return skey.startswith(PROP_PREFIX)


class ConflictNotFound(NotFound):
    code = "conflict_not_found"


class ConflictAlreadyResolved(ValidationError):
    code = "conflict_resolved"


class StaleConflictState(ValidationError):
    code = "stale_conflict_state"


SCHEMA = """
CREATE TABLE IF NOT EXISTS cf_writes(
    entity BLOB NOT NULL, skey TEXT NOT NULL, op_id BLOB NOT NULL, actor BLOB NOT NULL,
    hlc BLOB NOT NULL, bundle_id BLOB NOT NULL, value BLOB, resolves BLOB, conflict BLOB,
    is_clear INTEGER NOT NULL, raw_entity BLOB NOT NULL, fkey TEXT NOT NULL, t TEXT
);
CREATE INDEX IF NOT EXISTS cf_writes_field ON cf_writes(entity, skey);
CREATE INDEX IF NOT EXISTS cf_writes_fkey ON cf_writes(fkey);
CREATE TABLE IF NOT EXISTS cf_acts(
    entity BLOB NOT NULL, op_id BLOB NOT NULL, actor BLOB NOT NULL, hlc BLOB NOT NULL,
    bundle_id BLOB NOT NULL, t TEXT NOT NULL, resolves BLOB, conflict BLOB, cascade BLOB,
    raw_entity BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cf_acts_entity ON cf_acts(entity, t);
CREATE TABLE IF NOT EXISTS cf_fdefs(
    facet TEXT, field TEXT, ftype TEXT NOT NULL, crdt INTEGER NOT NULL, stamp BLOB NOT NULL,
    PRIMARY KEY(facet, field)
);
CREATE TABLE IF NOT EXISTS cf_mappings(
    key_a TEXT, key_b TEXT, confirmed INTEGER NOT NULL, stamp BLOB NOT NULL,
    actor BLOB NOT NULL, PRIMARY KEY(key_a, key_b)
);
CREATE TABLE IF NOT EXISTS cf_redirects(
    absorbed BLOB PRIMARY KEY, survivor BLOB NOT NULL, hlc BLOB NOT NULL, actor BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cf_records(
    conflict_id BLOB PRIMARY KEY, kind TEXT NOT NULL, entity BLOB NOT NULL, skey TEXT NOT NULL,
    status TEXT NOT NULL, record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cf_records_field ON cf_records(entity, skey);
CREATE TABLE IF NOT EXISTS cf_meta(k TEXT PRIMARY KEY, v);
"""
CF_TABLES = ("cf_writes", "cf_acts", "cf_fdefs", "cf_mappings", "cf_redirects", "cf_records")

Record = dict[str, Any]


class _W:
    """One write (or existence/activity op) of a semantic field, as the recompute sees it."""

    __slots__ = ("actor", "bundle", "fkey", "hlc", "op_id", "raw", "resolves", "stamp", "t",
                 "value")

    def __init__(self, op_id: bytes, actor: bytes, hlc: bytes, bundle: bytes, value: Any,
                 resolves: list[bytes] | None, t: str, fkey: str, raw: bytes) -> None:
        self.op_id = op_id
        self.actor = actor
        self.hlc = hlc
        self.bundle = bundle
        self.value = value
        self.resolves = resolves
        self.t = t
        self.fkey = fkey
        self.raw = raw
        self.stamp = hlc + op_id


def _b(x: Any) -> Any:
    return bytes(x) if isinstance(x, memoryview) else x


def _enc(x: Any) -> bytes:
    return cbor2.dumps(x, canonical=True)


class ConflictProjection(ProjectionBase):
    """The ConflictManager's projection over one apsw connection to `oplog.db`."""

    META_TABLE = "cf_meta"

    def __init__(self, conn: apsw.Connection) -> None:
        super().__init__(conn)
        with db.transaction(conn):
            conn.execute(SCHEMA)
            if "t" not in {r[1] for r in conn.execute("PRAGMA table_info(cf_writes)")}:
                conn.execute("ALTER TABLE cf_writes ADD COLUMN t TEXT")  # CF_VERSION 1 tables
            have = {k for (k,) in conn.execute("SELECT k FROM cf_meta")}
            for k, v in {"version": CF_VERSION, "seq": 0, "hw": ZERO_STAMP,
                         "sk": ZERO_STAMP}.items():
                if k not in have:
                    conn.execute("INSERT INTO cf_meta(k, v) VALUES (?, ?)", (k, v))
        self.replays = 0
        self._load()

    # --- meta and caches -------------------------------------------------------------------
    def _load(self) -> None:
        self.crdt: dict[str, bool] = {
            f"{f}.{n}": bool(c) for f, n, c in self.conn.execute(
                "SELECT facet, field, crdt FROM cf_fdefs")
        }
        self.redirects: dict[bytes, tuple[bytes, bytes, bytes]] = {
            bytes(a): (bytes(s), bytes(h), bytes(ac)) for a, s, h, ac in self.conn.execute(
                "SELECT absorbed, survivor, hlc, actor FROM cf_redirects")
        }
        # confirmed mapping pairs: key -> [(other key, hlc, actor)]
        self.pairs: dict[str, list[tuple[str, bytes, bytes]]] = {}
        for a, b, st, ac in self.conn.execute(
            "SELECT key_a, key_b, stamp, actor FROM cf_mappings WHERE confirmed = 1"
        ):
            h = bytes(st)[:12]
            self.pairs.setdefault(a, []).append((b, h, bytes(ac)))
            self.pairs.setdefault(b, []).append((a, h, bytes(ac)))
        self.slots = _slots(self.pairs)

    def refresh(self) -> None:
        """Reload the in-memory caches (slots, redirects, CRDT flags) from the cf_ tables, for a
        read-only user of a projection another owner (the ConflictManager) catches up."""
        self._load()

    def resolve(self, e: bytes) -> bytes:
        for _ in range(REDIRECT_CAP):
            nxt = self.redirects.get(e)
            if nxt is None:
                return e
            e = nxt[0]
        return e

    def slot_of(self, fkey: str) -> str:
        return self.slots.get(fkey, fkey)

    def _seen(self, x: _W, y: _W) -> bool:
        return seen(x.hlc, x.actor, self._vc(x.bundle), y.hlc, y.actor)

    def _saw(self, x: _W, hlc: bytes, actor: bytes) -> bool:
        return seen(x.hlc, x.actor, self._vc(x.bundle), hlc, actor)

    # --- driving ---------------------------------------------------------------------------
    def catch_up(self) -> list[dict[str, Any]]:
        """Apply every op appended since the checkpoint; return the events to emit (after the
        commit, which has happened when this returns)."""
        events: list[dict[str, Any]] = []
        with db.transaction(self.conn):
            try:
                meta = self._meta()
                head = self._head()
                seq = int(meta["seq"])
                if int(meta["version"]) != CF_VERSION or self._quarantine_hits(seq):
                    events = self._full_replay(head)
                elif head > seq:
                    events = self._incremental(seq, bytes(meta["hw"]), bytes(meta["sk"]), head)
            except BaseException:
                self._load()
                raise
        return events

    def rebuild(self) -> list[dict[str, Any]]:
        """Drop the cf_ tables and replay the whole oplog in canonical order."""
        with db.transaction(self.conn):
            try:
                return self._full_replay(self._head())
            except BaseException:
                self._load()
                raise

    @staticmethod
    def _decode(row: tuple[Any, ...]) -> tuple[Any, ...]:
        _seq, op_id, bid, h, actor, t, body, oh = (_b(x) for x in row)
        if blake3(body).digest() != oh:
            raise Corrupt(bid)
        try:
            p = cbor2.loads(body)["p"]
        except Exception as exc:
            raise Corrupt(bid) from exc
        return op_id, bid, h, actor, t, p

    def _incremental(self, seq: int, hw: bytes, sk: bytes, head: int) -> list[dict[str, Any]]:
        quarantined = self._quarantined()
        by_bundle: dict[bytes, list[tuple[Any, ...]]] = {}
        for row in self.conn.execute(
            "SELECT seq, op_id, bundle_id, hlc, actor, t, body, op_hash FROM ops"
            " WHERE seq > ? AND seq <= ? ORDER BY seq", (seq, head),
        ):
            by_bundle.setdefault(bytes(row[2]), []).append(row)
        pending: list[tuple[Any, ...]] = []
        for bid, rows in by_bundle.items():
            if bid in quarantined:
                continue
            try:
                pending.extend([self._decode(r) for r in rows])
            except Corrupt:
                self._quarantine(bid, head)
        pending.sort(key=lambda o: o[2] + o[0])
        fields: set[tuple[bytes, str]] = set()
        ents: set[bytes] = set()
        try:
            for op in pending:
                stamp = op[2] + op[0]
                structural = op[4] in STRUCTURAL
                if op[4] in REPLAY_OPS or (stamp <= hw and (structural or stamp < sk)):
                    raise Replay
                self._apply(op, fields, ents)
                if stamp > hw:
                    hw = stamp
                if structural and stamp > sk:
                    sk = stamp
        except Replay:
            self._load()
            return self._full_replay(head)
        events = self._recompute(fields, ents)
        self._save_meta(head, hw, sk)
        return events

    def _full_replay(self, head: int) -> list[dict[str, Any]]:
        self.replays += 1
        before = self._all_records()
        while True:
            for t in CF_TABLES:
                self.conn.execute(f"DELETE FROM {t}")
            self._load()
            quarantined = self._quarantined()
            hw = sk = ZERO_STAMP
            try:
                # Pass 1 (canonical order): facts that are registers (schema, mappings, merges).
                writes: list[tuple[Any, ...]] = []
                for row in self.conn.cursor().execute(
                    "SELECT seq, op_id, bundle_id, hlc, actor, t, body, op_hash FROM ops"
                    " WHERE seq <= ? ORDER BY hlc, op_id", (head,),
                ):
                    if bytes(row[2]) in quarantined:
                        continue
                    op = self._decode(row)
                    stamp = op[2] + op[0]
                    hw = stamp
                    if op[4] in STRUCTURAL:
                        sk = stamp
                    if (op[4] in FIELD_WRITES or op[4] in EXISTENCE or op[4] in ACT_ONLY
                            or op[4] in PROP_WRITES or op[4] in EDGE_CREATES):
                        writes.append(op)
                    else:
                        self._apply(op, set(), set())
            except Corrupt as bad:
                self._quarantine(bad.bundle_id, head)
                continue
            break
        # Pass 2: every write keyed by the final slots and redirects.
        for op in writes:
            self._apply(op, set(), set())
        fields = {(bytes(e), k) for e, k in self.conn.execute(
            "SELECT DISTINCT entity, skey FROM cf_writes")}
        ents = {bytes(e) for (e,) in self.conn.execute(
            "SELECT DISTINCT entity FROM cf_acts WHERE t = ?", (DELETE,))}
        after: dict[bytes, Record] = {}
        for e, k in sorted(fields):
            rec = self._field_record(e, k)
            if rec is not None:
                after[conflict_id(e, k)] = rec
        for e in sorted(ents):
            rec = self._delete_record(e)
            if rec is not None:
                after[conflict_id(e, ENTITY_KEY)] = rec
        for cid in sorted(after):
            self._store(cid, after[cid])
        events: list[dict[str, Any]] = []
        for cid in sorted(set(before) | set(after)):
            events += _events(cid, before.get(cid), after.get(cid))
        self._save_meta(head, hw, sk)
        return events

    def _save_meta(self, seq: int, hw: bytes, sk: bytes) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO cf_meta(k, v) VALUES (?, ?)",
            [("version", CF_VERSION), ("seq", seq), ("hw", hw), ("sk", sk)],
        )

    # --- applying one op -------------------------------------------------------------------
    def _apply(self, op: tuple[Any, ...], fields: set[tuple[bytes, str]],
               ents: set[bytes]) -> None:
        op_id, bid, h, actor, t, p = op
        if t in FIELD_WRITES:
            raw = p["e"]
            e = self.resolve(raw)
            fkey = f"{p['facet']}.{p['field']}"
            skey = self.slot_of(fkey)
            value = _enc(p["value"]) if t == "SetField" else None
            res = p.get("resolves")
            self.conn.execute(
                "INSERT INTO cf_writes(entity, skey, op_id, actor, hlc, bundle_id, value,"
                " resolves, conflict, is_clear, raw_entity, fkey) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (e, skey, op_id, actor, h, bid, value, _enc(res) if res else None,
                 p.get("conflict"), int(t == "ClearField"), raw, fkey),
            )
            fields.add((e, skey))
            ents.add(e)
        elif t in PROP_WRITES:
            self._prop_write(op, p["edge"], p["key"],
                             _enc(p["value"]) if t == "SetEdgeProperty" else None, fields)
        elif t in EDGE_CREATES:
            for key, value in sorted((p.get("props") or {}).items()):
                self._prop_write(op, p["edge"], key, _enc(value), fields)
        elif t in EXISTENCE or t in ACT_ONLY:
            raw = p["e"]
            e = self.resolve(raw)
            res = p.get("resolves")
            cascade = p.get("cascade")
            self.conn.execute(
                "INSERT INTO cf_acts(entity, op_id, actor, hlc, bundle_id, t, resolves, conflict,"
                " cascade, raw_entity) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (e, op_id, actor, h, bid, t, _enc(res) if res else None, p.get("conflict"),
                 _enc(cascade) if cascade is not None else None, raw),
            )
            ents.add(e)
        elif t == "DefineField":
            self._define_field(op, fields)
        elif t in ("ConfirmFieldMapping", "RejectFieldMapping"):
            self._mapping(op)
        elif t == "MergeEntities":
            self._merge(op)

    def _prop_write(self, op: tuple[Any, ...], edge: bytes, key: str, value: bytes | None,
                    fields: set[tuple[bytes, str]]) -> None:
        """A write of edge property `key` (never redirected, never mapped; no activity)."""
        op_id, bid, h, actor, t, p = op
        skey = prop_skey(key)
        res = p.get("resolves") if t in PROP_WRITES else None
        self.conn.execute(
            "INSERT INTO cf_writes(entity, skey, op_id, actor, hlc, bundle_id, value, resolves,"
            " conflict, is_clear, raw_entity, fkey, t) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (edge, skey, op_id, actor, h, bid, value, _enc(res) if res else None,
             p.get("conflict") if t in PROP_WRITES else None, int(value is None), edge, skey,
             t),
        )
        fields.add((edge, skey))

    def _define_field(self, op: tuple[Any, ...], fields: set[tuple[bytes, str]]) -> None:
        op_id, _, h, _, _, p = op
        stamp = h + op_id
        facet, field = p["facet"], p["field"]
        rows = list(self.conn.execute(
            "SELECT stamp FROM cf_fdefs WHERE facet = ? AND field = ?", (facet, field)))
        if rows and bytes(rows[0][0]) <= stamp:
            return  # the first definition wins
        self.conn.execute(
            "INSERT OR REPLACE INTO cf_fdefs(facet, field, ftype, crdt, stamp) VALUES (?,?,?,?,?)",
            (facet, field, p["ftype"], int(bool(p.get("crdt"))), stamp),
        )
        fkey = f"{facet}.{field}"
        self.crdt[fkey] = bool(p.get("crdt"))
        fields.update((bytes(e), k) for e, k in self.conn.execute(
            "SELECT DISTINCT entity, skey FROM cf_writes WHERE fkey = ?", (fkey,)))

    def _mapping(self, op: tuple[Any, ...]) -> None:
        op_id, _, h, actor, t, p = op
        stamp = h + op_id
        defs = {}
        for side in ("a", "b"):
            for ftype, c in self.conn.execute(
                "SELECT ftype, crdt FROM cf_fdefs WHERE facet = ? AND field = ?",
                (p[f"facet_{side}"], p[f"field_{side}"]),
            ):
                defs[side] = (ftype, bool(c))
        if len(defs) != 2 or defs["a"][0] != defs["b"][0] or defs["a"][1] or defs["b"][1]:
            return  # inert, as in the state projection
        ka, kb = f"{p['facet_a']}.{p['field_a']}", f"{p['facet_b']}.{p['field_b']}"
        rows = list(self.conn.execute(
            "SELECT stamp FROM cf_mappings WHERE key_a = ? AND key_b = ?", (ka, kb)))
        if rows and stamp < bytes(rows[0][0]):
            return
        self.conn.execute(
            "INSERT OR REPLACE INTO cf_mappings(key_a, key_b, confirmed, stamp, actor)"
            " VALUES (?,?,?,?,?)", (ka, kb, int(t == "ConfirmFieldMapping"), stamp, actor),
        )
        self._load()

    def _merge(self, op: tuple[Any, ...]) -> None:
        _, _, h, actor, _, p = op
        s0, a0 = self.resolve(p["survivor"]), self.resolve(p["absorbed"])
        if s0 == a0:
            return
        s, a = min(s0, a0), max(s0, a0)
        self.conn.execute(
            "INSERT OR REPLACE INTO cf_redirects(absorbed, survivor, hlc, actor) VALUES (?,?,?,?)",
            (a, s, h, actor),
        )
        self.redirects[a] = (s, h, actor)

    # --- recomputing -----------------------------------------------------------------------
    def _recompute(self, fields: set[tuple[bytes, str]], ents: set[bytes],
                   ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        todo: list[tuple[bytes, Record | None]] = []
        for e, k in sorted(fields):
            todo.append((conflict_id(e, k), self._field_record(e, k)))
        for e in sorted(ents):
            todo.append((conflict_id(e, ENTITY_KEY), self._delete_record(e)))
        for cid, after in todo:
            before = self._get_raw(cid)
            if after == before:
                continue
            if after is None:
                self.conn.execute("DELETE FROM cf_records WHERE conflict_id = ?", (cid,))
            else:
                self._store(cid, after)
            events += _events(cid, before, after)
        return events

    def _store(self, cid: bytes, rec: Record) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO cf_records(conflict_id, kind, entity, skey, status, record)"
            " VALUES (?,?,?,?,?,?)",
            (cid, rec["kind"], rec["entity"], rec["skey"], rec["status"], _enc(rec)),
        )

    def _get_raw(self, cid: bytes) -> Record | None:
        for (blob,) in self.conn.execute(
            "SELECT record FROM cf_records WHERE conflict_id = ?", (cid,)
        ):
            rec: Record = cbor2.loads(blob)
            return rec
        return None

    def _all_records(self) -> dict[bytes, Record]:
        return {bytes(c): cbor2.loads(r) for c, r in self.conn.execute(
            "SELECT conflict_id, record FROM cf_records")}

    def _field_writes(self, e: bytes, skey: str) -> list[_W]:
        out = []
        for oid, actor, h, bid, value, res, clear, raw, fkey, t in self.conn.execute(
            "SELECT op_id, actor, hlc, bundle_id, value, resolves, is_clear, raw_entity, fkey,"
            " t FROM cf_writes WHERE entity = ? AND skey = ?", (e, skey),
        ):
            if self.crdt.get(fkey):
                continue  # inert scalar write to a CRDT field: never enters W
            out.append(_W(bytes(oid), bytes(actor), bytes(h), bytes(bid),
                          _b(value), cbor2.loads(res) if res is not None else None,
                          t or ("ClearField" if clear else "SetField"), fkey, bytes(raw)))
        out.sort(key=lambda w: w.stamp)
        return out

    def _accept(self, writes: list[_W], universe: dict[bytes, _W],
                ) -> tuple[list[_W], list[_W]]:
        """Accepted and rejected resolutions among writes (spec 02 §1.6), canonical walk."""
        accepted: list[_W] = []
        rejected: list[_W] = []
        for r in writes:
            if not r.resolves:
                continue
            listed = [universe.get(o) for o in r.resolves]
            if any(x is None or not self._seen(r, x) for x in listed):
                continue  # its author had not seen every listed op: an ordinary write
            rs = set(r.resolves)
            if any(a.resolves and rs.intersection(a.resolves) and not self._seen(r, a)
                   for a in accepted):
                rejected.append(r)
            else:
                accepted.append(r)
        return accepted, rejected

    def _prunes(self, x: _W, y: _W) -> bool:
        """x makes y a non-tip: x had seen y, and (across origins) what joined them."""
        if not self._seen(x, y):
            return False
        if x.fkey != y.fkey and not self._keys_joined(x, x.fkey, y.fkey):
            return False
        return x.raw == y.raw or self._seen_resolve(x, x.raw) == self._seen_resolve(x, y.raw)

    def _keys_joined(self, x: _W, a: str, b: str) -> bool:
        todo, seen = [a], {a}
        while todo:
            k = todo.pop()
            if k == b:
                return True
            for other, h, actor in self.pairs.get(k, ()):
                if other not in seen and self._saw(x, h, actor):
                    seen.add(other)
                    todo.append(other)
        return False

    def _seen_resolve(self, x: _W, e: bytes) -> bytes:
        for _ in range(REDIRECT_CAP):
            nxt = self.redirects.get(e)
            if nxt is None or not self._saw(x, nxt[1], nxt[2]):
                return e
            e = nxt[0]
        return e

    def _tips(self, writes: list[_W]) -> list[_W]:
        """Writes no other write has seen (writes sorted canonically)."""
        latest: dict[tuple[bytes, str, bytes], _W] = {}
        for w in writes:  # per actor and origin only the latest can be a tip
            latest[(w.actor, w.fkey, w.raw)] = w
        cands = sorted(latest.values(), key=lambda w: w.stamp)
        if len(cands) == 1:
            return cands
        return [y for y in cands if not any(x is not y and self._prunes(x, y) for x in cands)]

    def _field_record(self, e: bytes, skey: str) -> Record | None:
        writes = self._field_writes(e, skey)
        if not writes or (len(writes) == 1 and not writes[0].resolves):
            return None
        universe = {w.op_id: w for w in writes}
        accepted, rejected = self._accept(writes, universe)
        rej = {r.op_id for r in rejected}
        tips = self._tips([w for w in writes if w.op_id not in rej])
        is_open = len(tips) >= 2 and len({t.value for t in tips}) >= 2
        if not is_open and not accepted:
            return None
        acc = {a.op_id for a in accepted}
        res_tips = [t for t in tips if t.op_id in acc]
        # open: the latest accepted resolution tip (reopened), else LWW; closed: the value
        display = (res_tips[-1] if res_tips and is_open else tips[-1]).value
        kind = "property" if is_prop_skey(skey) else "field"
        return _record(kind, e, skey, is_open, bool(is_open and res_tips), tips, acc,
                       display, accepted, rejected)

    def _delete_record(self, e: bytes) -> Record | None:
        rows = list(self.conn.execute(
            "SELECT op_id, actor, hlc, bundle_id, t, resolves FROM cf_acts WHERE entity = ?",
            (e,)))
        if not any(r[4] == DELETE for r in rows):
            return None
        ex: list[_W] = []
        acts: list[_W] = []
        for oid, actor, h, bid, t, res in rows:
            w = _W(bytes(oid), bytes(actor), bytes(h), bytes(bid), None,
                   cbor2.loads(res) if res is not None else None, t, "", e)
            if t in EXISTENCE:
                ex.append(w)
            if t not in EXISTENCE or t == "RestoreEntity":
                acts.append(w)
        for oid, actor, h, bid, value, clear, fkey in self.conn.execute(
            "SELECT op_id, actor, hlc, bundle_id, value, is_clear, fkey FROM cf_writes"
            " WHERE entity = ?", (e,),
        ):
            acts.append(_W(bytes(oid), bytes(actor), bytes(h), bytes(bid), _b(value), None,
                           "ClearField" if clear else "SetField", fkey, e))
        ex.sort(key=lambda w: w.stamp)
        acts.sort(key=lambda w: w.stamp)
        universe = {w.op_id: w for w in ex + acts}
        accepted, rejected = self._accept(ex, universe)
        rej = {r.op_id for r in rejected}
        ex_tips = self._tips([w for w in ex if w.op_id not in rej])
        deletes = [t for t in ex_tips if t.t == DELETE]
        tips = ex_tips
        is_open = False
        if deletes:
            latest: dict[bytes, _W] = {}
            for a in acts:
                if a.op_id in rej:
                    continue
                if any(not self._seen(d, a) and not self._seen(a, d) for d in deletes):
                    latest[a.actor] = a
            is_open = bool(latest)
            tips = sorted(deletes + list(latest.values()), key=lambda w: w.stamp)
        if not is_open and not accepted:
            return None
        acc = {a.op_id for a in accepted}
        reopened = is_open and any(t.op_id in acc for t in tips)
        rec = _record("delete", e, ENTITY_KEY, is_open, reopened, tips, acc, None, accepted,
                      rejected)
        rec["deleted"] = bool(deletes)
        return rec

    # --- reads -----------------------------------------------------------------------------
    def get_raw(self, cid: bytes) -> Record | None:
        """The stored record (ids as bytes, values as canonical CBOR bytes)."""
        return self._get_raw(cid)

    def get(self, cid: bytes | str) -> dict[str, Any] | None:
        c = cid if isinstance(cid, bytes) else ids.from_text(cid)
        rec = self._get_raw(c)
        return None if rec is None else self._json(c, rec)

    def list_conflicts(self, status: str = "open") -> list[dict[str, Any]]:
        if status not in ("open", "all"):
            raise ValidationError("status must be 'open' or 'all'", status=status)
        q = "SELECT conflict_id, record FROM cf_records"
        if status == "open":
            q += " WHERE status = 'open'"
        labels: dict[str, str | None] = {}  # one schema lookup per field, not per conflict
        return [self._json(bytes(c), cbor2.loads(r), labels)
                for c, r in self.conn.execute(q + " ORDER BY entity, skey")]

    def records(self) -> dict[bytes, Record]:
        """Every stored record by conflict id (for comparisons between replicas)."""
        return self._all_records()

    def _cached_label(self, skey: str, labels: dict[str, str | None] | None) -> str | None:
        if labels is None:
            return self._label(skey)
        if skey not in labels:
            labels[skey] = self._label(skey)
        return labels[skey]

    def _label(self, skey: str) -> str | None:
        if skey == ENTITY_KEY or not values.is_field_key(skey):
            return None
        facet, field = values.split_field_key(skey)
        try:
            for (label,) in self.conn.execute(
                "SELECT label FROM schema_fields WHERE facet = ? AND field = ?", (facet, field)
            ):
                return str(label)
        except apsw.SQLError:
            pass
        return None

    def _json(self, cid: bytes, rec: Record,
              labels: dict[str, str | None] | None = None) -> dict[str, Any]:
        def val(v: Any) -> Any:
            return values.to_user(cbor2.loads(v)) if v is not None else None

        def res(r: list[Any]) -> dict[str, Any]:
            return {"op_id": ids.to_text(r[0]), "actor": r[1].hex(), "hlc": r[2].hex(),
                    "value": val(r[3]), "resolves": [ids.to_text(o) for o in r[4]]}

        out = {
            "conflict_id": ids.to_text(cid), "kind": rec["kind"],
            "entity_id": ids.to_text(rec["entity"]), "field": rec["skey"],
            "field_label": self._cached_label(rec["skey"], labels), "status": rec["status"],
            "reopened": rec["reopened"], "display_value": val(rec["display"]),
            "tips": [{"op_id": ids.to_text(t[0]), "actor": t[1].hex(), "hlc": t[2].hex(),
                      "value": val(t[3]), "is_resolution": t[4], "bundle_id": ids.to_text(t[5]),
                      "op": t[6]} for t in rec["tips"]],
            "resolutions": [res(r) for r in rec["resolutions"]],
            "rejected_resolutions": [res(r) for r in rec["rejected"]],
        }
        if "deleted" in rec:
            out["deleted"] = rec["deleted"]
        if rec["kind"] == "property":  # entity_id is the edge id
            out["property"] = rec["skey"][len(PROP_PREFIX):]
        return out


def _record(kind: str, e: bytes, skey: str, is_open: bool, reopened: bool, tips: list[_W],
            acc: set[bytes], display: Any, accepted: list[_W], rejected: list[_W]) -> Record:
    def res(r: _W) -> list[Any]:
        return [r.op_id, r.actor, r.hlc, r.value, list(r.resolves or [])]

    return {
        "kind": kind, "entity": e, "skey": skey, "status": "open" if is_open else "resolved",
        "reopened": reopened,
        "tips": [[t.op_id, t.actor, t.hlc, t.value, t.op_id in acc, t.bundle, t.t]
                 for t in tips],
        "display": display, "resolutions": [res(r) for r in accepted],
        "rejected": [res(r) for r in rejected],
    }


def _slots(pairs: dict[str, list[tuple[str, bytes, bytes]]]) -> dict[str, str]:
    """Each key of a confirmed mapping group -> the group's bytewise-smallest key."""
    out: dict[str, str] = {}
    for k in sorted(pairs):
        if k in out:
            continue
        group, todo = {k}, [k]
        while todo:
            for other, _, _ in pairs.get(todo.pop(), ()):
                if other not in group:
                    group.add(other)
                    todo.append(other)
        root = min(group, key=str.encode)
        for m in group:
            if m != root:
                out[m] = root
    return out


def _events(cid: bytes, before: Record | None, after: Record | None) -> list[dict[str, Any]]:
    rec = after if after is not None else before
    if rec is None:
        return []
    base = {"conflict_id": ids.to_text(cid), "entity_id": ids.to_text(rec["entity"]),
            "field": rec["skey"], "kind": rec["kind"]}
    b_open = before is not None and before["status"] == "open"
    a_open = after is not None and after["status"] == "open"
    out: list[dict[str, Any]] = []
    if a_open and not b_open:
        assert after is not None
        out.append({"type": "conflict_opened", **base, "reopened": after["reopened"]})
    elif b_open and not a_open:
        out.append({"type": "conflict_resolved", **base})
    elif a_open and b_open:
        assert before is not None and after is not None
        if [t[0] for t in before["tips"]] != [t[0] for t in after["tips"]]:
            out.append({"type": "conflict_updated", **base, "reopened": after["reopened"]})
    old = {r[0] for r in before["rejected"]} if before is not None else set()
    for r in after["rejected"] if after is not None else ():
        if r[0] not in old:
            out.append({"type": "resolution_rejected", **base, "op_id": ids.to_text(r[0])})
    return out


def raw_ids(xs: Iterable[bytes | str]) -> list[bytes]:
    """Ids given as bytes or hyphenated text, as bytes."""
    return [x if isinstance(x, bytes) else ids.from_text(x) for x in xs]


__all__ = [
    "PROP_PREFIX", "ConflictAlreadyResolved", "ConflictNotFound", "ConflictProjection",
    "StaleConflictState", "conflict_id", "is_prop_skey", "prop_skey",
]
