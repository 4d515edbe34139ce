"""Record history (issue 9, spec 05 J6): who changed a record or one of its cells, when, and
from what to what, read from the signed oplog; plus the workspace revision stamp.

Authorship is the actor that signed the op's bundle (the `actor` column of `ops`, checked
against the bundle signature on admission), never a claim inside a payload. Nothing here is
stored: a request reads the ops of one record through the oplog's `ops_entity_hlc` index (the
`entity` column is the op's target: the record for field/existence/facet ops, the edge id for
link ops) and the record's edges through the state projection's `edges` table, so its cost
grows with that record's own history, not with the workspace.

"old" is the value the field had for the author of a write: the newest earlier write to the
same slot that the write's bundle had seen (spec 02 §1.1). For sequential edits that is the
previous value; for concurrent writes (conflict branches) it is the value before the branch.
CRDT text is replayed delta by delta in canonical order.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

import apsw
import cbor2
from blake3 import blake3

from openprod.core import hlc as hlcmod
from openprod.core import ids
from openprod.core import vclock as vcmod
from openprod.core.errors import IntegrityError, NotFound, ValidationError
from openprod.engine import crdt
from openprod.engine.conflicts import conflict_id
from openprod.engine.projection import seen
from openprod.engine.state import ENTITY_KEY
from openprod.engine.views import FieldDef, Views, _read
from openprod.storage.sqlite import digest_of

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STAMP_LEN = 28  # hlc (12) ‖ op_id (16): the canonical order of ops
MAX_SHOWN = 80  # characters of a value quoted in a summary
REDIRECT_CAP = 64
BATCH = 500  # targets per ops query (SQLite's default limit is 32 766 variables)

FIELD_WRITES = frozenset(["SetField", "ClearField"])
PROP_WRITES = frozenset(["SetEdgeProperty", "ClearEdgeProperty"])
EDGE_OPS = {"CreateEdge": "link", "CreateOrderedEdge": "link", "RestoreEdge": "link",
            "DeleteEdge": "unlink", "MoveOrderedEdge": "reorder"}
EXISTENCE = {"CreateEntity": "create", "DeleteEntity": "delete", "RestoreEntity": "restore"}
FACET_OPS = {"AttachFacet": "attach", "DetachFacet": "detach"}


def ops_sql(n: int) -> str:
    """The ops of n targets up to a seq, with their bundle's kind (served by ops_entity_hlc)."""
    return ("SELECT o.seq, o.op_id, o.bundle_id, o.hlc, o.actor, o.t, o.body, o.op_hash, b.kind"
            " FROM ops o JOIN bundles b ON b.bundle_id = o.bundle_id"
            f" WHERE o.entity IN ({','.join('?' * n)}) AND o.seq <= ?")


class _Op:
    __slots__ = ("actor", "bundle", "hlc", "op_id", "p", "seq", "stamp", "t")

    def __init__(self, seq: int, op_id: bytes, bundle: bytes, hlc: bytes, actor: bytes, t: str,
                 p: dict[str, Any]) -> None:
        self.seq = seq
        self.op_id = op_id
        self.bundle = bundle
        self.hlc = hlc
        self.actor = actor
        self.t = t
        self.p = p
        self.stamp = hlc + op_id


class _W:
    """One write of a slot (field or edge property) as the old-value walk sees it."""

    __slots__ = ("actor", "bundle", "entry", "hlc", "stamp", "value")

    def __init__(self, op: _Op, value: list[Any] | None, entry: dict[str, Any] | None) -> None:
        self.actor = op.actor
        self.bundle = op.bundle
        self.hlc = op.hlc
        self.stamp = op.stamp
        self.value = value
        self.entry = entry


# --- the revision stamp -------------------------------------------------------------------

