"""Words for an undo or redo step (spec 05 J13: "Tooltips name the step — Undo: set Cue 42 ·
time").

Owns `describe(ops, views)`: a short phrase for the change set an undo/redo step would revert
or re-apply — `set Cue 42 · Time`, `add a record to Cues`, `delete 3 records`, `edit 6 cells`,
`link Cue 42 to Main` — read against the current state (names as they are now). Pure: reads
the projection through `Views` only.
"""

from __future__ import annotations

from collections.abc import Sequence

from openprod.core import ops as O
from openprod.engine.views import Views

MAX_NAME = 40


def record_name(views: Views, e: bytes) -> str | None:
    """The record's name as the grid shows it: its first non-empty text value."""
    try:
        e = views.proj.resolve(e)
        for t in views.tables_of(e):
            vals, _ = views.record_values(e, t)
            for f in t.fields:
                v = vals.get(f.name)
                if f.ftype == "text" and isinstance(v, str) and v.strip():
                    name = v.strip().split("\n")[0]
                    return name if len(name) <= MAX_NAME else name[:MAX_NAME - 1] + "…"
    except Exception:  # a record gone for good has no name any more: the phrase goes without
        return None
    return None


def _table_label(views: Views, facet: str) -> str:
    try:
        return views.table(facet).label
    except Exception:
        return facet


def _plural(n: int, one: str, many: str) -> str:
    return f"1 {one}" if n == 1 else f"{n} {many}"


def describe(ops: Sequence[O.Payload], views: Views) -> str:
    """A phrase naming what these ops change, for "Undo: …" / "Redo: …"."""
    created = [p for p in ops if isinstance(p, O.CreateEntity)]
    deleted = [p for p in ops if isinstance(p, O.DeleteEntity)]
    restored = [p for p in ops if isinstance(p, O.RestoreEntity)]
    cells = {(p.e, p.facet, p.field) for p in ops
             if isinstance(p, (O.SetField, O.ClearField, O.SetCRDTField))}
    made = [p for p in ops if isinstance(p, (O.CreateEdge, O.CreateOrderedEdge))]
    edges = [p for p in ops if isinstance(p, (O.CreateEdge, O.CreateOrderedEdge, O.DeleteEdge,
                                              O.RestoreEdge, O.SetEdgeProperty,
                                              O.ClearEdgeProperty))]
    moves = [p for p in ops if isinstance(p, O.MoveOrderedEdge)]
    configs = [p for p in ops if isinstance(p, (O.PutConfig, O.DeleteConfig))]
    if created:
        facets = [p.facet for p in ops if isinstance(p, O.AttachFacet)]
        where = f" to {_table_label(views, facets[0])}" if facets else ""
        if len(created) == 1:
            name = record_name(views, created[0].e)
            return f"add {name}{where}" if name else f"add a record{where}"
        return f"add {len(created)} records{where}"
    if deleted:
        if len(deleted) == 1:
            name = record_name(views, deleted[0].e)
            return f"delete {name}" if name else "delete a record"
        return f"delete {len(deleted)} records"
    if restored:
        if len(restored) == 1:
            name = record_name(views, restored[0].e)
            return f"restore {name}" if name else "restore a record"
        return f"restore {len(restored)} records"
    if len(cells) == 1:
        ((e, facet, field),) = cells
        fd = views.field_def(facet, field)
        label = fd.label if fd is not None else field
        name = record_name(views, e)
        if name is None:
            return f"set {label}"
        return f"set {name} · {label}"
    if cells:
        records = {e for e, _, _ in cells}
        if len(records) == 1:
            name = record_name(views, next(iter(records)))
            if name:
                return f"edit {_plural(len(cells), 'field', 'fields')} of {name}"
        return f"edit {_plural(len(cells), 'cell', 'cells')}"
    if moves:
        return "move a row" if len(moves) == 1 else f"move {len(moves)} rows"
    if edges:
        if len(edges) == 1 and made:
            a, b = record_name(views, made[0].src), record_name(views, made[0].dst)
            if a and b:
                return f"link {a} to {b}"
            return "add a link"
        if len(edges) == 1:
            return "remove a link"
        return f"change {len(edges)} links"
    if any(isinstance(p, (O.AttachFacet, O.DetachFacet)) for p in ops):
        return "change which tables records are in"
    if configs:
        return "change the workspace settings"
    return "the last change"

