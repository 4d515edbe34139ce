"""Per-actor undo/redo at bundle level (spec 02 §3): entries, pre-images, inverses, skip check.

The stacks live in memory (max 100 entries, cleared on restart). Undo and redo each emit one new
signed bundle; history never shrinks. A bundle is skipped, not undone, when another actor touched
something it changed without having been seen by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from openprod.core import codec, ids
from openprod.core import hlc as hlcmod
from openprod.core import ops as O
from openprod.core.errors import NotFound
from openprod.engine.views import Views

MAX_ENTRIES = 100
NOT_UNDOABLE = frozenset([
    "SetCRDTField", "ConfirmFieldMapping", "RejectFieldMapping", "MergeEntities", "SplitEntity",
    "DefineTable", "DefineField", "DefineEdgeType", "CreateWorkspace", "RecoverOwnership",
    "PutConfig", "DeleteConfig", "RebalanceOrderedEdges",
])


@attrs.frozen
class Entry:
    bundle_id: bytes
    hlc: bytes
    causal_vc: dict[bytes, bytes]
    ops: tuple[O.Payload, ...]
    pre: tuple[Any, ...]  # one pre-image per op (previous value/index), or None


@attrs.frozen
class RedoEntry:
    original: Entry
    undo_bundle: bytes
    undo_hlc: bytes
    undo_vc: dict[bytes, bytes]
    undo_ops: tuple[O.Payload, ...]


@attrs.frozen
class UndoResult:
    status: str  # applied | skipped | empty
    bundle_id: bytes | None = None
    skipped: list[dict[str, Any]] = attrs.field(factory=list)
    edges_not_restored: list[bytes] = attrs.field(factory=list)
    can_undo: bool = False
    can_redo: bool = False
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "bundle_id": ids.to_text(self.bundle_id) if self.bundle_id else None,
            "skipped": self.skipped,
            "edges_not_restored": [ids.to_text(e) for e in self.edges_not_restored],
            "can_undo": self.can_undo, "can_redo": self.can_redo, "seq": self.seq,
        }


def undoable(payloads: Sequence[O.Payload]) -> bool:
    return any(p.t not in NOT_UNDOABLE for p in payloads)


def preimage(views: Views, payloads: Sequence[O.Payload]) -> tuple[Any, ...]:
    """What each op overwrites, read before the bundle is appended."""
    out: list[Any] = []
    proj = views.proj
    for p in payloads:
        if isinstance(p, O.SetField | O.ClearField):
            out.append(views.slot_value(proj.resolve(p.e), proj.slot_of(p.facet, p.field)))
        elif isinstance(p, O.SetEdgeProperty | O.ClearEdgeProperty):
            out.append(views.prop_value(p.edge, p.key))
        elif isinstance(p, O.MoveOrderedEdge):
            info = views.edge(p.edge)
            out.append(info["index"] if info else None)
        else:
            out.append(None)
    return tuple(out)


def _entity_of(p: O.Payload) -> bytes | None:
    return getattr(p, "e", None)


def inverse(views: Views, entry: Entry) -> tuple[list[O.Payload], list[bytes]]:
    """The inverse ops of an entry, in reverse order, and the cascade edges left deleted."""
    created = {p.e for p in entry.ops if isinstance(p, O.CreateEntity)}
    out: list[O.Payload] = []
    not_restored: list[bytes] = []
    for p, pre in reversed(list(zip(entry.ops, entry.pre, strict=True))):
        e = _entity_of(p)
        if e in created and not isinstance(p, O.CreateEntity):
            continue  # deleting the entity undoes everything done to it in this bundle
        if isinstance(p, O.SetField):
            out.append(O.SetField(p.e, p.facet, p.field, pre) if pre is not None
                       else O.ClearField(p.e, p.facet, p.field))
        elif isinstance(p, O.ClearField):
            if pre is not None:
                out.append(O.SetField(p.e, p.facet, p.field, pre))
        elif isinstance(p, O.CreateEntity | O.RestoreEntity):  # redo restores what undo deleted
            out.append(O.DeleteEntity(p.e, views.live_edges_of(p.e)))
        elif isinstance(p, O.DeleteEntity):
            out.append(O.RestoreEntity(p.e))
            for edge in p.cascade:
                if _restorable(views, edge, entry.bundle_id, p.e):
                    out.append(O.RestoreEdge(edge))
                else:
                    not_restored.append(edge)
        elif isinstance(p, O.AttachFacet):
            out.append(O.DetachFacet(p.e, p.facet))
        elif isinstance(p, O.DetachFacet):
            out.append(O.AttachFacet(p.e, p.facet))
        elif isinstance(p, O.CreateEdge | O.CreateOrderedEdge | O.RestoreEdge):
            out.append(O.DeleteEdge(p.edge))
        elif isinstance(p, O.DeleteEdge):
            info = views.edge(p.edge)
            if info and views.is_live(info["src"]) and views.is_live(info["dst"]):
                out.append(O.RestoreEdge(p.edge))
            else:
                not_restored.append(p.edge)
        elif isinstance(p, O.SetEdgeProperty):
            out.append(O.SetEdgeProperty(p.edge, p.key, pre) if pre is not None
                       else O.ClearEdgeProperty(p.edge, p.key))
        elif isinstance(p, O.ClearEdgeProperty):
            if pre is not None:
                out.append(O.SetEdgeProperty(p.edge, p.key, pre))
        elif isinstance(p, O.MoveOrderedEdge) and pre is not None:
            out.append(O.MoveOrderedEdge(p.edge, pre))
    return _restore_order(out), not_restored


def _restore_order(out: list[O.Payload]) -> list[O.Payload]:
    """RestoreEntity before the RestoreEdges and writes that need the entity live."""
    first = [p for p in out if isinstance(p, O.RestoreEntity)]
    return first + [p for p in out if not isinstance(p, O.RestoreEntity)]


def _restorable(views: Views, edge: bytes, bundle_id: bytes, e: bytes) -> bool:
    """Still deleted by this bundle's op, and the far end is live."""
    row = list(views.conn.execute(
        "SELECT g.src, g.dst, g.deleted, g.dstamp FROM edges g WHERE g.edge = ?", (edge,)
    ))
    if not row:
        return False
    src, dst, deleted, dstamp = row[0]
    if not deleted:
        return False
    by = list(views.conn.execute(
        "SELECT bundle_id FROM ops WHERE op_id = ? AND hlc = ?",
        (bytes(dstamp)[12:], bytes(dstamp)[:12]),
    ))
    if not by or bytes(by[0][0]) != bundle_id:
        return False
    far = bytes(dst) if bytes(src) == e else bytes(src)
    return views.is_live(far)


