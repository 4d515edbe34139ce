"""Canonical undo/redo (spec 02 §3) through the Workspace facade: scenarios U1–U13 of §4.

U14/U15 need overlays (spec 02 §2), which are not implemented yet; they are not covered here.
Also tests `Workspace.resolve_field` (the minimal resolution facade U13 needs) and
`conflicts.conflict_id` (spec 02 §1.8).
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.core import codec, ids
from openprod.core.errors import NotFound
from openprod.engine.conflicts import conflict_id
from openprod.engine.undo import MAX_ENTRIES
from tests.helpers import Net, Peer

FIELDS = [
    {"label": "name", "name": "name"},
    {"label": "status", "name": "status"},
    {"label": "note", "name": "note"},
]
LINK = "test.link"


# --- helpers ---------------------------------------------------------------------------------

def shared(net: Net) -> tuple[Peer, Peer, bytes]:
    """"E shared": A creates Task E(name="orig"), all sync."""
    a, b = net.add_peer("A"), net.add_peer("B")
    a.create_table("Task", FIELDS)
    a.define_edge_type(LINK, "Link")
    e = a.create_record("Task", {"name": "orig"}).id
    net.sync_all()
    return a, b, e


@attrs.frozen
class Snap:
    """The oplog of one peer at a moment: bundle ids and op count."""

    bundles: frozenset[bytes]
    ops: int


def snap(p: Peer) -> Snap:
    return Snap(frozenset(b for b, *_ in bundles(p)), p.storage.op_count())


def bundles(p: Peer) -> list[tuple[bytes, str, bytes, int]]:
    """(bundle_id, kind, actor, n) in arrival order."""
    return [(bytes(b), k, bytes(a), n) for b, k, a, n in p.storage.conn.execute(
        "SELECT bundle_id, kind, actor, n FROM bundles ORDER BY first_seq")]


def one_new_bundle(p: Peer, before: Snap, kind: str) -> bytes:
    """Exactly one new bundle since `before`, of `kind`, authored by p; op count grew by its n."""
    new = [b for b in bundles(p) if b[0] not in before.bundles]
    assert len(new) == 1, new
    bid, k, actor, n = new[0]
    assert (k, actor) == (kind, p.actor)
    assert p.storage.op_count() == before.ops + n
    return bid


def unchanged(p: Peer, before: Snap) -> None:
    assert snap(p) == before


def ops_of(p: Peer, bundle_id: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(t, codec.decode(bytes(body))["p"]) for t, body in p.storage.conn.execute(
        "SELECT t, body FROM ops WHERE bundle_id = ? ORDER BY pos", (bundle_id,))]


def op_ids_of(p: Peer, bundle_id: bytes) -> list[bytes]:
    return [bytes(o) for (o,) in p.storage.conn.execute(
        "SELECT op_id FROM ops WHERE bundle_id = ? ORDER BY pos", (bundle_id,))]


def meta_of(p: Peer, bundle_id: bytes) -> dict[str, Any]:
    (header,) = next(iter(p.storage.conn.execute(
        "SELECT header FROM bundles WHERE bundle_id = ?", (bundle_id,))))
    return dict(codec.decode(bytes(header)).get("meta") or {})


def val(p: Peer, e: bytes, field: str) -> Any:
    return p.get_record(e)["values"][field]


def skipped(r: Any) -> list[tuple[str, str, str]]:
    return [(s["entity_id"], s["field"], s["actor"]) for s in r.skipped]


def converge(net: Net) -> None:
    net.sync_all()
    net.assert_converged()


def slot(p: Peer, field: str) -> str:
    f = p.views.table("Task").field(field)
    return str(p.proj.slot_of(f.facet, f.name))


def conflicted(net: Net, a: Peer, b: Peer, e: bytes, field: str = "name") -> None:
    """A and B write `field` concurrently (values "a" and "b"); sync_all -> open conflict."""
    a.update_record(e, {field: "a"})
    b.update_record(e, {field: "b"})
    net.sync_all()
    for p in (a, b):
        assert field in p.get_record(e)["conflicts"]


# --- U1–U2: basic undo/redo of field writes ----------------------------------------------------

def test_u1_undo_then_redo_a_field_edit(net: Net) -> None:
    a, b, e = shared(net)
    edit = a.update_record(e, {"name": "x"})
    before = snap(a)
    r = a.undo()
    assert r.status == "applied" and not r.skipped and not r.edges_not_restored
    bid = one_new_bundle(a, before, "undo")
    assert r.bundle_id == bid
    assert meta_of(a, bid) == {"undoes": edit.bundle_id}
    assert [t for t, _ in ops_of(a, bid)] == ["SetField"]
    assert val(a, e, "name") == "orig"
    assert r.can_redo
    converge(net)
    assert val(b, e, "name") == "orig"

    before = snap(a)
    r = a.redo()
    assert r.status == "applied" and not r.skipped
    bid = one_new_bundle(a, before, "redo")
    assert r.bundle_id == bid and meta_of(a, bid) == {"redoes": edit.bundle_id}
    assert val(a, e, "name") == "x"
    assert not r.can_redo and r.can_undo
    converge(net)
    assert val(b, e, "name") == "x"
    assert b.get_record(e)["conflicts"] == []


def test_u1_undo_of_a_first_write_clears_the_field(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"status": "s"})
    before = snap(a)
    assert a.undo().status == "applied"
    bid = one_new_bundle(a, before, "undo")
    assert [t for t, _ in ops_of(a, bid)] == ["ClearField"]
    assert val(a, e, "status") is None
    converge(net)
    assert val(b, e, "status") is None


def test_u1_undo_of_a_clear_sets_the_previous_value_back(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": None})
    assert val(a, e, "name") is None
    before = snap(a)
    assert a.undo().status == "applied"
    bid = one_new_bundle(a, before, "undo")
    assert [(t, p["value"]) for t, p in ops_of(a, bid)] == [("SetField", ["text", "orig"])]
    assert val(a, e, "name") == "orig"
    assert a.redo().status == "applied"
    assert val(a, e, "name") is None
    converge(net)
    assert val(b, e, "name") is None


def test_u2_one_undo_reverts_a_three_field_bundle(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"status": "s0"})
    a.update_record(e, {"name": "n1", "status": "s1", "note": "t1"})
    before = snap(a)
    r = a.undo()
    assert r.status == "applied"
    bid = one_new_bundle(a, before, "undo")
    assert sorted(p["field"] for _, p in ops_of(a, bid)) == ["name", "note", "status"]
    assert a.get_record(e)["values"] == {"name": "orig", "status": "s0", "note": None}
    converge(net)
    assert b.get_record(e)["values"] == {"name": "orig", "status": "s0", "note": None}
    assert a.redo().status == "applied"
    assert a.get_record(e)["values"] == {"name": "n1", "status": "s1", "note": "t1"}
    converge(net)
    assert b.get_record(e)["values"] == {"name": "n1", "status": "s1", "note": "t1"}


def test_undo_emits_inverse_ops_in_reverse_order(net: Net) -> None:
    a, _, e = shared(net)
    a.update_record(e, {"name": "n1", "status": "s1", "note": "t1"})
    before = snap(a)
    a.undo()
    bid = one_new_bundle(a, before, "undo")
    assert [p["field"] for _, p in ops_of(a, bid)] == ["note", "status", "name"]


# --- U3–U5, U9: the skip check ------------------------------------------------------------------

def test_u3_later_foreign_edit_skips_only_that_bundle(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"status": "s"})
    a.update_record(e, {"name": "a1"})
    net.sync(a, b)
    b.update_record(e, {"name": "b1"})
    net.sync(b, a)
    before = snap(a)
    r = a.undo()
    assert r.status == "skipped" and r.bundle_id is None
    assert skipped(r) == [(ids.to_text(e), "name", b.actor.hex())]
    assert r.skipped[0]["label"] == "name"
    unchanged(a, before)
    assert not r.can_redo and not a.undo_stack.redo
    assert val(a, e, "name") == "b1"

    r = a.undo()
    assert r.status == "applied" and not r.skipped
    one_new_bundle(a, before, "undo")
    assert val(a, e, "status") is None
    assert val(a, e, "name") == "b1"
    # The skipped entry was dropped: redo only holds the status edit.
    assert len(a.undo_stack.redo) == 1
    assert a.redo().status == "applied"
    assert val(a, e, "status") == "s"
    assert a.redo().status == "empty"
    converge(net)
    assert b.get_record(e)["values"] == {"name": "b1", "status": "s", "note": None}


def test_u4_concurrent_edit_skips(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": "a"})
    b.update_record(e, {"name": "b"})
    net.sync_all()
    assert a.get_record(e)["conflicts"] == ["name"]
    before = snap(a)
    r = a.undo()
    assert r.status == "skipped"
    assert skipped(r) == [(ids.to_text(e), "name", b.actor.hex())]
    unchanged(a, before)
    assert not a.undo_stack.redo
    net.assert_converged()


def test_u5_partial_overlap_skips_the_whole_bundle(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": "a", "status": "sa"})
    net.sync(a, b)
    b.update_record(e, {"status": "sb"})
    net.sync(b, a)
    before = snap(a)
    r = a.undo()
    assert r.status == "skipped"
    assert skipped(r) == [(ids.to_text(e), "status", b.actor.hex())]
    unchanged(a, before)
    assert (val(a, e, "name"), val(a, e, "status")) == ("a", "sb")
    assert not a.undo_stack.redo
    converge(net)


def test_foreign_edit_the_bundle_had_seen_does_not_skip(net: Net) -> None:
    a, b, e = shared(net)
    b.update_record(e, {"name": "b"})
    net.sync(b, a)
    a.update_record(e, {"name": "a"})
    r = a.undo()
    assert r.status == "applied" and not r.skipped
    assert val(a, e, "name") == "b"
    converge(net)
    assert val(b, e, "name") == "b"


def test_foreign_edit_of_another_field_does_not_skip(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": "a"})
    b.update_record(e, {"status": "sb"})
    net.sync_all()
    assert a.undo().status == "applied"
    assert (val(a, e, "name"), val(a, e, "status")) == ("orig", "sb")
    converge(net)
    assert (val(b, e, "name"), val(b, e, "status")) == ("orig", "sb")


def test_u9_foreign_write_on_a_created_record_skips(net: Net) -> None:
    a, b, _ = shared(net)
    e2 = a.create_record("Task", {"name": "mine"}).id
    net.sync(a, b)
    b.update_record(e2, {"note": "theirs"})
    net.sync(b, a)
    before = snap(a)
    r = a.undo()
    assert r.status == "skipped"
    assert skipped(r) == [(ids.to_text(e2), "note", b.actor.hex())]
    unchanged(a, before)
    assert a.views.is_live(e2)
    converge(net)


def test_foreign_delete_of_an_edited_record_skips_as_entity(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": "a"})
    net.sync(a, b)
    b.delete_entity(e)
    net.sync(b, a)
    before = snap(a)
    r = a.undo()
    assert r.status == "skipped"
    assert skipped(r) == [(ids.to_text(e), "$entity", b.actor.hex())]
    unchanged(a, before)


def test_skip_lists_each_field_and_actor_once(net: Net) -> None:
    a, b, e = shared(net)
    c = net.add_peer("C")
    net.sync_all()
    a.update_record(e, {"name": "a", "status": "sa"})
    net.sync_all()
    b.update_record(e, {"name": "b1"})
    b.update_record(e, {"name": "b2", "status": "sb"})
    c.update_record(e, {"status": "sc"})
    net.sync_all()
    r = a.undo()
    assert r.status == "skipped"
    want = {(ids.to_text(e), "name", b.actor.hex()), (ids.to_text(e), "status", b.actor.hex()),
            (ids.to_text(e), "status", c.actor.hex())}
    assert sorted(skipped(r)) == sorted(want)


# --- U6: redo invalidation ------------------------------------------------------------------------

def test_u6_new_edit_after_undo_empties_redo(net: Net) -> None:
    a, _, e = shared(net)
    a.update_record(e, {"name": "x"})
    assert a.undo().can_redo
    a.update_record(e, {"status": "new"})
    before = snap(a)
    r = a.redo()
    assert r.status == "empty" and r.bundle_id is None and not r.can_redo
    unchanged(a, before)
    assert val(a, e, "name") == "orig"
    converge(net)


@pytest.mark.parametrize("command", ["create_record", "delete_entity", "create_edge"])
def test_any_new_local_command_clears_redo(net: Net, command: str) -> None:
    a, _, e = shared(net)
    x = a.create_record("Task", {"name": "x"}).id
    a.update_record(e, {"name": "y"})
    a.undo()
    assert a.undo_stack.redo
    if command == "create_record":
        a.create_record("Task", {"name": "z"})
    elif command == "delete_entity":
        a.delete_entity(x)
    else:
        a.create_edge(LINK, e, x)
    assert a.redo().status == "empty"


def test_ingested_bundles_do_not_clear_redo(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": "x"})
    a.undo()
    b.update_record(e, {"status": "from b"})
    net.sync(b, a)
    r = a.redo()
    assert r.status == "applied"
    assert (val(a, e, "name"), val(a, e, "status")) == ("x", "from b")
    converge(net)


def test_redo_is_skipped_after_a_foreign_edit_the_undo_had_not_seen(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": "x"})
    a.undo()
    net.sync(a, b)
    b.update_record(e, {"name": "b"})
    net.sync(b, a)
    before = snap(a)
    r = a.redo()
    assert r.status == "skipped"
    assert skipped(r) == [(ids.to_text(e), "name", b.actor.hex())]
    unchanged(a, before)
    assert val(a, e, "name") == "b"
    assert a.redo().status == "empty"


def test_redo_keeps_the_rest_of_the_redo_stack(net: Net) -> None:
    a, b, e = shared(net)
    a.update_record(e, {"name": "1"})
    a.update_record(e, {"name": "2"})
    a.update_record(e, {"name": "3"})
    for want in ("2", "1", "orig"):
        assert a.undo().status == "applied"
        assert val(a, e, "name") == want
    for want in ("1", "2"):
        r = a.redo()
        assert r.status == "applied" and r.can_redo
        assert val(a, e, "name") == want
    # Redo pushed undo entries: undo goes back through them.
    assert a.undo().status == "applied"
    assert val(a, e, "name") == "1"
    assert a.redo().status == "applied" and a.redo().status == "applied"
    assert val(a, e, "name") == "3"
    assert a.redo().status == "empty"
    converge(net)
    assert val(b, e, "name") == "3"


# --- U7–U8: existence and edges ----------------------------------------------------------------

def test_u7_undo_create_deletes_with_the_current_cascade_redo_restores(net: Net) -> None:
    a, b, e = shared(net)
    r1 = a.create_record("Task", {"name": "new", "status": "s"})
    x = r1.id
    net.sync(a, b)
    edge = b.create_edge(LINK, x, e).id  # made after A's create: the cascade is computed now
    net.sync(b, a)
    before = snap(a)
    r = a.undo()
    assert r.status == "applied" and not r.skipped
    bid = one_new_bundle(a, before, "undo")
    assert ops_of(a, bid) == [("DeleteEntity", {"e": x, "cascade": [edge]})]
    assert meta_of(a, bid) == {"undoes": r1.bundle_id}
    assert not a.views.is_live(x)
    assert [rec["id"] for rec in a.list_records("Task")] == [ids.to_text(e)]
    assert a.list_edges(e) == []
    converge(net)
    assert not b.views.is_live(x) and b.list_edges(e) == []

    before = snap(a)
    r = a.redo()
    assert r.status == "applied"
    bid = one_new_bundle(a, before, "redo")
    kinds = [t for t, _ in ops_of(a, bid)]
    assert kinds[0] == "RestoreEntity" and "CreateEntity" not in kinds
    assert ops_of(a, bid)[0][1]["e"] == x
    assert a.get_record(x)["values"] == {"name": "new", "status": "s", "note": None}
    assert ids.to_text(x) in [rec["id"] for rec in a.list_records("Task")]
    converge(net)
    assert b.get_record(x)["values"] == {"name": "new", "status": "s", "note": None}


def test_undo_redo_undo_of_a_create_deletes_again(net: Net) -> None:
    a, b, _ = shared(net)
    x = a.create_record("Task", {"name": "new"}).id
    assert a.undo().status == "applied" and not a.views.is_live(x)
    assert a.redo().status == "applied" and a.views.is_live(x)
    before = snap(a)
    r = a.undo()
    assert r.status == "applied"
    bid = one_new_bundle(a, before, "undo")
    assert "DeleteEntity" in [t for t, _ in ops_of(a, bid)]
    assert not a.views.is_live(x)
    assert a.redo().status == "applied" and a.views.is_live(x)
    assert a.get_record(x)["values"]["name"] == "new"
    converge(net)
    assert b.get_record(x)["values"]["name"] == "new"


def test_undo_delete_restores_the_record_and_its_edges(net: Net) -> None:
    a, b, e = shared(net)
    x = a.create_record("Task", {"name": "x"}).id
    g = a.create_edge(LINK, e, x).id
    a.delete_entity(e)
    assert not a.views.is_live(e)
    r = a.undo()
    assert r.status == "applied" and r.edges_not_restored == []
    assert a.get_record(e)["values"]["name"] == "orig"
    assert [ed["id"] for ed in a.list_edges(e)] == [ids.to_text(g)]
    assert a.redo().status == "applied"
    assert not a.views.is_live(e) and a.list_edges(x) == []
    assert a.undo().status == "applied"
    assert [ed["id"] for ed in a.list_edges(e)] == [ids.to_text(g)]
    converge(net)
    assert [ed["id"] for ed in b.list_edges(e)] == [ids.to_text(g)]


def test_u8_undo_delete_leaves_edges_to_deleted_records(net: Net) -> None:
    a, b, e = shared(net)
    x = a.create_record("Task", {"name": "x"}).id
    y = a.create_record("Task", {"name": "y"}).id
    gx = a.create_edge(LINK, e, x).id
    gy = a.create_edge(LINK, e, y).id
    net.sync_all()
    deleted = a.delete_entity(e)
    assert ops_of(a, deleted.bundle_id) == [("DeleteEntity", {"e": e, "cascade": sorted([gx, gy])})]
    net.sync(a, b)
    b.delete_entity(y)
    net.sync(b, a)
    before = snap(a)
    r = a.undo()
    assert r.status == "applied" and not r.skipped
    bid = one_new_bundle(a, before, "undo")
    assert ops_of(a, bid) == [("RestoreEntity", {"e": e}), ("RestoreEdge", {"edge": gx})]
    assert r.edges_not_restored == [gy]
    assert r.to_json()["edges_not_restored"] == [ids.to_text(gy)]
    assert a.views.is_live(e) and not a.views.is_live(y)
    assert [ed["id"] for ed in a.list_edges(e)] == [ids.to_text(gx)]
    converge(net)
    assert b.views.is_live(e)
    assert [ed["id"] for ed in b.list_edges(e)] == [ids.to_text(gx)]


def test_undo_redo_of_edge_create_and_delete(net: Net) -> None:
    a, b, e = shared(net)
    x = a.create_record("Task", {"name": "x"}).id
    g = a.create_edge(LINK, e, x).id
    assert a.undo().status == "applied" and a.list_edges(e) == []
    assert a.redo().status == "applied" and len(a.list_edges(e)) == 1
    assert a.undo().status == "applied" and a.list_edges(e) == []  # undo of the redo
    assert a.redo().status == "applied"
    a.delete_edge(g)
    assert a.undo().status == "applied"
    assert [ed["id"] for ed in a.list_edges(e)] == [ids.to_text(g)]
    converge(net)
    assert [ed["id"] for ed in b.list_edges(e)] == [ids.to_text(g)]


def test_undo_redo_of_ordered_moves_edge_properties_and_tables(net: Net) -> None:
    a, b, e = shared(net)
    a.define_edge_type("test.sub", "Sub", ordered=True, props={"weight": "integer"})
    a.create_table("Bug", [{"label": "sev", "name": "sev"}])
    kids = [a.create_record("Task", {"name": f"k{i}"}).id for i in range(3)]
    edges = [a.create_edge("test.sub", k, e).id for k in kids]

    def order(p: Peer) -> list[str]:
        return [ed["id"] for ed in p.list_edges(e, "test.sub", "in")]

    o0 = order(a)
    a.reorder_edge(edges[2], before=edges[0])
    o1 = order(a)
    assert o1 != o0
    assert a.undo().status == "applied" and order(a) == o0
    assert a.redo().status == "applied" and order(a) == o1

    def weight(p: Peer) -> Any:
        return next(ed for ed in p.list_edges(e, "test.sub", "in")
                    if ed["id"] == ids.to_text(edges[0]))["props"].get("weight")

    a.set_edge_property(edges[0], "weight", 3)
    a.set_edge_property(edges[0], "weight", 5)
    assert a.undo().status == "applied" and weight(a) == 3
    assert a.undo().status == "applied" and weight(a) is None

    bug = a.views.table("Bug").facet
    a.add_to_table(e, "Bug", {"sev": "high"})
    assert a.undo().status == "applied" and bug not in a.get_record(e)["tables"]
    assert a.redo().status == "applied"
    assert a.get_record(e)["values"]["sev"] == "high"
    a.delete_record(e, "Bug")
    assert a.undo().status == "applied" and bug in a.get_record(e)["tables"]
    converge(net)
    assert order(b) == o1 and weight(b) is None
    assert bug in b.get_record(e)["tables"]


def test_foreign_table_membership_change_is_reported_by_table(net: Net) -> None:
    a, b, e = shared(net)
    a.create_table("Bug", [{"label": "sev", "name": "sev"}])
    a.add_to_table(e, "Bug")
    net.sync(a, b)
    b.delete_record(e, "Bug")
    net.sync(b, a)
    r = a.undo()
    assert r.status == "skipped"
    bug = a.views.table("Bug")
    assert skipped(r) == [(ids.to_text(e), "$table:" + bug.facet, b.actor.hex())]
    assert r.skipped[0]["label"] == "Bug"


# --- U10–U12: stack bounds and lifetime ---------------------------------------------------------

def test_u10_the_stack_holds_the_last_100_bundles(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    e = a.create_record("Task", {"name": "v0"}).id  # undoable bundle 1
    for i in range(1, MAX_ENTRIES + 1):  # bundles 2..101
        a.update_record(e, {"name": f"v{i}"})
    assert MAX_ENTRIES == 100
    for i in range(MAX_ENTRIES - 1, -1, -1):
        before = snap(a)
        r = a.undo()
        assert r.status == "applied"
        one_new_bundle(a, before, "undo")
        assert val(a, e, "name") == f"v{i}"
    assert not r.can_undo
    before = snap(a)
    r = a.undo()
    assert r.status == "empty" and r.bundle_id is None and r.can_redo
    unchanged(a, before)
    assert a.views.is_live(e)  # the create fell off the stack


def test_u11_restart_empties_both_stacks(net: Net) -> None:
    a, _, e = shared(net)
    a.update_record(e, {"name": "x"})
    a.update_record(e, {"name": "y"})
    assert a.undo().status == "applied"
    a.reopen()
    before = snap(a)
    assert a.undo().status == "empty"
    r = a.redo()
    assert r.status == "empty" and not r.can_undo and not r.can_redo
    unchanged(a, before)
    assert val(a, e, "name") == "x"


def test_u12_only_foreign_ops_leave_the_stack_empty(net: Net) -> None:
    a, b = net.add_peer("A"), net.add_peer("B")
    a.create_table("Task", FIELDS)  # schema commands are not undoable
    net.sync(a, b)
    e = b.create_record("Task", {"name": "b"}).id
    b.update_record(e, {"status": "s"})
    net.sync(b, a)
    before = snap(a)
    r = a.undo()
    assert r.status == "empty" and not r.can_undo
    assert a.redo().status == "empty"
    unchanged(a, before)
    assert a.get_record(e)["values"]["status"] == "s"


def test_non_undoable_commands_are_not_pushed(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    a.add_field("Task", "extra", "text")
    a.define_edge_type(LINK, "Link")
    a.put_config("workspace", "k", 1)
    assert a.undo().status == "empty"


# --- U13 and resolve_field ------------------------------------------------------------------------

def test_u13_undo_skips_over_a_resolution(net: Net) -> None:
    a, b, e = shared(net)
    conflicted(net, a, b, e, "name")
    f_edit = a.update_record(e, {"status": "f"})
    res = a.resolve_field(e, "Task", "name", "r")
    assert a.get_record(e)["conflicts"] == []
    before = snap(a)
    r = a.undo()
    assert r.status == "applied" and not r.skipped
    bid = one_new_bundle(a, before, "undo")
    assert meta_of(a, bid) == {"undoes": f_edit.bundle_id}
    assert meta_of(a, bid) != {"undoes": res.bundle_id}
    assert val(a, e, "status") is None
    assert val(a, e, "name") == "r"
    assert a.get_record(e)["conflicts"] == []
    converge(net)
    assert b.get_record(e)["values"]["name"] == "r"
    assert b.get_record(e)["conflicts"] == []
    assert val(b, e, "status") is None


def test_resolve_field_writes_one_tagged_resolution(net: Net) -> None:
    a, b, e = shared(net)
    wa = a.update_record(e, {"name": "a"})
    wb = b.update_record(e, {"name": "b"})
    net.sync_all()
    tips = sorted(op_ids_of(a, wa.bundle_id) + op_ids_of(b, wb.bundle_id))
    before = snap(b)
    res = b.resolve_field(e, "Task", "name", "r")
    bid = one_new_bundle(b, before, "resolution")
    assert res.bundle_id == bid
    ((t, p),) = ops_of(b, bid)
    assert t == "SetField" and p["value"] == ["text", "r"] and p["field"] == "name"
    assert p["resolves"] == tips
    assert p["conflict"] == conflict_id(e, slot(b, "name"))
    converge(net)
    for peer in (a, b):
        assert peer.get_record(e)["values"]["name"] == "r"
        assert peer.get_record(e)["conflicts"] == []


def test_resolve_field_with_none_clears(net: Net) -> None:
    a, b, e = shared(net)
    conflicted(net, a, b, e, "status")
    before = snap(a)
    a.resolve_field(e, "Task", "status", None)
    bid = one_new_bundle(a, before, "resolution")
    ((t, p),) = ops_of(a, bid)
    assert t == "ClearField" and len(p["resolves"]) == 2 and "conflict" in p
    converge(net)
    for peer in (a, b):
        assert peer.get_record(e)["values"]["status"] is None
        assert peer.get_record(e)["conflicts"] == []


def test_resolve_field_picking_a_tip_value(net: Net) -> None:
    a, b, e = shared(net)
    conflicted(net, a, b, e)
    a.resolve_field(e, "Task", "name", "b")
    converge(net)
    assert (val(a, e, "name"), val(b, e, "name")) == ("b", "b")
    assert b.get_record(e)["conflicts"] == []


def test_resolve_field_without_open_conflict_raises_and_writes_nothing(net: Net) -> None:
    a, b, e = shared(net)
    before = snap(a)
    with pytest.raises(NotFound, match="no open conflict"):
        a.resolve_field(e, "Task", "name", "r")
    unchanged(a, before)
    conflicted(net, a, b, e)
    a.resolve_field(e, "Task", "name", "r")
    before = snap(a)
    with pytest.raises(NotFound, match="no open conflict"):  # already resolved
        a.resolve_field(e, "Task", "name", "again")
    unchanged(a, before)


def test_resolve_field_is_not_undoable_and_clears_redo(net: Net) -> None:
    a, b, e = shared(net)
    conflicted(net, a, b, e)  # pushes A's write of name
    a.update_record(e, {"status": "s"})
    assert a.undo().status == "applied"  # status edit -> redo
    assert a.undo_stack.redo
    depth = len(a.undo_stack.undo)
    a.resolve_field(e, "Task", "name", "r")
    assert len(a.undo_stack.undo) == depth
    assert a.redo().status == "empty"


def test_conflict_id_is_the_spec_derivation() -> None:
    e1, e2 = ids.new_id(), ids.new_id()
    cid = conflict_id(e1, "workspace.t_x.name")
    want = uuid.UUID(bytes=blake3(b"openprod/conflict" + e1 + b"workspace.t_x.name")
                     .digest()[:16]).bytes
    assert cid == want and len(cid) == 16
    assert cid == conflict_id(e1, "workspace.t_x.name")
    assert len({cid, conflict_id(e2, "workspace.t_x.name"), conflict_id(e1, "workspace.t_x.st"),
                conflict_id(e1, "$entity")}) == 4


# --- property: a single actor's edits, undos and redos follow the stack model --------------------

step = st.one_of(
    st.tuples(st.just("set"), st.dictionaries(
        st.sampled_from(["name", "status"]), st.sampled_from([None, "p", "q", "r"]),
        min_size=1, max_size=2)),
    st.tuples(st.just("undo"), st.none()),
    st.tuples(st.just("redo"), st.none()),
)


@settings(max_examples=25)
@given(st.lists(step, max_size=14))
def test_undo_redo_follow_the_stack_model(steps: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        net = Net(Path(tmp))
        try:
            a, b = net.add_peer("A"), net.add_peer("B")
            a.create_table("Task", FIELDS)
            net.sync(a, b)
            e = b.create_record("Task", {"name": "orig"}).id  # B's: A's stack starts empty
            net.sync(b, a)
            cur: dict[str, Any] = {"name": "orig", "status": None}
            undo: list[dict[str, tuple[Any, Any]]] = []  # per entry: field -> (before, after)
            redo: list[dict[str, tuple[Any, Any]]] = []
            for kind, arg in steps:
                before = snap(a)
                if kind == "set":
                    a.update_record(e, arg)
                    undo.append({f: (cur[f], v) for f, v in arg.items()})
                    cur.update(arg)
                    redo.clear()
                    one_new_bundle(a, before, "user")
                elif kind == "undo":
                    r = a.undo()
                    want = "empty"
                    while undo:
                        entry = undo.pop()
                        if all(old is None and new is None for old, new in entry.values()):
                            continue  # clearing an empty field has no inverse
                        cur.update({f: old for f, (old, _) in entry.items()})
                        redo.append(entry)
                        want = "applied"
                        break
                    assert r.status == want
                    if want == "applied":
                        one_new_bundle(a, before, "undo")
                else:
                    r = a.redo()
                    if redo:
                        entry = redo.pop()
                        undo.append({f: (cur[f], new) for f, (_, new) in entry.items()})
                        cur.update({f: new for f, (_, new) in entry.items()})
                        assert r.status == "applied"
                        one_new_bundle(a, before, "redo")
                    else:
                        assert r.status == "empty"
                        unchanged(a, before)
                got = a.get_record(e)["values"]
                assert {f: got[f] for f in cur} == cur
                assert (bool(a.undo_stack.undo), bool(a.undo_stack.redo)) == (
                    bool(undo), bool(redo))
            converge(net)
            got = b.get_record(e)["values"]
            assert {f: got[f] for f in cur} == cur
        finally:
            for p in net.peers:
                p.ws.close()