def revision(conn: apsw.Connection) -> dict[str, Any]:
    """`{revision, stamp, at, seq}`: the number of bundles in the oplog and the oplog digest
    (equal on every peer holding the same ops), the wall time of the newest op, and the local
    head seq."""
    (n,) = next(iter(conn.execute("SELECT count(*) FROM bundles")))
    meta = {k: v for k, v in conn.execute("SELECT k, v FROM oplog_meta")}
    digest = digest_of(int(meta.get("count") or 0),
                       int.from_bytes(bytes(meta.get("digest_sum") or bytes(32)), "big"))
    (top,) = next(iter(conn.execute("SELECT max(hlc) FROM ops")))
    at = hlcmod.wall_ms(bytes(top)) if top is not None else 0
    return {"revision": int(n), "stamp": f"Rev {int(n)} · {digest.hex()[:8]}", "at": at,
            "digest": digest.hex(), "seq": int(meta.get("head_seq") or 0)}


# --- record history -----------------------------------------------------------------------

def parse_cursor(raw: str | None) -> bytes | None:
    if raw is None or raw == "":
        return None
    try:
        c = bytes.fromhex(raw)
    except ValueError:
        c = b""
    if len(c) != STAMP_LEN:
        raise ValidationError("before must be a cursor from a previous page's `next`",
                              field="before")
    return c


