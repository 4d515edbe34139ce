"""Workspace fork at the engine layer (spec 03 §2 Fork): a new workspace holding the source's
current canonical state under the same ids, re-authored by the forker, without history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openprod.core import codec, ids
from openprod.core.errors import ValidationError
from openprod.core.ops import open_bundle
from openprod.engine.workspace import Workspace
from tests.helpers import Net, Peer

TASK = [
    {"label": "Name", "name": "name"},
    {"label": "Status", "name": "status", "type": "enum",
     "options": {"choices": ["todo", "done"]}},
    {"label": "Pages", "name": "pages", "type": "integer"},
    {"label": "Notes", "name": "notes", "crdt": True},
    {"label": "Owner", "name": "owner", "type": "entity_ref"},
]
PERSON = [{"label": "Name", "name": "name"}, {"label": "Age", "name": "age", "type": "integer"}]
LINK, NEXT = "test.link", "test.next"
# what a fork's oplog may hold: the genesis, then state re-authored as creations and writes
FORK_OPS = {"CreateWorkspace", "PutConfig", "DefineTable", "DefineField", "DefineEdgeType",
            "ConfirmFieldMapping", "RejectFieldMapping", "CreateEntity", "AttachFacet",
            "SetField", "SetCRDTField", "CreateEdge", "CreateOrderedEdge"}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path)
    try:
        yield n
    finally:
        for p in n.peers:
            p.ws.close()


def _build(net: Net) -> tuple[Peer, Peer, dict[str, bytes]]:
    """A and B share tables, records, CRDT text, edges (one deleted, an ordered list that was
    reordered), a merge, a mapping, a deleted record and an open conflict on t2.name."""
    a, b = net.add_peer("A"), net.add_peer("B")
    a.create_table("Task", TASK)
    a.create_table("Person", PERSON)
    a.define_edge_type(LINK, "Link", props={"weight": "integer"})
    a.define_edge_type(NEXT, "Next", ordered=True)
    task = a.views.table("Task").facet
    person = a.views.table("Person").facet
    a.confirm_mapping(f"{task}.pages", f"{person}.age")
    p1 = a.create_record("Person", {"name": "Ann", "age": 40}).id
    p2 = a.create_record("Person", {"name": "Ann"}).id  # equal names: the merge opens nothing
    t1 = a.create_record("Task", {"name": "one", "status": "todo", "pages": 3,
                                  "notes": "draft", "owner": ids.to_text(p1)}).id
    t2 = a.create_record("Task", {"name": "two", "owner": ids.to_text(p2)}).id
    t3 = a.create_record("Task", {"name": "three"}).id
    gone = a.create_record("Task", {"name": "deleted"}).id
    a.edit_text(t1, "Task", "notes", 5, 0, " v2")
    a.edit_text(t1, "Task", "notes", 0, 1, "D")
    link = a.create_edge(LINK, t1, t2, props={"weight": 7}).id
    dead = a.create_edge(LINK, t2, t3).id
    a.delete_edge(dead)
    n1 = a.create_edge(NEXT, t1, p1).id
    n2 = a.create_edge(NEXT, t2, p1).id
    n3 = a.create_edge(NEXT, t3, p1).id
    a.reorder_edge(n3, before=n1)
    a.delete_record(gone)
    a.merge(p1, p2)
    net.sync_all()
    a.clock.advance(10)
    b.clock.advance(20)  # B's write is the later one: it wins LWW and is displayed
    a.update_record(t2, {"name": "alpha"})
    b.update_record(t2, {"name": "beta"})
    net.sync_all()
    return a, b, {"p1": p1, "p2": p2, "t1": t1, "t2": t2, "t3": t3, "gone": gone, "link": link,
                  "dead": dead, "n1": n1, "n2": n2, "n3": n3}


def _records(ws: Workspace, table: str) -> list[tuple[str, dict[str, Any]]]:
    return [(r["id"], r["values"]) for r in ws.list_records(table)]


def _oplog(ws: Workspace) -> list[Any]:
    return [open_bundle(rec, ws.ws, verify_sig=False) for rec in ws.storage.bundles_since({})]


def test_fork_copies_current_state_under_the_same_ids(net: Net, tmp_path: Path) -> None:
    a, b, x = _build(net)
    (conflict,) = b.list_conflicts()
    assert conflict["entity_id"] == ids.to_text(x["t2"])
    src_digest, src_gh = b.oplog_digest(), b.genesis_hash()
    fork, report = b.ws.fork(tmp_path / "fork", "Forked show")
    try:
        assert fork.ws != b.ws.ws
        # schema: same table ids, field names, types, options, CRDT flags, in the same order
        assert fork.list_tables() == b.list_tables()
        assert fork.views.edge_types() == b.views.edge_types()
        mappings = "SELECT key_a, key_b, confirmed FROM mappings ORDER BY key_a"
        assert list(fork.proj.conn.execute(mappings)) == list(b.proj.conn.execute(mappings))
        # records: same ids and displayed values (the conflict's shown value included)
        survivor, absorbed = min(x["p1"], x["p2"]), max(x["p1"], x["p2"])
        as_survivor = {ids.to_text(absorbed): ids.to_text(survivor)}
        for table in ("Task", "Person"):
            expected = [(e, {k: as_survivor.get(v, v) if k == "owner" else v
                             for k, v in vals.items()}) for e, vals in _records(b.ws, table)]
            assert _records(fork, table) == expected
        shown = b.get_record(x["t2"])["values"]["name"]
        assert fork.get_record(x["t2"])["values"]["name"] == shown == "beta"
        assert fork.list_conflicts() == []
        assert fork.get_record(x["t1"])["values"]["notes"] == "Draft v2"
        # the absorbed person is not copied; the reference to it reads the survivor
        assert fork.views.is_live(survivor) and fork.views.entity_row(absorbed) is None
        assert fork.get_record(x["t2"])["values"]["owner"] == ids.to_text(survivor)
        assert fork.views.entity_row(x["gone"]) is None
        # edges: same ids, ends, index order and properties; the deleted one is not copied
        assert fork.list_edges() == b.list_edges()
        assert [e["id"] for e in fork.list_edges(survivor, NEXT, "in")] == [
            ids.to_text(g) for g in (x["n3"], x["n1"], x["n2"])]
        (link,) = fork.list_edges(x["t1"], LINK, "out")
        assert (link["id"], link["props"]) == (ids.to_text(x["link"]), {"weight": 7})
        assert fork.views.edge(x["dead"]) is None
        # the report
        assert report["ws"] == ids.to_text(fork.ws) and report["name"] == "Forked show"
        live = len(b.views.record_ids(b.views.table("Task").facet)) + len(
            b.views.record_ids(b.views.table("Person").facet))
        assert report["records"] == live
        assert report["edges"] == len(b.list_edges())
        (item,) = report["open_conflicts"]
        assert item["conflict_id"] == conflict["conflict_id"]
        assert item["copied"] is True and item["copied_value"] == shown
        assert sorted(item["values"]) == ["alpha", "beta"]
        assert fork.verify()["ok"]
    finally:
        fork.close()
    # the genesis names the forker owner and the source it came from
    reopened = Workspace.open(tmp_path / "fork", b.ws.ident)
    try:
        bundles = _oplog(reopened)
        genesis = bundles[0].ops[0]
        assert genesis.t == "CreateWorkspace"
        assert genesis.p["forked_from"] == {"ws": b.ws.ws, "genesis_hash": src_gh,
                                            "oplog_digest": src_digest}
        assert genesis.p["name"] == "Forked show"
        lc = reopened.lifecycle()
        assert lc.owner == b.ws.actor != a.ws.actor
        assert lc.join_mode == "open"
        # no history: only the forker's genesis and import bundles, holding no edits
        assert {bd.actor for bd in bundles} == {b.ws.actor}
        assert [bd.kind for bd in bundles] == ["user"] + ["import"] * (len(bundles) - 1)
        assert {op.t for bd in bundles for op in bd.ops} <= FORK_OPS
        assert not any(op.t == "PutConfig" and op.p["ns"] == "actor"
                       and op.p["key"] == a.ws.actor.hex() for bd in bundles for op in bd.ops)
        notes = [op for bd in bundles for op in bd.ops if op.t == "SetCRDTField"]
        assert len(notes) == 1  # one full-state update, not the three edits
        assert reopened.verify()["ok"]
    finally:
        reopened.close()
    # the source recorded the fork, in an ordinary user bundle of the forker
    (value,) = [bytes(v) for (v,) in b.proj.conn.execute(
        "SELECT value FROM config WHERE ns = 'fork' AND key = ?", (report["ws"],))]
    assert codec.decode(value) == {}
    last = _oplog(b.ws)[-1]
    assert (last.kind, last.actor, last.ops[0].t) == ("user", b.ws.actor, "PutConfig")


def test_fork_refusals_write_nothing(net: Net, tmp_path: Path) -> None:
    a = net.add_peer("A")
    a.create_table("Task", TASK)
    head = a.storage.head_seq()
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(ValidationError):
            a.ws.fork(tmp_path / "f1", bad)
    assert not (tmp_path / "f1").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(ValidationError):
        a.ws.fork(busy, "Copy")
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    joining = net.add_peer("J")  # an empty replica: no genesis to fork from yet
    with pytest.raises(ValidationError):
        joining.ws.fork(tmp_path / "f2", "Copy")
    assert a.storage.head_seq() == head


def test_fork_of_a_fork_and_empty_workspace(net: Net, tmp_path: Path) -> None:
    """A workspace with nothing but its genesis forks to a genesis alone; forking the fork
    points at the fork."""
    a = net.add_peer("A")
    f1, r1 = a.ws.fork(tmp_path / "f1", "One")
    try:
        assert (r1["records"], r1["edges"], r1["open_conflicts"]) == (0, 0, [])
        assert len(_oplog(f1)) == 1
        f2, _ = f1.fork(tmp_path / "f2", "Two")
        try:
            origin = _oplog(f2)[0].ops[0].p["forked_from"]
            assert origin["ws"] == f1.ws and origin["genesis_hash"] == f1.genesis_hash()
        finally:
            f2.close()
    finally:
        f1.close()


def test_fork_keeps_module_and_rule_documents(net: Net, tmp_path: Path) -> None:
    """Adopted modules and rules describe the data: a fork keeps them (and they still work)."""
    from openprod.engine.manifest import load_package

    modules = Path(__file__).resolve().parents[2] / "modules"
    a = net.add_peer("a")
    a.adopt_module(load_package(modules / "contacts"))
    a.adopt_module(load_package(modules / "crew-calls"))
    rid, _ = a.put_rule("crew_calls.crew_are_contacts", {
        "source": "crew_calls.Crew", "target": "contacts.People",
        "when": {"field": "active", "op": "eq", "value": True}, "auto_accept": True,
        "enabled": True})
    forked, _ = a.fork(tmp_path / "fork", "Fork")
    try:
        assert [r["id"] for r in forked.list_rules()] == [rid]
        assert forked.list_rules()[0]["status"] == "active"
        assert set(modmod_configs(forked)) == {"contacts", "crew_calls"}
        e = forked.create_record("crew_calls.Crew", {"name": "Ann"}).id
        assert "contacts.People" in forked.get_record(e)["tables"]
    finally:
        forked.close()


def modmod_configs(ws: Workspace) -> dict[str, Any]:
    from openprod.engine.modules import module_configs

    return module_configs(ws.views)
