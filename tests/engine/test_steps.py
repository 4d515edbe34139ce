"""Words for undo/redo steps (spec 05 J13 "Undo: set Cue 42 · time"): `steps.describe` on the
real undo stack of a workspace, for each kind of step a user makes."""

from __future__ import annotations

from openprod.engine import steps
from tests.helpers import Net, Peer

FIELDS = [{"label": "Cue", "name": "cue"}, {"label": "Time", "name": "time"},
          {"label": "Page", "name": "page", "type": "integer"}]


def _top(p: Peer) -> str:
    return steps.describe(p.undo_stack.undo[-1].ops, p.views)


def _redo(p: Peer) -> str:
    return steps.describe(p.undo_stack.redo[-1].original.ops, p.views)


def test_each_kind_of_step_is_named(net: Net) -> None:
    a = net.add_peer("A")
    t = a.create_table("Cues", FIELDS).facet
    e = a.create_record(t, {"cue": "Cue 42"}).id
    assert _top(a) == "add Cue 42 to Cues"
    a.update_records([(e, {"time": "10:30"}, None)])
    assert _top(a) == "set Cue 42 · Time"
    a.update_records([(e, {"time": "10:45", "page": 3}, None)])
    assert _top(a) == "edit 2 fields of Cue 42"
    f = a.create_record(t, {"cue": "Cue 43"}).id
    a.update_records([(e, {"page": 4}, None), (f, {"page": 5}, None)])
    assert _top(a) == "edit 2 cells"
    a.delete_records([f])
    assert _top(a) == "delete Cue 43"
    a.undo()
    assert _redo(a) == "delete Cue 43"
    assert _top(a) == "edit 2 cells"
    g = a.create_record(t, {}).id
    assert _top(a) == "add a record to Cues"  # no name yet
    a.delete_records([g, f])
    assert _top(a) == "delete 2 records"


def test_links_and_moves_are_named(net: Net) -> None:
    a = net.add_peer("A")
    cues = a.create_table("Cues", FIELDS).facet
    lists = a.create_table("Lists", [{"label": "Name", "name": "name"}]).facet
    a.define_edge_type("t.stack", "In list", ordered=True)
    main = a.create_record(lists, {"name": "Main"}).id
    one = a.create_record(cues, {"cue": "Q1"}).id
    two = a.create_record(cues, {"cue": "Q2"}).id
    g1 = a.create_edge("t.stack", one, main).id
    assert _top(a) == "link Q1 to Main"
    g2 = a.create_edge("t.stack", two, main).id
    a.reorder_edge(g2, before=g1)
    assert _top(a) == "move a row"
    a.delete_edge(g2)
    assert _top(a) == "remove a link"
