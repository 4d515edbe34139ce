"""On-change triggers (spec 04 §7.4): which enabled scripts a local canonical commit fires.

Owns `Trigger` (an enabled on-change script's watch, compiled against the schema) and
`match`: given the commit's payloads and the states before and after it, the `changes` each
trigger sees — `field_changed` (a slot change counts for every mapped field of the watched
table the record is in), `record_added`, `record_removed` — filtered by `when` (after-state;
before-state on removal). One run per (script, bundle) with all its changes. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from openprod.core import ids
from openprod.core import ops as O
from openprod.engine import query as querymod
from openprod.engine import rules as rulemod
from openprod.engine.manifest import EVENTS
from openprod.engine.views import Views

MAX_DEPTH = 1000


@attrs.frozen
class Trigger:
    script: str
    table: str
    fields: frozenset[str]  # field names of `table`; empty = every field
    events: frozenset[str]
    when: querymod.Cond | None


def compile_trigger(script: str, table: str, fields: Iterable[str], events: Iterable[str],
                    when: Mapping[str, Any] | None, views: Views) -> Trigger | None:
    """None while the watched table does not exist here."""
    try:
        t = views.table(table)
    except Exception:
        return None
    cond = None
    if when is not None:
        cond = querymod.check({"table": t.facet, "where": when}, views).where
    return Trigger(script, t.facet, frozenset(fields), frozenset(events) or frozenset(EVENTS),
                   cond)


def _when(tr: Trigger, e: bytes, view: rulemod.Layer) -> bool:
    if tr.when is None:
        return True
    return querymod.Evaluator(rulemod._Reader(view)).test(tr.when, e,
                                                          view.field_values(e, tr.table))


def match(triggers: Sequence[Trigger], payloads: Sequence[O.Payload],
          before: rulemod.Layer, after: rulemod.Layer) -> dict[str, list[dict[str, Any]]]:
    """script -> its changes (sorted by entity, field), for the triggers this commit fires."""
    schema = after.schema
    out: dict[str, dict[tuple[str, str, str], dict[str, Any]]] = {}
    for tr in triggers:
        changes: dict[tuple[str, str, str], dict[str, Any]] = {}
        slots = {slot: name for name, slot in schema.slots_of(tr.table)
                 if not tr.fields or name in tr.fields}
        for p in payloads:
            if isinstance(p, O.SetField | O.ClearField | O.SetCRDTField):
                if "field_changed" not in tr.events:
                    continue
                slot = schema.slot_of(p.facet, p.field)
                name = slots.get(slot)
                if name is None or not after.is_member(p.e, tr.table):
                    continue
                old = before.field_values(p.e, tr.table).get(name) \
                    if before.is_member(p.e, tr.table) else None
                new = after.field_values(p.e, tr.table).get(name)
                if old == new or not _when(tr, p.e, after):
                    continue
                eid = ids.to_text(p.e)
                changes[(eid, name, "field_changed")] = {
                    "event": "field_changed", "entity_id": eid, "table": tr.table,
                    "field": name, "old": old, "new": new}
            elif isinstance(p, O.AttachFacet | O.DetachFacet | O.DeleteEntity):
                if isinstance(p, O.AttachFacet | O.DetachFacet) and p.facet != tr.table:
                    continue
                was, now = before.is_member(p.e, tr.table), after.is_member(p.e, tr.table)
                if was == now:
                    continue
                event = "record_added" if now else "record_removed"
                if event not in tr.events or not _when(tr, p.e, after if now else before):
                    continue
                eid = ids.to_text(p.e)
                changes[(eid, "", event)] = {"event": event, "entity_id": eid,
                                             "table": tr.table}
        if changes:
            out[tr.script] = changes
    return {s: [c[k] for k in sorted(c)] for s, c in sorted(out.items())}