def redo_ops(views: Views, entry: Entry) -> list[O.Payload]:
    """Re-apply the original effects, adapted to the current state (spec 02 §3.3)."""
    out: list[O.Payload] = []
    for p in entry.ops:
        if isinstance(p, O.CreateEntity):
            out.append(O.RestoreEntity(p.e))
            for facet in [q.facet for q in entry.ops
                          if isinstance(q, O.AttachFacet) and q.e == p.e]:
                if not views.is_attached(p.e, facet):
                    out.append(O.AttachFacet(p.e, facet))
        elif isinstance(p, O.AttachFacet) and any(
            isinstance(q, O.CreateEntity) and q.e == p.e for q in entry.ops
        ):
            continue  # handled with the RestoreEntity above
        elif isinstance(p, O.CreateEdge | O.CreateOrderedEdge):
            out.append(O.RestoreEdge(p.edge))
        elif isinstance(p, O.DeleteEntity):
            out.append(O.DeleteEntity(p.e, views.live_edges_of(p.e)))
        elif p.t not in NOT_UNDOABLE:
            out.append(p)
    return out


def touched(ops: Sequence[O.Payload]) -> tuple[dict[bytes, set[str]], set[bytes], set[bytes]]:
    """(entity -> touched field keys, wholly touched entities, touched edges)."""
    fields: dict[bytes, set[str]] = {}
    whole: set[bytes] = set()
    edges: set[bytes] = set()
    for p in ops:
        if isinstance(p, O.SetField | O.ClearField):
            fields.setdefault(p.e, set()).add(f"{p.facet}.{p.field}")
        elif isinstance(p, O.CreateEntity | O.DeleteEntity | O.RestoreEntity):
            whole.add(p.e)
        elif isinstance(p, O.AttachFacet | O.DetachFacet):
            fields.setdefault(p.e, set()).add("$facet:" + p.facet)
        elif hasattr(p, "edge"):
            edges.add(p.edge)
    return fields, whole, edges


