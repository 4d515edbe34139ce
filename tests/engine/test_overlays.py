"""Overlays at the engine layer (spec 02 §2): scenarios O1–O19, U14, U15 of §4 through the
Workspace facade and its `OverlayStore` (`ws.overlays`), plus lifecycle and drift edge cases.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.core import codec
from openprod.core.errors import EntityDeleted, NotFound, StorageError
from openprod.engine.overlays import OverlayNotFound, UnresolvedDriftError
from tests.helpers import Net, Peer

FIELDS = [{"label": "name", "name": "name"}, {"label": "status", "name": "status"}]
LINK = "test.link"


# --- helpers ---------------------------------------------------------------------------------

def shared(net: Net, names: tuple[str, ...] = ("A", "B")) -> tuple[list[Peer], bytes]:
    """The first peer creates Task E(name="orig", status="todo"); all peers sync."""
    peers = [net.add_peer(n) for n in names]
    a = peers[0]
    a.create_table("Task", FIELDS)
    a.define_edge_type(LINK, "Link")
    e = a.create_record("Task", {"name": "orig", "status": "todo"}).id
    net.sync_all()
    return peers, e


def bundles(p: Peer) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in p.storage.conn.execute(
        "SELECT bundle_id, actor, hlc, kind, n, header, sig FROM bundles ORDER BY bundle_id")]


def op_rows(p: Peer) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in p.storage.conn.execute("SELECT * FROM ops ORDER BY seq")]


def bundle_ops(p: Peer, bundle_id: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(t, codec.decode(bytes(body))["p"]) for t, body in p.storage.conn.execute(
        "SELECT t, body FROM ops WHERE bundle_id = ? ORDER BY pos", (bundle_id,))]


def overlay_rows(p: Peer) -> int:
    return sum(1 for _ in p.storage.conn.execute("SELECT 1 FROM overlay_ops"))


def statuses(p: Peer) -> dict[bytes, str]:
    return {o["id"]: o["status"] for o in p.list_overlays()}


def o9(net: Net) -> tuple[Peer, Peer, bytes, bytes]:
    """B stages name="B"; A edits name="A"; sync A→B."""
    (a, b), e = shared(net)
    oid = b.create_overlay("mine")
    b.update_record(e, {"name": "B"})
    a.update_record(e, {"name": "A"})
    net.sync(a, b)
    return a, b, e, oid


# --- O1–O8: staging, reads, lifecycle, commit ------------------------------------------------

def test_o1_staged_write_is_not_appended(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    assert a.active_overlay == oid and statuses(a) == {oid: "active"}
    n = a.storage.op_count()
    res = a.update_record(e, {"name": "new"})
    assert res.staged and res.bundle_id is None and res.seq == a.storage.head_seq()
    assert a.storage.op_count() == n
    assert a.get_record(e, canonical=True)["values"]["name"] == "orig"
    rec = a.get_record(e)
    assert rec["values"]["name"] == "new" and rec["staged"] == ["name"]
    assert rec["drifted"] == []
    assert [r["values"]["name"] for r in a.list_records("Task")] == ["new"]
    assert [r["values"]["name"] for r in a.list_records("Task", canonical=True)] == ["orig"]


def test_no_overlay_reads_unchanged(net: Net) -> None:
    (a, _), e = shared(net)
    assert "staged" not in a.get_record(e)
    assert a.get_record(e) == a.get_record(e, canonical=True)
    assert a.create_record("Task", {"name": "x"}).staged is False


def test_o2_canonical_change_to_other_field_shows_through(net: Net) -> None:
    (a, b), e = shared(net)
    oid = a.create_overlay("draft")
    a.update_record(e, {"name": "new"})
    b.update_record(e, {"status": "done"})
    net.sync(b, a)
    rec = a.get_record(e)
    assert rec["values"] == {"name": "new", "status": "done"}
    assert a.list_drift(oid) == [] and a.overlay_events == []


def test_o3_one_active_at_every_step(net: Net) -> None:
    a = net.add_peer("A")
    x = a.create_overlay("X")
    assert statuses(a) == {x: "active"}
    y = a.create_overlay("Y")
    assert statuses(a) == {x: "stashed", y: "active"}
    a.activate_overlay(x)
    assert statuses(a) == {x: "active", y: "stashed"}
    a.activate_overlay(x)  # already active: no-op
    assert statuses(a) == {x: "active", y: "stashed"}
    with pytest.raises(OverlayNotFound) as exc:
        a.activate_overlay(bytes(16))
    assert exc.value.code == "overlay_not_found" and isinstance(exc.value, NotFound)
    assert statuses(a) == {x: "active", y: "stashed"}
    a.stash_overlay(x)
    assert a.active_overlay is None and set(statuses(a).values()) == {"stashed"}


def test_o4_discard_leaves_no_trace(net: Net) -> None:
    (a, _), e = shared(net)
    digest, bs, os_ = a.oplog_digest(), bundles(a), op_rows(a)
    oid = a.create_overlay("draft")
    new = a.create_record("Task", {"name": "staged"}).id
    a.update_record(e, {"name": "new"})
    assert overlay_rows(a) > 0
    a.discard_overlay(oid)
    assert a.oplog_digest() == digest and bundles(a) == bs and op_rows(a) == os_
    assert a.list_overlays() == [] and overlay_rows(a) == 0 and a.active_overlay is None
    assert a.get_record(e)["values"]["name"] == "orig"
    with pytest.raises(NotFound):
        a.get_record(new)
    with pytest.raises(OverlayNotFound):
        a.discard_overlay(oid)


def test_o5_commit_is_one_bundle_with_everything(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    new = a.create_record("Task", {"name": "n0"}).id
    a.update_record(new, {"name": "n1"})
    a.update_record(new, {"status": "s1"})
    a.create_edge(LINK, new, e)
    assert [r["values"] for r in a.list_records("Task") if r["id"] == a.get_record(new)["id"]
            ] == [{"name": "n1", "status": "s1"}]
    nb, n = len(bundles(a)), a.storage.op_count()
    bid = a.commit_overlay(oid)
    assert bid is not None and len(bundles(a)) == nb + 1
    kinds = [k for (_b, _a, _h, k, *_rest) in bundles(a) if _b == bid]
    assert kinds == ["overlay_commit"]
    ts = [t for t, _ in bundle_ops(a, bid)]
    assert ts == ["CreateEntity", "AttachFacet", "SetField", "SetField", "CreateEdge"]
    assert a.storage.op_count() == n + 5
    assert a.list_overlays() == [] and a.active_overlay is None and overlay_rows(a) == 0
    assert a.get_record(new)["values"] == {"name": "n1", "status": "s1"}
    assert len(a.list_edges(new)) == 1


def test_o5_storage_failure_leaves_overlay_intact(net: Net, monkeypatch: pytest.MonkeyPatch,
                                                  ) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.create_record("Task", {"name": "n0"})
    a.update_record(e, {"name": "x"})
    before = a.overlay_changes(oid)
    n, digest = a.storage.op_count(), a.oplog_digest()

    def boom(*args: Any, **kw: Any) -> Any:
        raise StorageError("disk on fire")

    monkeypatch.setattr(a.ws.storage, "append", boom)
    with pytest.raises(StorageError):
        a.commit_overlay(oid)
    monkeypatch.undo()
    assert a.storage.op_count() == n and a.oplog_digest() == digest
    assert statuses(a) == {oid: "active"}
    assert a.overlay_changes(oid) == before
    assert a.get_record(e)["values"]["name"] == "x"
    assert a.commit_overlay(oid) is not None  # and it still commits afterwards
    assert a.get_record(e)["values"]["name"] == "x"


def test_o6_last_write_per_field_wins(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.update_record(e, {"name": "1"})
    a.update_record(e, {"name": "2"})
    bid = a.commit_overlay(oid)
    assert bid is not None
    ops = bundle_ops(a, bid)
    assert [t for t, _ in ops] == ["SetField"]
    assert a.get_record(e)["values"]["name"] == "2"


def test_o7_commit_stashed_leaves_active_untouched(net: Net) -> None:
    (a, _), e = shared(net)
    x = a.create_overlay("X")
    a.update_record(e, {"name": "x"})
    y = a.create_overlay("Y")
    a.update_record(e, {"status": "y"})
    y_rows = a.overlay_changes(y)
    assert a.commit_overlay(x) is not None
    assert statuses(a) == {y: "active"} and a.overlay_changes(y) == y_rows
    assert a.get_record(e)["values"] == {"name": "x", "status": "y"}
    assert a.get_record(e, canonical=True)["values"] == {"name": "x", "status": "todo"}


def test_o8_knockout_one_field(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.update_record(e, {"name": "n", "status": "s"})
    a.knockout_field(oid, e, "status")
    rec = a.get_record(e)
    assert rec["values"] == {"name": "n", "status": "todo"} and rec["staged"] == ["name"]
    bid = a.commit_overlay(oid)
    assert bid is not None
    assert [(t, p["field"]) for t, p in bundle_ops(a, bid)] == [("SetField", "name")]


def test_knockout_create_takes_dependent_ops(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    new = a.create_record("Task", {"name": "n"}).id
    a.update_record(new, {"status": "s"})
    a.create_edge(LINK, e, new)
    a.update_record(e, {"name": "kept"})
    create = next(c for c in a.overlay_changes(oid) if c["t"] == "CreateEntity")
    a.knockout(oid, create["local_op_id"])
    assert [c["t"] for c in a.overlay_changes(oid)] == ["SetField"]
    assert [r["values"]["name"] for r in a.list_records("Task")] == ["kept"]
    with pytest.raises(NotFound):
        a.knockout(oid, create["local_op_id"])


# --- O9–O14: drift ---------------------------------------------------------------------------

def test_o9_drift_value(net: Net) -> None:
    a, b, e, oid = o9(net)
    drift = b.list_drift(oid)
    a_write = a.get_record(e)  # A's edit is the canonical value B's overlay drifted from
    assert a_write["values"]["name"] == "A"
    assert drift == [{"entity_id": b.get_record(e)["id"], "field": "name",
                      "field_key": drift[0]["field_key"], "field_label": "name",
                      "overlay_value": "B", "canonical_value": "A", "kind": "value",
                      # who changed it and when (spec 05 J12)
                      "actor": a.actor.hex(), "actor_name": a.ident.display_name,
                      "at_ms": drift[0]["at_ms"]}]
    assert 0 < drift[0]["at_ms"] <= a.clock.ms
    rec = b.get_record(e)
    assert rec["values"]["name"] == "B" and rec["drifted"] == ["name"]
    assert [ev["overlay_id"] for ev in b.overlay_events] == [oid]
    assert b.overlay_events[0]["fields"] == drift
    n = b.storage.op_count()
    with pytest.raises(UnresolvedDriftError) as exc:
        b.commit_overlay(oid)
    assert exc.value.code == "unresolved_drift" and exc.value.fields == drift
    assert b.storage.op_count() == n and statuses(b) == {oid: "active"}
    b.update_record(e, {"status": "later"})  # drift is sticky across later staging
    assert [d["field"] for d in b.list_drift(oid)] == ["name"]


def test_o10_other_field_does_not_drift(net: Net) -> None:
    (a, b), e = shared(net)
    oid = b.create_overlay("mine")
    b.update_record(e, {"name": "B"})
    a.update_record(e, {"status": "A"})
    net.sync(a, b)
    assert b.list_drift(oid) == [] and b.overlay_events == []
    assert b.commit_overlay(oid) is not None


def test_o11_keep_mine(net: Net) -> None:
    a, b, e, oid = o9(net)
    b.resolve_drift(oid, e, "name", "keep_mine")
    assert b.list_drift(oid) == [] and b.get_record(e)["drifted"] == []
    assert b.commit_overlay(oid) is not None
    assert b.get_record(e)["values"]["name"] == "B"
    net.sync_all()
    for p in (a, b):
        assert p.list_conflicts() == []
        assert p.get_record(e)["values"]["name"] == "B"
    net.assert_converged()


def test_o12_use_canonical(net: Net) -> None:
    _a, b, e, oid = o9(net)
    b.resolve_drift(oid, e, "name", "use_canonical")
    rec = b.get_record(e)
    assert rec["values"]["name"] == "A" and rec["staged"] == []
    n = b.storage.op_count()
    assert b.commit_overlay(oid) is None
    assert b.list_overlays() == [] and b.storage.op_count() == n


def test_o13_commit_drifts_other_overlay(net: Net) -> None:
    (a, _), e = shared(net)
    x = a.create_overlay("X")
    a.update_record(e, {"name": "x"})
    y = a.create_overlay("Y")
    a.update_record(e, {"name": "y"})
    assert a.commit_overlay(y) is not None
    assert [(d["overlay_value"], d["canonical_value"], d["kind"]) for d in a.list_drift(x)
            ] == [("x", "y", "value")]
    assert statuses(a) == {x: "stashed"}


def test_o14_script_overlay_drifts(net: Net) -> None:
    (a, b), e = shared(net)
    sid = b.overlays.create("run 1", ("script", "cleanup", "run-1"), active=False)
    assert statuses(b) == {sid: "stashed"}
    b.activate_overlay(sid)  # reviewing a script overlay: user edits go into it
    b.update_record(e, {"name": "S"})
    b.stash_overlay(sid)
    a.update_record(e, {"name": "A"})
    net.sync(a, b)
    assert [(d["overlay_value"], d["canonical_value"], d["kind"]) for d in b.list_drift(sid)
            ] == [("S", "A", "value")]
    b.resolve_drift(sid, e, "name", "keep_mine")
    bid = b.commit_overlay(sid)
    assert bid is not None
    assert [k for (x, _a, _h, k, *_r) in bundles(b) if x == bid] == ["script"]


def test_drift_conflict(net: Net) -> None:
    (a, b, c), e = shared(net, ("A", "B", "C"))
    oid = b.create_overlay("mine")
    b.update_record(e, {"name": "B"})
    a.update_record(e, {"name": "A"})
    c.update_record(e, {"name": "C"})
    net.sync(a, b)
    net.sync(c, b)
    kinds = [d["kind"] for d in b.list_drift(oid)]
    assert kinds == ["value"]  # sticky: the first drift seen (A's value) is kept
    assert b.list_conflicts() != []
    b.resolve_drift(oid, e, "name", "keep_mine")
    assert b.list_drift(oid) == []
    bid = b.commit_overlay(oid)
    assert bid is not None
    ((_t, p),) = bundle_ops(b, bid)
    assert len(p["resolves"]) == 2
    net.sync_all()
    for x in (a, b, c):
        assert x.list_conflicts() == [] and x.get_record(e)["values"]["name"] == "B"
    net.assert_converged()


def test_drift_conflict_kind_when_both_arrive_together(net: Net) -> None:
    (a, b, c), e = shared(net, ("A", "B", "C"))
    oid = b.create_overlay("mine")
    b.update_record(e, {"name": "B"})
    a.update_record(e, {"name": "A"})
    c.update_record(e, {"name": "C"})
    net.sync(a, c)  # C now holds both concurrent writes
    net.sync(c, b)
    assert [d["kind"] for d in b.list_drift(oid)] == ["conflict"]


def test_overlay_edges_read(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    new = a.create_record("Task", {"name": "n"}).id
    g = a.create_edge(LINK, new, e).id
    assert [d["id"] for d in a.list_edges(e)] == [a.list_edges(new)[0]["id"]]
    assert a.list_edges(e, canonical=True) == []
    a.delete_edge(g)
    assert a.list_edges(e) == []
    assert a.commit_overlay(oid) is not None
    assert a.list_edges(e) == []


def test_drift_deleted_keep_mine_restores(net: Net) -> None:
    (a, b), e = shared(net)
    oid = b.create_overlay("mine")
    b.update_record(e, {"name": "B"})
    a.delete_record(e)
    net.sync(a, b)
    assert [(d["field"], d["kind"]) for d in b.list_drift(oid)] == [("$entity", "deleted")]
    with pytest.raises(UnresolvedDriftError):
        b.commit_overlay(oid)
    b.resolve_drift(oid, e, "$entity", "keep_mine")
    bid = b.commit_overlay(oid)
    assert bid is not None
    assert [t for t, _ in bundle_ops(b, bid)] == ["RestoreEntity", "SetField"]
    assert b.get_record(e)["values"]["name"] == "B"


def test_drift_deleted_use_canonical(net: Net) -> None:
    (a, b), e = shared(net)
    oid = b.create_overlay("mine")
    b.update_record(e, {"name": "B"})
    a.delete_record(e)
    net.sync(a, b)
    b.resolve_drift(oid, e, "name", "use_canonical")
    assert b.overlay_changes(oid) == [] and b.list_drift(oid) == []
    assert b.commit_overlay(oid) is None


def test_drift_edited_staged_delete(net: Net) -> None:
    (a, b), e = shared(net)
    oid = b.create_overlay("mine")
    b.delete_record(e)
    with pytest.raises(NotFound):
        b.get_record(e)
    assert b.list_records("Task") == []
    a.update_record(e, {"name": "A"})
    net.sync(a, b)
    assert [(d["field"], d["kind"]) for d in b.list_drift(oid)] == [("$entity", "edited")]
    b.resolve_drift(oid, e, "$entity", "use_canonical")
    assert b.get_record(e)["values"]["name"] == "A"
    assert b.commit_overlay(oid) is None


# --- O15–O19: restart, isolation, conflicts, overlay undo --------------------------------------

def test_o15_restart_loads_stashed(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.update_record(e, {"name": "new"})
    a.update_record(e, {"status": "s"})
    rows = a.overlay_changes(oid)
    a.reopen()
    assert statuses(a) == {oid: "stashed"} and a.active_overlay is None
    assert a.overlay_changes(oid) == rows
    assert a.get_record(e)["values"] == {"name": "orig", "status": "todo"}
    a.activate_overlay(oid)
    assert a.get_record(e)["values"] == {"name": "new", "status": "s"}
    assert a.undo().status == "empty" and a.overlay_changes(oid) == rows


def test_restart_forgets_committed_overlay(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.update_record(e, {"name": "new"})
    some_bundle = bundles(a)[0][0]
    a.overlays.note_commit(oid, bytes(some_bundle))  # as if the append landed, then a crash
    a.reopen()
    assert a.list_overlays() == [] and overlay_rows(a) == 0


def test_o16_staged_ops_never_sync(net: Net) -> None:
    (a, b), e = shared(net)
    a.create_overlay("draft")
    a.create_record("Task", {"name": "secret"})
    a.update_record(e, {"name": "new"})
    n = b.storage.op_count()
    net.sync_all()
    assert b.storage.op_count() == n and len(b.list_records("Task")) == 1
    assert b.get_record(e)["values"]["name"] == "orig"
    net.assert_converged()


def test_o17_commit_resolves_open_conflict(net: Net) -> None:
    (a, b), e = shared(net)
    a.update_record(e, {"name": "A"})
    b.update_record(e, {"name": "B"})
    net.sync_all()
    assert len(a.list_conflicts()) == 1 and len(b.list_conflicts()) == 1
    oid = a.create_overlay("fix")
    a.update_record(e, {"name": "fixed"})
    assert a.get_record(e)["conflicts"] == ["name"]
    assert a.list_drift(oid) == []
    bid = a.commit_overlay(oid)
    assert bid is not None
    ((t, p),) = bundle_ops(a, bid)
    assert t == "SetField" and len(p["resolves"]) == 2 and "conflict" in p
    net.sync_all()
    for x in (a, b):
        assert x.list_conflicts() == []
        assert x.get_record(e)["values"]["name"] == "fixed"
    net.assert_converged()


def test_o18_overlay_undo_redo(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.update_record(e, {"name": "1"})
    a.update_record(e, {"name": "2"})
    n = a.storage.op_count()
    r = a.undo()
    assert r.status == "applied" and r.can_undo and r.can_redo
    assert a.get_record(e)["values"]["name"] == "1"
    assert a.undo().status == "applied"
    assert a.get_record(e)["values"]["name"] == "orig" and a.get_record(e)["staged"] == []
    assert a.undo().status == "empty"
    assert a.redo().status == "applied"
    assert a.get_record(e)["values"]["name"] == "1"
    a.update_record(e, {"status": "s"})  # new staging clears redo
    assert a.redo().status == "empty"
    assert a.storage.op_count() == n
    other = a.create_overlay("other")
    a.activate_overlay(oid)  # switching overlays clears both stacks
    assert a.undo().status == "empty" and a.redo().status == "empty"
    assert a.get_record(e)["values"] == {"name": "1", "status": "s"}
    assert other in statuses(a)


def test_o19_script_overlay_is_isolated(net: Net) -> None:
    (a, _), e = shared(net)
    sid = a.overlays.create("run", ("script", "s", "r1"), active=False)
    a.activate_overlay(sid)
    a.update_record(e, {"name": "script"})
    a.stash_overlay(sid)
    assert a.get_record(e)["values"]["name"] == "orig"
    a.create_overlay("mine")
    rec = a.get_record(e)
    assert rec["values"]["name"] == "orig" and rec["staged"] == []
    assert a.get_record(e, canonical=True)["values"]["name"] == "orig"


def test_u14_overlay_undo_leaves_canonical_stack(net: Net) -> None:
    (a, _), e = shared(net)
    a.update_record(e, {"status": "canon"})
    depth = len(a.undo_stack.undo)
    a.create_overlay("draft")
    a.update_record(e, {"name": "staged"})
    assert a.undo().status == "applied"
    assert len(a.undo_stack.undo) == depth
    assert a.get_record(e)["values"] == {"name": "orig", "status": "canon"}
    assert a.get_record(e, canonical=True)["values"] == {"name": "orig", "status": "canon"}


def test_u15_commit_is_one_undo_step(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.update_record(e, {"name": "n"})
    a.update_record(e, {"status": "s"})
    assert a.commit_overlay(oid) is not None
    assert a.get_record(e)["values"] == {"name": "n", "status": "s"}
    r = a.undo()
    assert r.status == "applied"
    assert a.get_record(e)["values"] == {"name": "orig", "status": "todo"}


# --- errors and validation ---------------------------------------------------------------------

def test_commit_unknown_overlay(net: Net) -> None:
    a = net.add_peer("A")
    with pytest.raises(OverlayNotFound):
        a.commit_overlay(bytes(16))


def test_staged_validation_sees_overlay(net: Net) -> None:
    (a, _), e = shared(net)
    oid = a.create_overlay("draft")
    a.delete_record(e)
    with pytest.raises(EntityDeleted):
        a.update_record(e, {"name": "x"})
    new = a.create_record("Task", {"name": "n"}).id
    a.delete_record(new)
    assert a.list_records("Task") == []
    bid = a.commit_overlay(oid)
    assert bid is not None
    assert a.list_records("Task") == []


def test_schema_commands_go_canonical(net: Net) -> None:
    (a, _), _e = shared(net)
    a.create_overlay("draft")
    n = a.storage.op_count()
    res = a.create_table("Other", [{"label": "x", "name": "x"}])
    assert not res.staged and a.storage.op_count() > n


# --- property: what the overlay shows is what its commit produces --------------------------------

STEPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 1), st.sampled_from(["name", "status"]),
              st.one_of(st.none(), st.text("abc", min_size=1, max_size=3))),
    st.tuples(st.just("undo")), st.tuples(st.just("redo")),
    st.tuples(st.just("knock"), st.integers(0, 1), st.sampled_from(["name", "status"])),
), max_size=12)


@settings(max_examples=25)
@given(steps=STEPS)
def test_commit_matches_overlay_view(tmp_path_factory: pytest.TempPathFactory,
                                     steps: list[tuple[Any, ...]]) -> None:
    net = Net(tmp_path_factory.mktemp("ov"))
    try:
        a = net.add_peer("A")
        a.create_table("Task", FIELDS)
        recs = [a.create_record("Task", {"name": f"r{i}", "status": "todo"}).id
                for i in range(2)]
        oid = a.create_overlay("draft")
        n = a.storage.op_count()
        for s in steps:
            if s[0] == "set":
                a.update_record(recs[s[1]], {s[2]: s[3]})
            elif s[0] == "undo":
                a.undo()
            elif s[0] == "redo":
                a.redo()
            else:
                a.knockout_field(oid, recs[s[1]], s[2])
        assert a.storage.op_count() == n
        shown = a.list_records("Task")
        staged = bool(a.overlay_changes(oid))
        bid = a.commit_overlay(oid)
        assert (bid is not None) == staged
        after = a.list_records("Task")
        assert [r["values"] for r in after] == [r["values"] for r in shown]
        assert a.list_overlays() == []
    finally:
        for p in net.peers:
            p.ws.close()
