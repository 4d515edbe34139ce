"""Fork (spec 03 §2): a workspace's current canonical state re-authored as fresh ops.

Owns the reading side of a fork: what of the derived state is copied and as which payloads.
`Workspace.fork` seals them into `import` bundles of the new workspace. Copied: the schema
(tables, fields with type/options/CRDT flag, edge types), field mappings, the `module`, `rule`
and `script` config documents, every live entity
under the same id with its attached facets and each field's *displayed* value (for an open
conflict the value the conflict projection shows), CRDT text as one full-state update, and every
visible edge under the same id with its index and displayed properties. Not copied: history,
other actors' profiles, lifecycle config (keys, admits, recoveries, forks), overlays, undo,
redirects and merge exceptions (absorbed ids are not live; references to them are resolved to
their survivor instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from openprod.core import codec, ids, values
from openprod.core import ops as O
from openprod.engine import crdt
from openprod.engine.conflicts import PROP_PREFIX
from openprod.engine.views import TableDef, Views

# Bundle shape of a fork: whole records per bundle, cut at this many ops or (estimated) bytes,
# far below the 100 000-op / 64 MiB bundle caps so catch-up pages stay small.
BUNDLE_OPS = 2000
BUNDLE_BYTES = 4 << 20


def schema_ops(views: Views) -> list[O.Payload]:
    """Tables and their fields (in display order), edge types, mapping decisions, then the
    module, rule and script documents."""
    out: list[O.Payload] = []
    for t in views.tables():
        out.append(O.DefineTable(t.facet, t.label))
        for f in t.fields:
            out.append(O.DefineField(f.facet, f.name, f.ftype, f.label,
                                     crdt=True if f.crdt else None,
                                     opts=dict(f.opts) if f.opts else None))
    for et in views.edge_types():
        out.append(O.DefineEdgeType(et["type"], et["ordered"], et["label"],
                                    props=dict(et["props"]) if et["props"] else None))
    # Confirmed pairs rebuild the same slot groups; rejected ones keep suggestions hidden.
    for key_a, key_b, confirmed in views.conn.execute(
            "SELECT key_a, key_b, confirmed FROM mappings ORDER BY key_a, key_b"):
        fa, na = values.split_field_key(key_a)
        fb, nb = values.split_field_key(key_b)
        cls = O.ConfirmFieldMapping if confirmed else O.RejectFieldMapping
        out.append(cls(fa, na, fb, nb))
    # The documents that describe the data (adopted modules, rules, workspace scripts, blob
    # metadata) travel with it; profiles and lifecycle config do not (the fork has its own
    # owner and members).
    for ns, key, raw in views.conn.execute(
            "SELECT ns, key, value FROM config WHERE ns IN ('module', 'rule', 'script', 'blob')"
            " AND value IS NOT NULL ORDER BY ns, key"):
        out.append(O.PutConfig(str(ns), str(key), codec.decode(bytes(raw))))
    return out


def live_entities(views: Views) -> list[bytes]:
    return [bytes(e) for (e,) in views.conn.execute(
        "SELECT entity FROM entities WHERE created = 1 AND deleted = 0 AND redirect IS NULL"
        " ORDER BY entity")]


def record_ops(views: Views, e: bytes, tables: Mapping[str, TableDef]) -> list[O.Payload]:
    """CreateEntity, its attached facets and one write per non-empty slot (displayed value)."""
    out: list[O.Payload] = [O.CreateEntity(e)]
    shown = views.conflict_displays(e, "field") or {}
    written: set[str] = set()
    for facet in views.attached(e):
        out.append(O.AttachFacet(e, facet))
        t = tables.get(facet)
        if t is None:  # a facet whose table is not defined (yet): no fields to read
            continue
        for f in t.fields:
            slot = views.proj.slot_of(f.facet, f.name)
            if slot in written:  # mapped fields share one slot: write it once
                continue
            written.add(slot)
            if f.crdt:
                state = views.crdt_state(e, slot)
                text = crdt.read_text(state) if state is not None else ""
                if text:  # a fresh document: the text without the source's edit history
                    out.append(O.SetCRDTField(e, f.facet, f.name,
                                              crdt.delta_for_replace(None, text)))
                continue
            v = shown[slot][0] if slot in shown else views.slot_value(e, slot)
            if v is not None:
                out.append(O.SetField(e, f.facet, f.name, resolve_refs(views, v)))
    return out


def resolve_refs(views: Views, v: list[Any]) -> list[Any]:
    """Entity references point at the survivor (redirects are not copied)."""
    if v[0] == "entity_ref":
        return ["entity_ref", views.proj.resolve(v[1])]
    if v[0] == "ref":
        target, key = v[1]
        return ["ref", [views.proj.resolve(target), key]]
    return v


def edge_ops(views: Views) -> Iterator[O.Payload]:
    """Every visible edge (both ends live) with its index and displayed properties."""
    for g, etype, src, dst, idx in list(views.conn.execute(
            "SELECT edge, type, src, dst, idx FROM edges WHERE deleted = 0 AND type IS NOT NULL"
            " ORDER BY dst, type, idx, edge")):
        g, src, dst = bytes(g), bytes(src), bytes(dst)
        if not (views.is_live(src) and views.is_live(dst)):
            continue
        props = edge_props(views, g)
        if idx is not None:
            yield O.CreateOrderedEdge(g, etype, src, dst, idx, props=props or None)
        else:
            yield O.CreateEdge(g, etype, src, dst, props=props or None)


def edge_props(views: Views, g: bytes) -> dict[str, Any]:
    raw: dict[str, Any] = {
        str(k): codec.decode(bytes(v)) if v is not None else None
        for k, v in views.conn.execute("SELECT key, value FROM edge_props WHERE edge = ?", (g,))}
    for skey, (display, _open) in (views.conflict_displays(g, "property") or {}).items():
        raw[skey[len(PROP_PREFIX):]] = display
    return {k: resolve_refs(views, v) for k, v in sorted(raw.items()) if v is not None}


def _size(p: O.Payload) -> int:
    """A cheap upper-ish estimate of an op body's size (for cutting bundles)."""
    if isinstance(p, O.SetCRDTField):
        return 160 + len(p.delta)
    if isinstance(p, O.SetField):
        data = p.value[1]
        if isinstance(data, str):
            return 160 + len(data.encode())
        if isinstance(data, bytes):
            return 160 + len(data)
    return 200