def skip_check(
    views: Views, me: bytes, bundle_hlc: bytes, bundle_vc: dict[bytes, bytes],
    ops: Sequence[O.Payload],
) -> list[dict[str, Any]]:
    """Ops by other actors on touched items that the bundle had not seen (spec 02 §3.2).

    Each skipped item is reported once per actor as `{entity_id, field, label, actor}`: `field`
    is the field's name as this bundle wrote it (the other actor's, for a field of an entity the
    bundle created) and `label` its display label; existence is `"$entity"`, table membership
    `"$table:<table id>"` (label = the table's label), an edge `"$edge"` (entity_id = the edge).
    """
    fields, whole, edges = touched(ops)
    proj = views.proj
    out: list[dict[str, Any]] = []
    seen_keys: set[tuple[bytes, str, bytes]] = set()

    def unseen(actor: bytes, h: bytes) -> bool:
        return bundle_vc.get(actor, hlcmod.ZERO) < h

    for e in sorted(set(fields) | whole):
        slots = {_slot(proj, k): k for k in fields.get(e, set()) if not k.startswith("$")}
        facets = {k[7:] for k in fields.get(e, set()) if k.startswith("$facet:")}
        for actor, h, t, body in views.conn.execute(
            "SELECT actor, hlc, t, body FROM ops WHERE entity = ? AND actor != ?"
            " ORDER BY hlc, op_id", (e, me)
        ):
            actor, h = bytes(actor), bytes(h)
            if not unseen(actor, h):
                continue
            p = codec.decode(bytes(body))["p"]
            hit: str | None = None  # the item's key: a slot, "$entity" or "$facet:<facet>"
            if "field" in p:
                slot = _slot(proj, f"{p['facet']}.{p['field']}")
                if e in whole or (t in ("SetField", "ClearField") and slot in slots):
                    hit = slot
            elif t in ("AttachFacet", "DetachFacet"):
                if e in whole or p["facet"] in facets:
                    hit = "$facet:" + p["facet"]
            elif e in whole or t in ("DeleteEntity", "RestoreEntity"):
                hit = "$entity"
            if hit is not None and (e, hit, actor) not in seen_keys:
                seen_keys.add((e, hit, actor))
                field, label = _describe(views, hit, slots.get(hit) or
                                         f"{p.get('facet')}.{p.get('field')}")
                out.append({"entity_id": ids.to_text(e), "field": field, "label": label,
                            "actor": actor.hex()})
    for g in sorted(edges):
        for actor, h in views.conn.execute(
            "SELECT actor, hlc FROM ops WHERE entity = ? AND actor != ?", (g, me)
        ):
            if unseen(bytes(actor), bytes(h)) and (g, "$edge", bytes(actor)) not in seen_keys:
                seen_keys.add((g, "$edge", bytes(actor)))
                out.append({"entity_id": ids.to_text(g), "field": "$edge", "label": None,
                            "actor": bytes(actor).hex()})
    return out


def _describe(views: Views, hit: str, key: str) -> tuple[str, str | None]:
    """(field, label) for a skipped item: a field's name and label, or a `$` pseudo-field."""
    if hit == "$entity":
        return hit, None
    if hit.startswith("$facet:"):
        facet = hit[7:]
        try:
            return "$table:" + facet, views.table(facet).label
        except NotFound:
            return "$table:" + facet, None
    facet, _, name = key.rpartition(".")
    fd = views.field_def(facet, name)
    return name, fd.label if fd is not None else None


def _slot(proj: Any, key: str) -> str:
    facet, _, field = key.rpartition(".")
    return str(proj.slot_of(facet, field))


class UndoStack:
    """The in-memory undo and redo stacks of the local actor."""

    def __init__(self) -> None:
        self.undo: list[Entry] = []
        self.redo: list[RedoEntry] = []

    def push(self, entry: Entry) -> None:
        self.undo.append(entry)
        if len(self.undo) > MAX_ENTRIES:
            del self.undo[0]
