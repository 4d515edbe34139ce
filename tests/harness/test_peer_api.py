"""The `Peer` harness API (spec 03 §9): one node driven through its real HTTP routes in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors.oplog_writer import ShuttingDown
from openprod.core import hlc
from openprod.core.errors import EntityDeleted, NotFound, ValidationError
from openprod.engine.overlays import OverlayNotFound
from tests.harness import HarnessApiError, Peer, error_class, open_peer
from tests.harness.peer import FieldSpec
from tests.helpers import T0, ManualClock

FIELDS: list[FieldSpec] = [("Name", "text"), ("Dur", "float"), ("Count", "integer"),
          ("Kind", "enum", {"choices": ["go", "standby"]}),
          {"label": "Notes", "type": "text", "crdt": True}]


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    async with trio.open_nursery() as n:
        p = await open_peer(n, tmp_path, "alice")
        yield p
        await p.aclose()
        n.cancel_scope.cancel()


async def test_open_peer_attributes(peer: Peer) -> None:
    assert peer.name == "alice"
    assert peer.clock() == T0
    assert peer.actor_id == peer.node.ident.actor.hex() and len(peer.actor_id) == 64
    cur = await peer.current()
    assert cur["id"] == peer.ws_id and cur["name"] == "Test"
    assert cur["display_name"] == "alice"


async def test_tables_and_records(peer: Peer) -> None:
    t = await peer.create_table("Cues", FIELDS)
    assert t.startswith("workspace.t_")
    [table] = await peer.list_tables()
    assert table["id"] == t and [(f["label"], f["type"]) for f in table["fields"]] == [
        ("Name", "text"), ("Dur", "float"), ("Count", "integer"), ("Kind", "enum"),
        ("Notes", "text")]
    a = await peer.create_record(t, {"Name": "Q1", "Dur": 2.5, "Kind": "go"})
    b = await peer.create_record("Cues", {"Name": "Q2", "Count": 3})
    await peer.update_record(a, t, {"Dur": 4.0, "Notes": "hello"})
    rows = {r["id"]: r for r in await peer.list_records(t)}
    assert rows[a] == {"id": a, "Name": "Q1", "Dur": 4.0, "Count": None, "Kind": "go",
                       "Notes": "hello"}
    assert rows[b]["Name"] == "Q2" and rows[b]["Count"] == 3
    rec = await peer.get_record(a)
    assert rec["id"] == a and rec["tables"] == [t]
    [table] = await peer.list_tables()
    labels = {f["name"]: f["label"] for f in table["fields"]}
    assert {labels[k]: v for k, v in rec["values"].items()} == {
        "Name": "Q1", "Dur": 4.0, "Count": None, "Kind": "go", "Notes": "hello"}

    await peer.clear_field(a, t, "Dur")
    assert {r["id"]: r for r in await peer.list_records(t)}[a]["Dur"] is None
    await peer.edit_text(a, t, "Notes", 5, insert=" world")
    await peer.edit_text(a, t, "Notes", 0, delete=1, insert="H")
    assert {r["id"]: r for r in await peer.list_records(t)}[a]["Notes"] == "Hello world"

    await peer.delete_record(b)
    assert [r["id"] for r in await peer.list_records(t)] == [a]
    with pytest.raises(NotFound) as exc:
        await peer.get_record(b)
    assert exc.value.status == 404  # type: ignore[attr-defined]
    with pytest.raises(EntityDeleted):
        await peer.update_record(b, t, {"Name": "gone"})


async def test_typed_errors(peer: Peer) -> None:
    t = await peer.create_table("Cues", FIELDS)
    with pytest.raises(NotFound) as nf:
        await peer.create_record("No such table", {"Name": "x"})
    assert nf.value.code == "not_found" and nf.value.details == {"table": "No such table"}
    with pytest.raises(ValidationError) as bad:
        await peer.create_record(t, {"Kind": "nope"})
    assert bad.value.code == "invalid" and bad.value.status == 400  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        await peer.create_table("Cues", [])  # a table of that name exists
    with pytest.raises(ValidationError):
        await peer.update_record("not-an-id", t, {"Name": "x"})
    with pytest.raises(OverlayNotFound):
        await peer.activate_overlay("0190a5b4-0000-7000-8000-000000000000")
    # an error code only a plain ApiError carries
    one = await peer.create_overlay("one")
    await peer.stash_overlay(one)
    two = await peer.create_overlay("two")
    with pytest.raises(HarnessApiError) as busy:
        await peer.activate_overlay(one)
    assert busy.value.code == "overlay_active" and busy.value.status == 409
    assert busy.value.details["active"] == two
    assert error_class("shutting_down") is ShuttingDown
    assert error_class("overlay_active") is None


async def test_edges(peer: Peer) -> None:
    t = await peer.create_table("Cues", [("Name", "text")])
    show, a, b, c = [await peer.create_record(t, {"Name": n}) for n in "SABC"]
    await peer.define_edge_type("workspace.related", props={"note": "text"})
    await peer.define_edge_type("workspace.cue_in", ordered=True)
    g = await peer.create_edge("workspace.related", a, b, {"note": "x"})
    e = await peer.get_edge(g)
    assert (e["type"], e["src"], e["dst"], e["props"]) == ("workspace.related", a, b, {"note": "x"})
    await peer.set_edge_property(g, "note", "y")
    assert (await peer.get_edge(g))["props"] == {"note": "y"}
    await peer.clear_edge_property(g, "note")
    assert (await peer.get_edge(g))["props"] == {}

    ea = await peer.create_ordered_edge("workspace.cue_in", a, show)
    ec = await peer.create_ordered_edge("workspace.cue_in", c, show, after=ea)
    eb = await peer.create_ordered_edge("workspace.cue_in", b, show, before=ec)

    async def order() -> list[str]:
        return [x["id"] for x in await peer.list_edges(show, type="workspace.cue_in")]
    assert await order() == [ea, eb, ec]
    await peer.move_edge(ea, after=ec)
    assert await order() == [eb, ec, ea]
    await peer.move_edge(ea, before=eb)
    assert await order() == [ea, eb, ec]

    await peer.delete_edge(g)
    assert g not in [x["id"] for x in await peer.list_edges(a)]
    with pytest.raises(NotFound):
        await peer.get_edge(g)
    with pytest.raises(NotFound):
        await peer.create_edge("workspace.nope", a, b)


async def test_undo_redo(peer: Peer) -> None:
    t = await peer.create_table("Cues", [("Name", "text")])
    r = await peer.create_record(t, {"Name": "Q1"})
    await peer.update_record(r, t, {"Name": "Q2"})
    u = await peer.undo()
    assert u["status"] == "applied" and u["can_redo"] is True
    assert (await peer.list_records(t))[0]["Name"] == "Q1"
    d = await peer.redo()
    assert d["status"] == "applied"
    assert (await peer.list_records(t))[0]["Name"] == "Q2"


async def test_overlay_create_commit(peer: Peer) -> None:
    t = await peer.create_table("Cues", [("Name", "text")])
    r = await peer.create_record(t, {"Name": "Q1"})
    oid = await peer.create_overlay("draft")
    [ov] = await peer.list_overlays()
    assert ov["id"] == oid and ov["status"] == "active"
    staged = await peer.update_record(r, t, {"Name": "Q1 staged"})
    assert staged.get("staged") is True
    new = await peer.create_record(t, {"Name": "Q2"})
    changes = await peer.overlay_changes(oid)
    assert {c["op"] for c in changes["changes"]} >= {"SetField", "CreateEntity"}
    names = sorted(x["Name"] for x in await peer.list_records(t))
    assert names == ["Q1 staged", "Q2"]
    before = len(await peer.bundles())
    out = await peer.commit_overlay(oid)
    assert out["bundle_id"] is not None
    bundles = await peer.bundles()
    assert len(bundles) == before + 1 and bundles[-1]["kind"] == "overlay_commit"
    assert await peer.list_overlays() == []
    rows = {x["id"]: x["Name"] for x in await peer.list_records(t)}
    assert rows == {r: "Q1 staged", new: "Q2"}


async def test_merge_split_tables(peer: Peer) -> None:
    cues = await peer.create_table("Cues", [("Name", "text")])
    props = await peer.create_table("Props", [("Item", "text")])
    a = await peer.create_record(cues, {"Name": "A"})
    b = await peer.create_record(cues, {"Name": "B"})
    await peer.add_to_table(a, props, {"Item": "lamp"})
    rec = await peer.get_record(a)
    assert sorted(rec["tables"]) == sorted([cues, props])
    new = await peer.split(a, [props])
    assert (await peer.get_record(new))["tables"] == [props]
    assert (await peer.get_record(a))["tables"] == [cues]
    await peer.remove_from_table(new, props)  # its only table: the record goes
    with pytest.raises(NotFound):
        await peer.get_record(new)
    m = await peer.merge(a, b)
    survivor = m["survivor"]
    assert survivor == min(a, b)
    assert len(await peer.list_records(cues)) == 1
    assert (await peer.get_record(max(a, b)))["id"] == survivor  # merged ids read the survivor


async def test_events(peer: Peer) -> None:
    t = await peer.create_table("Cues", [("Name", "text")])
    await peer.settled()
    async with peer.events() as events:
        r = await peer.create_record(t, {"Name": "Q1"})
        ev = await events.next("records_changed")
        assert ev["table"] == t and ev["entity_ids"] == [r]
        u = await peer.update_record(r, t, {"Name": "Q2"})
        ev = await events.next("records_changed")
        assert ev["entity_ids"] == [r] and ev["seq"] == u["seq"]


async def test_bundles_clock_vc_verify(peer: Peer) -> None:
    [genesis] = await peer.bundles()
    assert genesis["kind"] == "user" and genesis["actor"] == peer.actor_id
    assert genesis["ops"][0]["t"] == "CreateWorkspace"
    assert genesis["ops"][0]["owner"] == peer.actor_id
    assert hlc.wall_ms(bytes.fromhex(genesis["hlc"])) == T0  # the genesis used the peer's clock
    peer.clock.set(T0 + 60_000)
    t = await peer.create_table("Cues", [("Name", "text")])
    peer.clock.advance(5)
    r = await peer.create_record(t, {"Name": "Q1"})
    bundles = await peer.bundles()
    assert bundles[0]["bundle_id"] == genesis["bundle_id"]
    last = bundles[-1]
    assert hlc.wall_ms(bytes.fromhex(last["hlc"])) == T0 + 60_005
    assert [o["t"] for o in last["ops"]] == ["CreateEntity", "AttachFacet", "SetField"]
    assert last["ops"][0]["e"] == r and all(set(o) >= {"op_id", "t", "hlc"}
                                             for o in last["ops"])
    assert await peer.vector_clock() == {peer.actor_id: last["hlc"]}
    assert len(await peer.state_hash()) == 64 and len(await peer.oplog_digest()) == 64
    assert await peer.verify() is True


async def test_restart_keeps_data(peer: Peer) -> None:
    t = await peer.create_table("Cues", [("Name", "text")])
    r = await peer.create_record(t, {"Name": "Q1"})
    state, digest = await peer.state_hash(), await peer.oplog_digest()
    vc = await peer.vector_clock()
    old = peer.node.current
    await peer.restart()
    assert old.done.is_set() and peer.node.current is not old
    with pytest.raises(ShuttingDown):
        await old.writer.call(lambda ws: ws.vclock())
    assert await peer.list_records(t) == [{"id": r, "Name": "Q1"}]
    assert (await peer.state_hash(), await peer.oplog_digest(), await peer.vector_clock()) == (
        state, digest, vc)
    await peer.update_record(r, t, {"Name": "Q2"})
    assert (await peer.list_records(t))[0]["Name"] == "Q2"
    assert await peer.verify() is True


async def test_joined_peer_is_empty_replica(tmp_path: Path) -> None:
    async with trio.open_nursery() as n:
        a = await open_peer(n, tmp_path, "a")
        b = await open_peer(n, tmp_path, "b", ws_id=a.ws_id, clock=ManualClock(T0 + 1))
        assert b.ws_id == a.ws_id and b.actor_id != a.actor_id
        assert b.clock() == T0 + 1
        assert await b.bundles() == [] and await b.vector_clock() == {}
        assert len(await a.bundles()) == 1
        await a.aclose()
        await b.aclose()
        assert a.node.session is None and b.node.session is None
        n.cancel_scope.cancel()
