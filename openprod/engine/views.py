"""The read model: the user-facing table/record/field view over the derived state tables.

Also the lookups commands validate against (is an entity live, which facets are attached, a
slot's current value and tips). Reads go through the state projection's connection so they see
exactly what it has applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apsw
import attrs
import cbor2

from openprod.core import codec, ids, values
from openprod.core.errors import NotFound, ValidationError
from openprod.engine import crdt
from openprod.engine.state import ENTITY_KEY, StateProjection
from openprod.engine.statehash import open_conflicts


@attrs.frozen
class FieldDef:
    facet: str
    name: str
    ftype: str
    crdt: bool
    label: str
    opts: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.facet}.{self.name}"

    @property
    def choices(self) -> list[str] | None:
        ch = self.opts.get("choices")
        if ch is None:
            return None
        return [c if isinstance(c, str) else c[0] for c in ch]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "label": self.label, "type": self.ftype}
        if self.crdt:
            d["crdt"] = True
        if self.opts:
            d["options"] = {k: values.to_user(v) if k == "default" else v
                            for k, v in self.opts.items()}
        return d


@attrs.frozen
class TableDef:
    facet: str
    label: str
    module: str
    fields: tuple[FieldDef, ...]

    def field(self, ref: str) -> FieldDef:
        """A field by name, or by label (case-insensitive)."""
        for f in self.fields:
            if f.name == ref:
                return f
        low = ref.lower()
        for f in self.fields:
            if f.label.lower() == low:
                return f
        raise NotFound(f"table {self.label!r} has no field {ref!r}", table=self.facet, field=ref)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.facet, "label": self.label, "module": self.module,
            "fields": [f.to_json() for f in self.fields],
        }


class Views:
    def __init__(self, proj: StateProjection) -> None:
        self.proj = proj
        self.conn = proj.conn
        self._tables: tuple[bytes, list[TableDef]] | None = None  # (schema token, tables)

    # --- schema ----------------------------------------------------------------------------
    def tables(self) -> list[TableDef]:
        """Every table, kept while the projection's schema token is unchanged (one query)."""
        tok = self.proj.schema_token()
        c = self._tables
        if c is None or tok is None or c[0] != tok:
            built = self._read_tables()
            if tok is None:
                return built
            c = self._tables = (tok, built)
        return list(c[1])

    def _read_tables(self) -> list[TableDef]:
        fields: dict[str, list[FieldDef]] = {}
        for facet, name, ftype, is_crdt, label, opts in self.conn.execute(
            "SELECT facet, field, ftype, crdt, label, opts FROM schema_fields"
            " ORDER BY facet, def_stamp"
        ):
            fields.setdefault(facet, []).append(FieldDef(
                facet, name, ftype, bool(is_crdt), label,
                codec.decode(bytes(opts)) if opts is not None else {},
            ))
        return [
            TableDef(facet, label, module, tuple(fields.get(facet, ())))
            for facet, label, module in self.conn.execute(
                "SELECT facet, label, module FROM schema_tables ORDER BY stamp"
            )
        ]

    def table(self, ref: str) -> TableDef:
        """A table by id (`module.Table`) or label (case-insensitive)."""
        tables = self.tables()
        for t in tables:
            if t.facet == ref:
                return t
        low = ref.lower()
        for t in tables:
            if t.label.lower() == low:
                return t
        raise NotFound(f"no table {ref!r}", table=ref)

    def field_def(self, facet: str, field: str) -> FieldDef | None:
        for ftype, is_crdt, label, opts in self.conn.execute(
            "SELECT ftype, crdt, label, opts FROM schema_fields WHERE facet = ? AND field = ?",
            (facet, field),
        ):
            return FieldDef(facet, field, ftype, bool(is_crdt), label,
                            codec.decode(bytes(opts)) if opts is not None else {})
        return None

    def edge_type(self, t: str) -> dict[str, Any] | None:
        for ordered, label, props in self.conn.execute(
            "SELECT ordered, label, props FROM schema_edge_types WHERE type = ?", (t,)
        ):
            return {"type": t, "ordered": bool(ordered), "label": label,
                    "props": codec.decode(bytes(props)) if props is not None else {}}
        return None

    def edge_types(self) -> list[dict[str, Any]]:
        out = []
        for (t,) in self.conn.execute("SELECT type FROM schema_edge_types ORDER BY type"):
            et = self.edge_type(t)
            if et is not None:
                out.append(et)
        return out

    def actor_names(self) -> dict[str, str]:
        """Actor hex → display name, from every synced `actor` profile that has one."""
        return actor_names(self.conn)

    def actor_name(self, actor: bytes) -> str:
        """A person's display name from the synced `actor` profile, else 8 hex of the key."""
        for (v,) in self.conn.execute(
            "SELECT value FROM config WHERE ns = 'actor' AND key = ?", (actor.hex(),)
        ):
            if v is not None:
                prof = codec.decode(bytes(v))
                if isinstance(prof, dict) and isinstance(prof.get("display_name"), str):
                    return str(prof["display_name"])
        return actor.hex()[:8]

    # --- entities --------------------------------------------------------------------------
    def entity_row(self, e: bytes) -> tuple[bool, bool, bytes | None] | None:
        """(deleted, created, redirect) or None if no existence op is known."""
        for d, c, r in self.conn.execute(
            "SELECT deleted, created, redirect FROM entities WHERE entity = ?", (e,)
        ):
            return bool(d), bool(c), bytes(r) if r is not None else None
        return None

    def is_live(self, e: bytes) -> bool:
        row = self.entity_row(e)
        return row is not None and row[1] and not row[0] and row[2] is None

    def attached(self, e: bytes) -> list[str]:
        return [f for (f,) in self.conn.execute(
            "SELECT facet FROM facets WHERE entity = ? AND attached = 1 ORDER BY facet", (e,)
        )]

    def is_attached(self, e: bytes, facet: str) -> bool:
        for (a,) in self.conn.execute(
            "SELECT attached FROM facets WHERE entity = ? AND facet = ?", (e, facet)
        ):
            return bool(a)
        return False

    def slot_value(self, e: bytes, slot: str) -> list[Any] | None:
        for (v,) in self.conn.execute(
            "SELECT value FROM fields WHERE entity = ? AND slot = ?", (e, slot)
        ):
            return codec.decode(bytes(v)) if v is not None else None
        return None

    def crdt_state(self, e: bytes, slot: str) -> bytes | None:
        for (s,) in self.conn.execute(
            "SELECT state FROM crdt_docs WHERE entity = ? AND slot = ?", (e, slot)
        ):
            return bytes(s)
        return None

    def stored_tips(self, kind: str, owner: bytes, key: str) -> list[list[Any]] | None:
        """The tips row, None when there is none (then the register's write, if any, is the
        lone tip: `tips` gives it)."""
        for (blob,) in self.conn.execute(
            "SELECT tips FROM tips WHERE kind = ? AND owner = ? AND key = ?", (kind, owner, key)
        ):
            return list(codec.decode(bytes(blob)))
        return None

    def tips(self, kind: str, owner: bytes, key: str) -> list[list[Any]]:
        """[op_id, actor, hlc, bundle_id, value, fkey] per tip (a lone tip is the register's)."""
        for (blob,) in self.conn.execute(
            "SELECT tips FROM tips WHERE kind = ? AND owner = ? AND key = ?", (kind, owner, key)
        ):
            return list(codec.decode(bytes(blob)))
        if kind == "f":
            q = ("SELECT value, stamp, actor, bundle, fkey FROM fields"
                 " WHERE entity = ? AND slot = ?")
        elif kind == "p":
            q = ("SELECT value, stamp, actor, bundle, NULL FROM edge_props"
                 " WHERE edge = ? AND key = ?")
        else:
            return []
        for v, st, actor, bundle, fkey in self.conn.execute(q, (owner, key)):
            st = bytes(st)
            return [[st[12:], bytes(actor), st[:12], bytes(bundle),
                     bytes(v) if v is not None else None, fkey]]
        return []

    def is_conflicted(self, e: bytes, slot: str) -> bool:
        return open_conflicts(self.tips("f", e, slot))

    def existence_tips(self, e: bytes) -> list[list[Any]]:
        return self.tips("e", e, ENTITY_KEY)

    # --- edges -----------------------------------------------------------------------------
    def edge(self, edge: bytes) -> dict[str, Any] | None:
        for t, s, d, deleted, idx in self.conn.execute(
            "SELECT type, src, dst, deleted, idx FROM edges WHERE edge = ?", (edge,)
        ):
            if t is None:
                return None
            return {"edge": edge, "type": t, "src": bytes(s), "dst": bytes(d),
                    "deleted": bool(deleted), "index": idx}
        return None

    def live_edges_of(self, e: bytes) -> list[bytes]:
        """Edges touching e that are not deleted (visible or hidden by the far end)."""
        return sorted({bytes(g) for (g,) in self.conn.execute(
            "SELECT edge FROM edges WHERE (src = ? OR dst = ?) AND deleted = 0"
            " AND type IS NOT NULL",
            (e, e),
        )})

    def edge_props(self, edge: bytes) -> dict[str, Any]:
        """Property values; where the conflict projection holds a record for a property, its
        display value is shown (spec 02 §1.5), like fields."""
        raw = {str(k): codec.decode(bytes(v)) if v is not None else None
               for k, v in self.conn.execute(
                   "SELECT key, value FROM edge_props WHERE edge = ?", (edge,))}
        for skey, (display, _open) in (self.conflict_displays(edge, "property") or {}).items():
            raw[skey[1:]] = display
        return {k: values.to_user(v) for k, v in sorted(raw.items()) if v is not None}

    def prop_value(self, edge: bytes, key: str) -> list[Any] | None:
        for (v,) in self.conn.execute(
            "SELECT value FROM edge_props WHERE edge = ? AND key = ?", (edge, key)
        ):
            return codec.decode(bytes(v)) if v is not None else None
        return None

    def edges(self, entity: bytes | None = None, etype: str | None = None,
              direction: str = "both") -> list[dict[str, Any]]:
        """Visible edges (both ends live), ordered ones by (index, edge id)."""
        where = ["g.deleted = 0", "g.type IS NOT NULL"]
        args: list[Any] = []
        if entity is not None:
            if direction == "out":
                where.append("g.src = ?")
                args.append(entity)
            elif direction == "in":
                where.append("g.dst = ?")
                args.append(entity)
            else:
                where.append("(g.src = ? OR g.dst = ?)")
                args += [entity, entity]
        if etype is not None:
            where.append("g.type = ?")
            args.append(etype)
        out = []
        for g, t, s, d, idx in self.conn.execute(
            "SELECT g.edge, g.type, g.src, g.dst, g.idx FROM edges g WHERE "
            + " AND ".join(where) + " ORDER BY g.dst, g.type, g.idx, g.edge", args,
        ):
            s, d = bytes(s), bytes(d)
            if self.is_live(s) and self.is_live(d):
                out.append({
                    "id": ids.to_text(bytes(g)), "type": t, "src": ids.to_text(s),
                    "dst": ids.to_text(d), "index": idx, "props": self.edge_props(bytes(g)),
                })
        return out

    def ordered_scope(self, dst: bytes, etype: str) -> list[tuple[str, bytes]]:
        """(index, edge) of the live ordered edges in scope (dst, type), in order."""
        return [(i, bytes(g)) for i, g in self.conn.execute(
            "SELECT idx, edge FROM edges WHERE dst = ? AND type = ? AND deleted = 0"
            " AND idx IS NOT NULL ORDER BY idx, edge", (dst, etype),
        )]

    # --- records ---------------------------------------------------------------------------
    def conflict_displays(self, owner: bytes, kind: str,
                          ) -> dict[str, tuple[Any, bool]] | None:
        """skey -> (value shown, open?) for every conflict record of owner (an entity's fields
        or an edge's properties). Records are recomputed on every write to their field, so their
        display value is right whether open or resolved: it skips rejected resolutions (spec 02
        §1.6) and shows the accepted resolution while reopened (§1.5), which the LWW register
        alone would not. None where the conflict projection has no tables on this connection."""
        try:
            rows = list(self.conn.execute(
                "SELECT skey, status, record FROM cf_records WHERE entity = ? AND kind = ?",
                (owner, kind),
            ))
        except apsw.SQLError:
            return None
        out: dict[str, tuple[Any, bool]] = {}
        for skey, status, rec in rows:
            display = cbor2.loads(rec)["display"]
            out[str(skey)] = (codec.decode(bytes(display)) if display is not None else None,
                              status == "open")
        return out

    def record_values(self, e: bytes, table: TableDef) -> tuple[dict[str, Any], list[str]]:
        """Field values and the names of conflicted fields. Conflict status and the value shown
        while open (LWW, or the accepted resolution once reopened: spec 02 §1.5) come from the
        conflict projection when it exists, else from the state projection's tips."""
        vals: dict[str, Any] = {}
        conflicts: list[str] = []
        shown = self.conflict_displays(e, "field")
        for f in table.fields:
            slot = self.proj.slot_of(f.facet, f.name)
            if f.crdt:
                st = self.crdt_state(e, slot)
                vals[f.name] = crdt.read_text(st) if st is not None else None
                continue
            v = self.slot_value(e, slot)
            if shown is None:
                conflicted = self.is_conflicted(e, slot)
            elif slot in shown:
                v, conflicted = shown[slot]
            else:
                conflicted = False
            vals[f.name] = _read(self, v)
            if conflicted:
                conflicts.append(f.name)
        return vals, conflicts

    def record(self, e: bytes, table: TableDef) -> dict[str, Any]:
        vals, conflicts = self.record_values(e, table)
        return {"id": ids.to_text(e), "table": table.facet, "values": vals,
                "conflicts": conflicts}

    def record_ids(self, facet: str) -> list[bytes]:
        return [bytes(e) for (e,) in self.conn.execute(
            "SELECT f.entity FROM facets f JOIN entities n ON n.entity = f.entity"
            " WHERE f.facet = ? AND f.attached = 1 AND n.created = 1 AND n.deleted = 0"
            " AND n.redirect IS NULL ORDER BY f.entity", (facet,),
        )]

    def records(self, table: TableDef) -> list[dict[str, Any]]:
        return [self.record(e, table) for e in self.record_ids(table.facet)]

    def get_record(self, e: bytes) -> dict[str, Any]:
        """A record with the values of every table it is in (merged ids read the survivor)."""
        e = self.proj.resolve(e)
        if not self.is_live(e):
            raise NotFound(f"no record {ids.to_text(e)}", entity_id=ids.to_text(e))
        tables = self.tables_of(e)
        vals: dict[str, Any] = {}
        conflicts: list[str] = []
        for t in tables:
            v, c = self.record_values(e, t)
            vals.update(v)
            conflicts += c
        return {"id": ids.to_text(e), "tables": [t.facet for t in tables], "values": vals,
                "conflicts": conflicts}

    def list_edges(self, e: bytes | None = None, etype: str | None = None,
                   direction: str = "both") -> list[dict[str, Any]]:
        if direction not in ("both", "in", "out"):
            raise ValidationError("direction must be both, in or out", direction=direction)
        return self.edges(None if e is None else self.proj.resolve(e), etype, direction)

    def tables_of(self, e: bytes) -> list[TableDef]:
        att = set(self.attached(e))
        return [t for t in self.tables() if t.facet in att]


def _read(views: Views, v: list[Any] | None) -> Any:
    """Resolve one `ref` hop (a ref to a ref reads empty) and convert to the user form."""
    if v is None:
        return None
    if v[0] == "ref":
        target, key = v[1]
        facet, field = values.split_field_key(key)
        tv = views.slot_value(views.proj.resolve(target), views.proj.slot_of(facet, field))
        if tv is None or tv[0] == "ref":
            return None
        return values.to_user(tv)
    return values.to_user(v)


def as_ids(xs: Iterable[bytes]) -> list[str]:
    return [ids.to_text(x) for x in xs]


def actor_names(conn: Any) -> dict[str, str]:
    """Actor hex → display name from the synced `actor` profiles of a state database
    (a profile that does not decode, or names nobody, is skipped)."""
    out: dict[str, str] = {}
    for key, value in conn.execute("SELECT key, value FROM config WHERE ns = 'actor'"):
        if value is None:
            continue
        try:
            v = codec.decode(bytes(value))
        except Exception:
            continue
        if isinstance(v, dict) and isinstance(v.get("display_name"), str):
            out[str(key)] = v["display_name"]
    return out