def pack(groups: Iterable[Sequence[O.Payload]], max_ops: int = BUNDLE_OPS,
         max_bytes: int = BUNDLE_BYTES) -> Iterator[list[O.Payload]]:
    """Whole groups (one record's ops, or one op) per bundle, cut at max_ops / max_bytes."""
    cur: list[O.Payload] = []
    size = 0
    for g in groups:
        gsize = sum(_size(p) for p in g)
        if cur and (len(cur) + len(g) > max_ops or size + gsize > max_bytes):
            yield cur
            cur, size = [], 0
        cur.extend(g)
        size += gsize
    if cur:
        yield cur


def conflict_report(conflicts: Iterable[Mapping[str, Any]], records: set[bytes],
                    edges: set[bytes]) -> list[dict[str, Any]]:
    """The source's open conflicts (`list_conflicts` records): the value the fork got
    (`copied_value`, the displayed one) and the competing values it did not."""
    out = []
    for c in conflicts:
        owner = ids.from_text(c["entity_id"])
        copied = owner in (edges if c["kind"] == "property" else records)
        item = {"conflict_id": c["conflict_id"], "kind": c["kind"],
                "entity_id": c["entity_id"], "field": c["field"],
                "field_label": c.get("field_label"), "copied": copied,
                "copied_value": c.get("display_value") if copied else None,
                "values": [t["value"] for t in c["tips"]]}
        if "property" in c:
            item["property"] = c["property"]
        out.append(item)
    return out