def record_history(views: Views, entity: bytes, *, field: str | None = None,
                   limit: int = DEFAULT_LIMIT, before: bytes | None = None,
                   upto: int | None = None, names: Mapping[str, str] | None = None,
                   ) -> dict[str, Any]:
    """The history of one record, newest first: `{entity_id, seq, entries, next}`.

    `field` keeps only the writes to that field (by name or label); `before` is a cursor
    (`next` of the previous page); `upto` ignores ops after that seq (the reader passes the
    state projection's checkpoint, so history and current values agree); `names` (actor hex
    -> name, e.g. from sync handshakes) names authors who published no profile."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be 1-{MAX_LIMIT}", field="limit")
    if views.entity_row(entity) is None:
        raise NotFound(f"no record {ids.to_text(entity)}", entity_id=ids.to_text(entity))
    e = views.proj.resolve(entity)
    if upto is None:
        upto = views.proj.checkpoint
    walk = _Walk(views, e, upto, names or {}, with_edges=field is None)
    entries = walk.run()
    if field is not None:
        wanted = walk.field_names(field)
        entries = [x for x in entries if x["field"] in wanted and "edge" not in x]
    entries.reverse()
    if before is not None:
        entries = [x for x in entries if x["_stamp"] < before]
    page = entries[:limit]
    nxt = page[-1]["_stamp"].hex() if len(entries) > limit else None
    walk.finish(page)
    return {"entity_id": ids.to_text(e), "seq": upto, "entries": page, "next": nxt}


class _Walk:
    """One request: the record's ops in canonical order, turned into entries."""

    def __init__(self, views: Views, e: bytes, upto: int, names: Mapping[str, str], *,
                 with_edges: bool = True) -> None:
        self.views = views
        self.conn = views.conn
        self.e = e
        self.upto = upto
        self.group = _merged_group(views, e)
        self.kinds: dict[bytes, str] = {}
        self.vcs: dict[bytes, dict[bytes, bytes]] = {}
        self.names = {**names, **views.actor_names()}
        self.fdefs: dict[tuple[str, str], FieldDef | None] = {}
        self.labels: dict[str, str] = {}
        self.rec_names: dict[bytes, str | None] = {}
        self.slots: dict[tuple[Any, ...], list[_W]] = {}
        self.crdt: dict[str, bytes] = {}
        self.edges: dict[bytes, tuple[str | None, bytes | None, bytes | None]] = {}
        self.etypes: dict[str, str] = {}
        self.with_edges = with_edges

    # --- reading the oplog --------------------------------------------------------------
    def _ops(self) -> list[_Op]:
        targets = list(self.group)
        if self.with_edges:  # a field's history has no links
            for g, t, s, d in self._edge_rows():
                self.edges[g] = (t, s, d)
                targets.append(g)
        quarantined = {bytes(b) for (b,) in self.conn.execute("SELECT bundle_id FROM quarantine")}
        out: list[_Op] = []
        for i in range(0, len(targets), BATCH):
            chunk = targets[i:i + BATCH]
            for seq, oid, bid, h, actor, t, body, oh, kind in self.conn.execute(
                ops_sql(len(chunk)), (*chunk, self.upto),
            ):
                bid = bytes(bid)
                if bid in quarantined or t == "RebalanceOrderedEdges":
                    continue
                body = bytes(body)
                if blake3(body).digest() != bytes(oh):
                    raise IntegrityError("stored op body does not match its op_hash",
                                         bundle_id=ids.to_text(bid)).with_code("bad_digest")
                self.kinds[bid] = str(kind)
                out.append(_Op(seq, bytes(oid), bid, bytes(h), bytes(actor), t,
                               cbor2.loads(body)["p"]))
        out.sort(key=lambda o: o.stamp)
        return out

    def _edge_rows(self) -> Iterable[tuple[bytes, str | None, bytes | None, bytes | None]]:
        seen_edges: set[bytes] = set()
        for member in self.group:
            for g, t, s, d in self.conn.execute(
                "SELECT edge, type, src, dst FROM edges WHERE src = ? UNION"
                " SELECT edge, type, src, dst FROM edges WHERE dst = ?", (member, member),
            ):
                g = bytes(g)
                if g not in seen_edges:
                    seen_edges.add(g)
                    yield g, t, bytes(s) if s is not None else None, (
                        bytes(d) if d is not None else None)

    def _kind(self, bid: bytes) -> str:
        k = self.kinds.get(bid)
        if k is None:
            k = "user"
            for (kind,) in self.conn.execute(
                    "SELECT kind FROM bundles WHERE bundle_id = ?", (bid,)):
                k = str(kind)
            self.kinds[bid] = k
        return k

    def _vc(self, bid: bytes) -> dict[bytes, bytes]:
        vc = self.vcs.get(bid)
        if vc is None:
            vc = {}
            for (header,) in self.conn.execute(
                    "SELECT header FROM bundles WHERE bundle_id = ?", (bid,)):
                vc = vcmod.from_wire(cbor2.loads(bytes(header))["causal_vc"])
            self.vcs[bid] = vc
        return vc

    def _seen(self, x: _W, y: _W) -> bool:
        return seen(x.hlc, x.actor, self._vc(x.bundle), y.hlc, y.actor)

    # --- schema and names ---------------------------------------------------------------
    def _fdef(self, facet: str, name: str) -> FieldDef | None:
        k = (facet, name)
        if k not in self.fdefs:
            self.fdefs[k] = self.views.field_def(facet, name)
        return self.fdefs[k]

    def _table_label(self, facet: str | None) -> str | None:
        if facet is None:
            return None
        if facet not in self.labels:
            self.labels[facet] = facet
            for (label,) in self.conn.execute(
                    "SELECT label FROM schema_tables WHERE facet = ?", (facet,)):
                self.labels[facet] = str(label)
        return self.labels[facet]

    def _edge_label(self, etype: str | None) -> str:
        if etype is None:
            return "link"
        if etype not in self.etypes:
            et = self.views.edge_type(etype)
            self.etypes[etype] = str(et["label"]) if et else etype
        return self.etypes[etype]

    def _rec_name(self, e: bytes | None) -> str | None:
        """A record's name: its first non-empty text value (what the grid's link chips show)."""
        if e is None:
            return None
        if e not in self.rec_names:
            name: str | None = None
            for t in self.views.tables_of(e):
                for f in t.fields:
                    if f.ftype == "text" and not f.crdt:
                        v = self.views.slot_value(e, self.views.proj.slot_of(f.facet, f.name))
                        if v is not None and v[0] == "text" and v[1]:
                            name = str(v[1])
                            break
                if name is not None:
                    break
            self.rec_names[e] = name
        return self.rec_names[e]

    def field_names(self, ref: str) -> set[str]:
        """A field filter given by name or label: the field names it stands for."""
        out = {ref}
        low = ref.lower()
        for t in self.views.tables_of(self.e):
            for f in t.fields:
                if f.label.lower() == low:
                    out.add(f.name)
        return out

    # --- the walk -----------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        ops = self._ops()
        created_in: dict[bytes, set[str]] = {}  # bundle -> facets attached with a create
        for o in ops:
            if o.t == "CreateEntity":
                created_in.setdefault(o.bundle, set())
        for o in ops:
            if o.t == "AttachFacet" and o.bundle in created_in:
                created_in[o.bundle].add(o.p["facet"])
        entries: list[dict[str, Any]] = []
        for o in ops:
            x = self._entry(o, created_in)
            if x is not None:
                entries.append(x)
        self._mark_branches()
        self._mark_existence_conflicts(entries)
        return entries

    def _base(self, o: _Op, op: str) -> dict[str, Any]:
        kind = "resolution" if o.p.get("resolves") else self._kind(o.bundle)
        return {"at": hlcmod.wall_ms(o.hlc), "actor": o.actor.hex(),
                "display_name": self.names.get(o.actor.hex()), "bundle_id": ids.to_text(o.bundle),
                "op_id": ids.to_text(o.op_id), "kind": kind, "op": op, "field": None,
                "label": None, "table": None, "old": None, "new": None, "conflict": None,
                "summary": "", "_stamp": o.stamp}

    def _who(self, x: dict[str, Any]) -> str:
        return str(x["display_name"] or x["actor"][:8])

    def _entry(self, o: _Op, created_in: dict[bytes, set[str]]) -> dict[str, Any] | None:
        t = o.t
        if t in FIELD_WRITES:
            return self._field_write(o)
        if t == "SetCRDTField":
            return self._text_write(o)
        if t in EXISTENCE:
            x = self._base(o, EXISTENCE[t])
            if t == "CreateEntity":
                facets = sorted(created_in.get(o.bundle, ()))
                x["table"] = facets[0] if facets else None
                where = f" in {self._table_label(x['table'])}" if x["table"] else ""
                x["summary"] = f"{self._who(x)} created this record{where}"
            elif t == "DeleteEntity":
                x["summary"] = f"{self._who(x)} deleted this record"
            else:
                x["summary"] = f"{self._who(x)} restored this record"
            return x
        if t in FACET_OPS:
            if t == "AttachFacet" and o.bundle in created_in:
                return None  # told by the create entry
            x = self._base(o, FACET_OPS[t])
            x["table"] = o.p["facet"]
            label = self._table_label(x["table"])
            x["summary"] = (f"{self._who(x)} added this record to {label}" if t == "AttachFacet"
                            else f"{self._who(x)} removed this record from {label}")
            return x
        if t in EDGE_OPS:
            return self._edge_op(o)
        if t in PROP_WRITES:
            return self._edge_op(o)
        return None  # merges, splits, rebalances: not shown per record

    def _field_write(self, o: _Op) -> dict[str, Any]:
        p = o.p
        facet, name = p["facet"], p["field"]
        fd = self._fdef(facet, name)
        value = p.get("value") if o.t == "SetField" else None
        x = self._base(o, "set_field" if o.t == "SetField" else "clear_field")
        x.update(field=name, label=fd.label if fd is not None else name, table=facet)
        slot = ("f", self.views.proj.slot_of(facet, name))
        w = _W(o, value, x)
        old = self._old(slot, w)
        x["old"] = _read(self.views, old)
        x["new"] = _read(self.views, value)
        self.slots.setdefault(slot, []).append(w)
        x["summary"] = self._change_summary(x, fd)
        return x

    def _old(self, slot: tuple[Any, ...], w: _W) -> list[Any] | None:
        prior = self.slots.get(slot, [])
        for i in range(len(prior) - 1, -1, -1):
            if self._seen(w, prior[i]):
                return prior[i].value
        return None

    def _text_write(self, o: _Op) -> dict[str, Any] | None:
        p = o.p
        facet, name = p["facet"], p["field"]
        slot = self.views.proj.slot_of(facet, name)
        state = self.crdt.get(slot)
        try:
            after = crdt.apply_delta(state, p["delta"])
        except crdt.CrdtError:
            return None  # inert in the projection too
        fd = self._fdef(facet, name)
        x = self._base(o, "text")
        x.update(field=name, label=fd.label if fd is not None else name, table=facet,
                 old=crdt.read_text(state) if state is not None else None,
                 new=crdt.read_text(after))
        self.crdt[slot] = after
        x["summary"] = f"{self._who(x)} edited {x['label']}"
        return x

    def _edge_op(self, o: _Op) -> dict[str, Any]:
        g = o.p["edge"]
        etype, src, dst = self.edges.get(g, (None, None, None))
        if o.t in ("CreateEdge", "CreateOrderedEdge"):
            etype, src, dst = o.p["type"], o.p["src"], o.p["dst"]
        elabel = self._edge_label(etype)
        outgoing = src in self.group
        other = dst if outgoing else src
        info: dict[str, Any] = {"id": ids.to_text(g), "type": etype, "label": elabel,
                                "direction": "out" if outgoing else "in",
                                "other": ids.to_text(other) if other is not None else None,
                                "other_name": None}
        if o.t in PROP_WRITES:
            info["other_name"] = self._rec_name(other)
            key = o.p["key"]
            value = o.p.get("value") if o.t == "SetEdgeProperty" else None
            x = self._base(o, "set_field" if o.t == "SetEdgeProperty" else "clear_field")
            x.update(field=key, label=key, edge=info)
            w = _W(o, value, x)
            slot = ("p", g, key)
            x["old"] = _read(self.views, self._old(slot, w))
            x["new"] = _read(self.views, value)
            self.slots.setdefault(slot, []).append(w)
            x["summary"] = self._change_summary(x, None) + f" on the link “{elabel}”"
            return x
        x = self._base(o, EDGE_OPS[o.t])
        x["edge"] = info
        x["_other"] = other  # named (and summarized) only if the entry is on the page: `finish`
        for key, value in sorted((o.p.get("props") or {}).items()):
            self.slots.setdefault(("p", g, key), []).append(_W(o, value, None))
        return x

    def finish(self, page: list[dict[str, Any]]) -> None:
        """Name the far ends of the page's link entries and write their summaries; drop the
        walk's private keys."""
        for x in page:
            del x["_stamp"]
            if "_other" not in x:
                continue
            info = x["edge"]
            info["other_name"] = self._rec_name(x.pop("_other"))
            who, elabel = self._who(x), info["label"]
            far = f"“{_clip(info['other_name'])}”" if info["other_name"] else "another record"
            if x["op"] == "link":
                x["summary"] = f"{who} linked this record to {far} ({elabel})"
            elif x["op"] == "unlink":
                x["summary"] = f"{who} removed the link to {far} ({elabel})"
            else:
                x["summary"] = f"{who} moved {far} in the order ({elabel})"

    def _change_summary(self, x: dict[str, Any], fd: FieldDef | None) -> str:
        who, label = self._who(x), x["label"]
        old, new = self._show(fd, x["old"]), self._show(fd, x["new"])
        if new is None and old is None:
            return f"{who} cleared {label}"
        if new is None:
            return f"{who} cleared {label} (was “{old}”)"
        if old is None:
            return f"{who} set {label} to “{new}”"
        return f"{who} changed {label} from “{old}” to “{new}”"

    def _show(self, fd: FieldDef | None, v: Any) -> str | None:
        if v is None:
            return None
        ftype = fd.ftype if fd is not None else None
        if isinstance(v, bool):
            return "Yes" if v else "No"
        if ftype == "datetime" and isinstance(v, int):
            return _datetime(v)
        if ftype == "duration" and isinstance(v, int):
            return _duration(v)
        if ftype == "enum" and fd is not None:
            for c in fd.opts.get("choices") or []:
                if isinstance(c, list) and c[0] == v:
                    return _clip(str(c[1]))
            return _clip(str(v))
        if ftype == "entity_ref" and isinstance(v, str):
            try:
                name = self._rec_name(self.views.proj.resolve(ids.from_text(v)))
            except (ValueError, TypeError):
                name = None
            return _clip(name) if name else "a record"
        if ftype == "blob_ref":
            return "a file"
        if isinstance(v, dict):
            return "a linked value"
        return _clip(str(v))

    # --- conflicts ----------------------------------------------------------------------
    def _mark_branches(self) -> None:
        """A write concurrent with a write of another value to its slot is a conflict branch;
        its status is open while it is a tip of an open conflict record. A resolution that
        lost to an earlier concurrent one is marked `rejected` (it changed nothing)."""
        for slot, writes in self.slots.items():
            rec = self._conflict_record(slot)
            open_tips = ({bytes(t[0]) for t in rec["tips"]} if rec is not None
                         and rec["status"] == "open" else set())
            rejected = {bytes(r[0]) for r in rec["rejected"]} if rec is not None else set()
            by_actor: dict[bytes, list[_W]] = {}
            for w in writes:
                by_actor.setdefault(w.actor, []).append(w)
            hlcs = {a: [w.hlc for w in ws] for a, ws in by_actor.items()}
            for w in writes:
                x = w.entry
                if x is None:
                    continue
                resolution = x["kind"] == "resolution"
                branch = self._is_branch(w, by_actor, hlcs)
                if not (branch or resolution):
                    continue
                oid = ids.from_text(x["op_id"])
                x["conflict"] = {"status": "open" if oid in open_tips else "resolved",
                                 "branch": branch, "resolution": resolution}
                if oid in rejected:  # lost to a concurrent, earlier resolution (02 §1.6)
                    x["conflict"]["rejected"] = True
                    x["summary"] += " (not applied: someone else resolved it first)"

    def _is_branch(self, w: _W, by_actor: dict[bytes, list[_W]],
                   hlcs: dict[bytes, list[bytes]]) -> bool:
        vc = self._vc(w.bundle)
        for actor, ws in by_actor.items():
            if actor == w.actor:
                continue
            # w saw everything of `actor` up to vc[actor]; the rest is unseen by w
            i = bisect.bisect_right(hlcs[actor], vc.get(actor, hlcmod.ZERO))
            for x in ws[i:]:
                if self._seen(x, w):
                    break  # a later write of this actor also saw w
                if x.value != w.value:
                    return True
        return False

    def _conflict_record(self, slot: tuple[Any, ...]) -> dict[str, Any] | None:
        if slot[0] == "f":
            owner, skey = self.e, slot[1]
        else:
            owner, skey = slot[1], "@" + slot[2]
        return self._cf(owner, skey)

    def _cf(self, owner: bytes, skey: str) -> dict[str, Any] | None:
        try:
            for (blob,) in self.conn.execute(
                "SELECT record FROM cf_records WHERE conflict_id = ?",
                (conflict_id(owner, skey),),
            ):
                rec: dict[str, Any] = cbor2.loads(blob)
                return rec
        except apsw.SQLError:  # no conflict projection on this connection
            return None
        return None

    def _mark_existence_conflicts(self, entries: list[dict[str, Any]]) -> None:
        """Deletes (and the edits or restores racing them) that are tips of a delete
        conflict, and the resolutions of one."""
        rec = self._cf(self.e, ENTITY_KEY)
        if rec is None:
            return
        tips = {bytes(t[0]) for t in rec["tips"]}
        status = rec["status"]
        for x in entries:
            oid = ids.from_text(x["op_id"])
            existence = x["op"] in ("delete", "restore")
            resolution = existence and x["kind"] == "resolution"
            if existence and (oid in tips or resolution):
                x["conflict"] = {"status": status, "branch": oid in tips,
                                 "resolution": resolution}
            elif oid in tips and x["conflict"] is None:
                x["conflict"] = {"status": status, "branch": True, "resolution": False}


def _merged_group(views: Views, e: bytes) -> list[bytes]:
    """e and every entity merged into it (their ops are this record's history too)."""
    group, todo = [e], [e]
    while todo and len(group) < REDIRECT_CAP:
        cur = todo.pop()
        for (a,) in views.conn.execute(
                "SELECT absorbed FROM redirects WHERE survivor = ?", (cur,)):
            a = bytes(a)
            if a not in group:
                group.append(a)
                todo.append(a)
    return group


def _clip(s: str | None) -> str:
    s = (s or "").replace("\n", " ")
    return s if len(s) <= MAX_SHOWN else s[:MAX_SHOWN - 1] + "…"


def _duration(ms: int) -> str:
    sign = "-" if ms < 0 else ""
    rest = abs(ms)
    h, rest = divmod(rest, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    return f"{sign}{h}:{m:02}:{s:02}" + (f".{frac:03}" if frac else "")


def _datetime(ms: int) -> str:
    import datetime as dt

    try:
        d = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return d.strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "parse_cursor", "record_history", "revision"]
