"""Conflicts at the engine layer (spec 02 §1): scenarios C1–C20 of §4 through the Workspace facade
and its `ConflictProjection` (`ws.conflicts`), plus the resolution command's errors and events.

"Converged" = equal state hashes and equal conflict records on every peer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from openprod.core import codec, ids
from openprod.core import ops as O
from openprod.core.errors import NotFound, ValidationError
from openprod.engine.conflicts import (
    ConflictAlreadyResolved,
    ConflictNotFound,
    StaleConflictState,
    conflict_id,
)
from openprod.engine.state import ENTITY_KEY
from tests.helpers import T0, Net, Peer, shuffled

FIELDS = [
    {"label": "name", "name": "name"},
    {"label": "status", "name": "status"},
    {"label": "notes", "name": "notes", "crdt": True},
    {"label": "memo", "name": "memo"},
]
LINK = "test.link"


# --- helpers ---------------------------------------------------------------------------------

def shared(net: Net, names: tuple[str, ...] = ("A", "B"), vals: dict[str, Any] | None = None,
           ) -> tuple[list[Peer], bytes]:
    """"E shared": the first peer creates Task E(name="orig"), all sync."""
    peers = [net.add_peer(n) for n in names]
    a = peers[0]
    a.create_table("Task", FIELDS)
    a.define_edge_type(LINK, "Link")
    e = a.create_record("Task", vals or {"name": "orig"}).id
    net.sync_all()
    return peers, e


@contextmanager
def fresh_net(root: Path) -> Iterator[Net]:
    n = Net(root)
    try:
        yield n
    finally:
        for p in n.peers:
            p.ws.close()


def slot(p: Peer, field: str, table: str = "Task") -> str:
    f = p.views.table(table).field(field)
    return str(p.proj.slot_of(f.facet, f.name))


def op_ids(p: Peer, bundle_id: bytes | None) -> list[bytes]:
    return [bytes(o) for (o,) in p.storage.conn.execute(
        "SELECT op_id FROM ops WHERE bundle_id = ? ORDER BY pos", (bundle_id,))]


def op_of(p: Peer, op_id: bytes) -> tuple[str, dict[str, Any], bytes]:
    for t, body, h in p.storage.conn.execute(
            "SELECT t, body, hlc FROM ops WHERE op_id = ?", (op_id,)):
        return t, codec.decode(bytes(body))["p"], bytes(h) + op_id
    raise AssertionError("no such op")


def ops_in(p: Peer, bundle_id: bytes | None) -> list[tuple[str, dict[str, Any]]]:
    return [op_of(p, o)[:2] for o in op_ids(p, bundle_id)]


def the_op(p: Peer, bundle_id: bytes | None) -> bytes:
    (o,) = op_ids(p, bundle_id)
    return o


def open_conflicts(p: Peer) -> list[dict[str, Any]]:
    return p.list_conflicts()


def record(p: Peer, cid: bytes) -> dict[str, Any]:
    rec = p.conflicts.get(cid)
    assert rec is not None
    return rec


def tip_ids(rec: dict[str, Any]) -> set[bytes]:
    return {ids.from_text(t["op_id"]) for t in rec["tips"]}


def val(p: Peer, e: bytes, field: str) -> Any:
    return p.get_record(e)["values"][field]


def converged(net: Net, peers: list[Peer] | None = None) -> dict[bytes, Any]:
    """Equal state hashes and conflict records on all peers; records equal a full replay."""
    peers = peers or net.peers
    net.assert_converged(peers)
    recs = [p.conflicts.records() for p in peers]
    assert all(r == recs[0] for r in recs)
    replayed = peers[0].conflicts
    replayed.rebuild()
    assert replayed.records() == recs[0]
    return recs[0]


def lww(p: Peer, *op: bytes) -> bytes:
    return max(op, key=lambda o: op_of(p, o)[2])


def c1(net: Net) -> tuple[Peer, Peer, bytes, bytes, bytes]:
    """A name=a, B name=b, sync_all: returns A, B, E and the two write op ids."""
    (a, b), e = shared(net)
    wa = the_op(a, a.update_record(e, {"name": "a"}).bundle_id)
    wb = the_op(b, b.update_record(e, {"name": "b"}).bundle_id)
    net.sync_all()
    return a, b, e, wa, wb


# --- C1–C7: detection ---------------------------------------------------------------------------

def test_c1_concurrent_writes_open_one_conflict(net: Net) -> None:
    a, b, e, wa, wb = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    win = lww(a, wa, wb)
    for p in (a, b):
        (rec,) = open_conflicts(p)
        assert rec["conflict_id"] == ids.to_text(cid)
        assert rec["kind"] == "field" and rec["field"] == slot(a, "name")
        assert rec["field_label"] == "name"
        assert rec["entity_id"] == ids.to_text(e)
        assert rec["status"] == "open" and rec["reopened"] is False
        assert tip_ids(rec) == {wa, wb}
        assert {t["value"] for t in rec["tips"]} == {"a", "b"}
        assert {t["actor"] for t in rec["tips"]} == {a.actor.hex(), b.actor.hex()}
        assert rec["display_value"] == ("a" if win == wa else "b")
        assert val(p, e, "name") == rec["display_value"]
        assert rec["resolutions"] == [] and rec["rejected_resolutions"] == []
    converged(net)


def test_c1_conflict_opened_event(net: Net) -> None:
    (a, b), e = shared(net)
    a.update_record(e, {"name": "a"})
    b.update_record(e, {"name": "b"})
    net.sync(a, b)
    (ev,) = b.catch_up_conflicts()
    assert ev == {"type": "conflict_opened", "conflict_id": ids.to_text(conflict_id(
        e, slot(b, "name"))), "entity_id": ids.to_text(e), "field": slot(b, "name"),
        "kind": "field", "reopened": False}


def test_c2_sequential_writes_do_not_conflict(net: Net) -> None:
    (a, b), e = shared(net)
    a.update_record(e, {"name": "a"})
    net.sync(a, b)
    b.update_record(e, {"name": "b"})
    net.sync(b, a)
    for p in (a, b):
        assert p.list_conflicts("all") == []
        assert val(p, e, "name") == "b"
    converged(net)


def test_c3_different_fields_never_conflict(net: Net) -> None:
    (a, b), e = shared(net)
    a.update_record(e, {"name": "a"})
    b.update_record(e, {"status": "s"})
    net.sync_all()
    for p in (a, b):
        assert p.list_conflicts("all") == []
        assert (val(p, e, "name"), val(p, e, "status")) == ("a", "s")
    converged(net)


def test_c4_own_successive_edits_do_not_conflict(net: Net) -> None:
    (a, b), e = shared(net)
    a.update_record(e, {"name": "a1"})
    net.sync_all()
    a.update_record(e, {"name": "a2"})
    net.sync_all()
    for p in (a, b):
        assert p.list_conflicts("all") == []
        assert val(p, e, "name") == "a2"


def _c5_writes(net: Net) -> tuple[Peer, Peer, bytes, list[bytes], list[bytes]]:
    (a, b), e = shared(net, vals={"name": "orig", "status": "todo"})
    wa = [a.update_record(e, {"status": v}).bundle_id for v in ("blocked", "wontfix", "blocked")]
    wb = [b.update_record(e, {"status": v}).bundle_id for v in ("in_progress", "done")]
    return a, b, e, [the_op(a, x) for x in wa], [the_op(b, x) for x in wb]


@pytest.mark.parametrize("order", ["sync_all", "one_by_one", "a_to_b_first"])
def test_c5_only_each_branch_latest_is_a_tip(net: Net, order: str) -> None:
    a, b, e, wa, wb = _c5_writes(net)
    if order == "one_by_one":
        for rec in b.ops_since(a.vclock()):
            net.deliver(a, [rec])
        net.sync(a, b)
    elif order == "a_to_b_first":
        net.sync(a, b)
        net.sync(b, a)
    else:
        net.sync_all()
    cid = conflict_id(e, slot(a, "status"))
    for p in (a, b):
        rec = record(p, cid)
        assert rec["status"] == "open"
        assert tip_ids(rec) == {wa[-1], wb[-1]}
        assert sorted(t["value"] for t in rec["tips"]) == ["blocked", "done"]
    converged(net)


def test_c6_three_way_conflict(net: Net) -> None:
    peers, e = shared(net, ("A", "B", "C"))
    ws = [the_op(p, p.update_record(e, {"name": p.name}).bundle_id) for p in peers]
    net.sync_all()
    for p in peers:
        (rec,) = open_conflicts(p)
        assert tip_ids(rec) == set(ws)
        assert len({t["actor"] for t in rec["tips"]}) == 3
    converged(net)


def test_c7_display_is_lww_with_clock_ahead(net: Net) -> None:
    (a, b), e = shared(net)
    a.update_record(e, {"name": "a"})
    b.clock.set(T0 + 60_000)
    b.update_record(e, {"name": "b"})
    net.sync_all()
    for p in (a, b):
        (rec,) = open_conflicts(p)
        assert rec["display_value"] == "b" and rec["status"] == "open"
        assert val(p, e, "name") == "b"
        assert "name" in p.get_record(e)["conflicts"]


# --- C8–C13: resolution ---------------------------------------------------------------------

def test_c8_resolution_is_one_tagged_write(net: Net) -> None:
    a, b, e, wa, wb = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    n = b.storage.op_count()
    res = b.resolve_conflict(ids.to_text(cid), "r")
    assert b.storage.op_count() == n + 1
    kinds = [k for (k,) in b.storage.conn.execute(
        "SELECT kind FROM bundles WHERE bundle_id = ?", (res.bundle_id,))]
    assert kinds == ["resolution"]
    ((t, p),) = ops_in(b, res.bundle_id)
    assert t == "SetField" and p["value"] == ["text", "r"]
    assert p["resolves"] == sorted([wa, wb]) and p["conflict"] == cid
    assert b.catch_up_conflicts()[0]["type"] == "conflict_resolved"
    net.sync_all()
    for peer in (a, b):
        assert open_conflicts(peer) == []
        (rec,) = peer.list_conflicts("all")
        assert rec["status"] == "resolved" and rec["display_value"] == "r"
        assert [r["op_id"] for r in rec["resolutions"]] == [ids.to_text(the_op(b, res.bundle_id))]
        assert val(peer, e, "name") == "r"
    converged(net)


def test_c9_resolve_with_a_tip_value_or_clear(net: Net) -> None:
    a, b, e, _, _ = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    a.resolve_conflict(cid, "a")
    net.sync_all()
    assert (val(a, e, "name"), val(b, e, "name")) == ("a", "a")
    assert record(b, cid)["status"] == "resolved"
    # and clearing (on another field)
    a.update_record(e, {"status": "x"})
    b.update_record(e, {"status": "y"})
    net.sync_all()
    cid2 = conflict_id(e, slot(a, "status"))
    res = b.resolve_conflict(cid2, None)
    ((t, p),) = ops_in(b, res.bundle_id)
    assert t == "ClearField" and len(p["resolves"]) == 2 and p["conflict"] == cid2
    net.sync_all()
    for peer in (a, b):
        rec = record(peer, cid2)
        assert rec["status"] == "resolved" and rec["display_value"] is None
        assert val(peer, e, "status") is None
    converged(net)


def test_c10_resolving_twice_raises_and_appends_nothing(net: Net) -> None:
    a, _b, e, _, _ = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    a.resolve_conflict(cid, "r")
    n = a.storage.op_count()
    with pytest.raises(ConflictAlreadyResolved) as exc:
        a.resolve_conflict(cid, "again")
    assert exc.value.code == "conflict_resolved"
    assert a.storage.op_count() == n


def test_resolve_errors_not_found_and_stale(net: Net) -> None:
    a, _b, e, wa, wb = c1(net)
    n = a.storage.op_count()
    with pytest.raises(ConflictNotFound) as nf:
        a.resolve_conflict(ids.new_id(), "x")
    assert nf.value.code == "conflict_not_found" and isinstance(nf.value, NotFound)
    cid = conflict_id(e, slot(a, "name"))
    with pytest.raises(StaleConflictState) as st:
        a.resolve_conflict(cid, "x", expected_tips=[wa])
    assert st.value.code == "stale_conflict_state"
    with pytest.raises(ValidationError):
        a.resolve_conflict(cid, "x", choice="restore")
    assert a.storage.op_count() == n
    a.resolve_conflict(cid, "x", expected_tips=[ids.to_text(wb), ids.to_text(wa)])
    assert a.storage.op_count() == n + 1


def test_c11_concurrent_resolutions_earlier_wins(net: Net) -> None:
    a, b, e, _, _ = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    ra = the_op(a, a.resolve_conflict(cid, "x").bundle_id)
    rb = the_op(b, b.resolve_conflict(cid, "y").bundle_id)
    net.sync_all()
    first = min((ra, "x"), (rb, "y"), key=lambda r: op_of(a, r[0])[2])
    loser = rb if first[0] == ra else ra
    for p in (a, b):
        assert {ra, rb} <= set(bytes(o) for (o,) in p.storage.conn.execute(
            "SELECT op_id FROM ops"))
        rec = record(p, cid)
        assert rec["status"] == "resolved" and rec["reopened"] is False
        assert rec["display_value"] == first[1]
        assert [r["op_id"] for r in rec["resolutions"]] == [ids.to_text(first[0])]
        assert [r["op_id"] for r in rec["rejected_resolutions"]] == [ids.to_text(loser)]
        # the record shows the accepted resolution, not the later-stamped rejected one
        assert val(p, e, "name") == first[1]
        assert p.get_record(e)["conflicts"] == []
    converged(net)


def test_c11_rejection_event(net: Net) -> None:
    a, b, e, _, _ = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    a.clock.advance(-1)  # A's resolution is the earlier one
    ra = the_op(a, a.resolve_conflict(cid, "x").bundle_id)
    b.clock.advance(5)
    rb = the_op(b, b.resolve_conflict(cid, "y").bundle_id)
    assert op_of(a, ra)[2] < op_of(b, rb)[2]
    net.sync(a, b)
    events = b.catch_up_conflicts()
    assert "resolution_rejected" in [ev["type"] for ev in events]
    assert {ev["op_id"] for ev in events if ev["type"] == "resolution_rejected"} \
        == {ids.to_text(rb)}


def test_c12_late_edit_reopens_the_same_conflict(net: Net) -> None:
    (a, b, d), e = shared(net, ("A", "B", "D"))
    a.update_record(e, {"name": "a"})
    b.update_record(e, {"name": "b"})
    net.sync_all([a, b])
    cid = conflict_id(e, slot(a, "name"))
    r = the_op(b, b.resolve_conflict(cid, "r").bundle_id)
    b.catch_up_conflicts()  # B's resolution applied (events are per catch-up batch)
    net.sync(b, a)
    d.clock.set(T0 + 200_000)
    wd = the_op(d, d.update_record(e, {"name": "d"}).bundle_id)
    net.sync(d, b)
    events = b.catch_up_conflicts()
    assert [ev["type"] for ev in events] == ["conflict_opened"]
    assert events[0]["reopened"] is True
    rec = record(b, cid)
    assert rec["status"] == "open" and rec["reopened"] is True
    assert tip_ids(rec) == {r, wd}
    assert rec["display_value"] == "r"
    assert [t["is_resolution"] for t in rec["tips"] if ids.from_text(t["op_id"]) == r] == [True]
    net.sync_all()
    for p in (a, b, d):
        assert record(p, cid) == rec
        # the record read shows the accepted resolution, not the later-stamped late edit
        assert val(p, e, "name") == "r"
        assert "name" in p.get_record(e)["conflicts"]
    converged(net)
    b.resolve_conflict(cid, "final")
    net.sync_all()
    for p in (a, b, d):
        rec = record(p, cid)
        assert rec["status"] == "resolved" and rec["display_value"] == "final"
        assert len(rec["resolutions"]) == 2
    converged(net)


def test_c13_edits_after_a_resolution_open_a_new_episode(net: Net) -> None:
    a, b, e, _, _ = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    b.resolve_conflict(cid, "r")
    net.sync_all()
    w1 = the_op(a, a.update_record(e, {"name": "a2"}).bundle_id)
    w2 = the_op(b, b.update_record(e, {"name": "b2"}).bundle_id)
    net.sync_all()
    for p in (a, b):
        rec = record(p, cid)
        assert rec["status"] == "open" and rec["reopened"] is False
        assert tip_ids(rec) == {w1, w2}
        assert len(rec["resolutions"]) == 1
    converged(net)


def test_local_write_to_an_open_field_is_a_resolution(net: Net) -> None:
    a, b, e, wa, wb = c1(net)
    cid = conflict_id(e, slot(a, "name"))
    res = a.update_record(e, {"name": "m", "status": "s"})
    by_field = {p["field"]: p for _, p in ops_in(a, res.bundle_id)}
    assert by_field["name"]["resolves"] == sorted([wa, wb])
    assert by_field["name"]["conflict"] == cid
    assert "resolves" not in by_field["status"] and "conflict" not in by_field["status"]
    net.sync_all()
    for p in (a, b):
        rec = record(p, cid)
        assert rec["status"] == "resolved" and rec["display_value"] == "m"
        assert val(p, e, "name") == "m"


def test_resolve_field_delegates_and_reports_no_open_conflict(net: Net) -> None:
    a, _b, e, _, _ = c1(net)
    res = a.resolve_field(e, "Task", "name", "r")
    ((_, p),) = ops_in(a, res.bundle_id)
    assert p["conflict"] == conflict_id(e, slot(a, "name"))
    with pytest.raises(NotFound, match="no open conflict"):
        a.resolve_field(e, "Task", "name", "again")


# --- C14: permutations ----------------------------------------------------------------------

def test_c14_permutations_to_fresh_peers_agree(net: Net, tmp_path: Path) -> None:
    (a, b, d), e = shared(net, ("A", "B", "D"))
    a.update_record(e, {"name": "a", "status": "x"})
    b.update_record(e, {"name": "b", "status": "y"})
    net.sync_all([a, b])
    cid = conflict_id(e, slot(a, "name"))
    b.resolve_conflict(cid, "r")
    a.resolve_conflict(conflict_id(e, slot(a, "status")), "z")
    d.clock.set(T0 + 100_000)
    d.update_record(e, {"name": "d"})
    net.sync_all()
    want = converged(net)
    assert want
    records = a.ops_since({})
    with fresh_net(tmp_path / "fresh") as fresh:
        fresh.ws_id = net.ws_id
        peers = [fresh.add_peer(f"F{i}") for i in range(3)]
        for i, p in enumerate(peers):
            for rec in shuffled(records, seed=i) if i else list(reversed(records)):
                fresh.deliver(p, [rec])
        for p in peers:
            assert p.conflicts.records() == want
            assert p.get_record(e)["values"] == a.get_record(e)["values"]
            p.conflicts.rebuild()
            assert p.conflicts.records() == want
        hashes = {p.state_hash() for p in peers} | {a.state_hash()}
        assert len(hashes) == 1


# --- C15–C17: CRDT and mapped fields --------------------------------------------------------

def test_c15_crdt_fields_never_conflict(net: Net) -> None:
    (a, b), e = shared(net)
    a.edit_text(e, "Task", "notes", 0, 0, "hello ")
    b.edit_text(e, "Task", "notes", 0, 0, "world")
    net.sync_all()
    text = val(a, e, "notes")
    assert "hello" in text and "world" in text and val(b, e, "notes") == text
    assert a.list_conflicts("all") == [] and b.list_conflicts("all") == []
    facet = a.views.table("Task").facet
    with pytest.raises(ValidationError):
        a.set_field_raw(e, facet, "notes", ["text", "x"])
    # injected scalar writes on the CRDT field are inert: no conflict either
    for p, v in ((a, "x"), (b, "y")):
        bundle = p.ws._seal("user", [O.SetField(e, facet, "notes", ["text", v])])
        p.storage.append([bundle])
        p.ws._derive()
    net.sync_all()
    assert a.list_conflicts("all") == [] and b.list_conflicts("all") == []
    converged(net)


def _mapped(net: Net, field: str = "name") -> tuple[Peer, Peer, bytes, str, str]:
    a, b = net.add_peer("A"), net.add_peer("B")
    fc = a.create_table("contacts", [{"label": "name", "name": "name"},
                                     {"label": "notes", "name": "notes"}]).facet
    fk = a.create_table("cast", [{"label": "name", "name": "name"},
                                 {"label": "notes", "name": "notes"}]).facet
    assert fc is not None and fk is not None
    e = a.create_record("contacts", {"name": "orig", "notes": "n"}).id
    a.add_to_table(e, "cast", {"name": "orig", "notes": "n"})
    a.confirm_mapping(f"{fc}.name", f"{fk}.name")
    net.sync_all()
    return a, b, e, fc, fk


def test_c16_mapped_fields_are_one_conflict(net: Net) -> None:
    a, b, e, fc, fk = _mapped(net)
    a.update_record(e, {"name": "x"}, table="contacts")
    b.update_record(e, {"name": "y"}, table="cast")
    net.sync_all()
    skey = min(f"{fc}.name", f"{fk}.name")
    for p in (a, b):
        (rec,) = open_conflicts(p)
        assert rec["field"] == skey and len(rec["tips"]) == 2
    converged(net)
    a.resolve_conflict(conflict_id(e, skey), "r")
    net.sync_all()
    for p in (a, b):
        assert open_conflicts(p) == []
        assert p.views.record(e, p.views.table("contacts"))["values"]["name"] == "r"
        assert p.views.record(e, p.views.table("cast"))["values"]["name"] == "r"
    converged(net)


def test_c17_unmapped_fields_do_not_conflict(net: Net) -> None:
    a, b, e, _, _ = _mapped(net)
    a.update_record(e, {"notes": "x"}, table="contacts")
    b.update_record(e, {"notes": "y"}, table="cast")
    net.sync_all()
    assert a.list_conflicts("all") == [] and b.list_conflicts("all") == []
    converged(net)


def test_mapping_confirmed_after_concurrent_member_writes_unites_tips(net: Net) -> None:
    a, b = net.add_peer("A"), net.add_peer("B")
    fc = a.create_table("contacts", [{"label": "name", "name": "name"}]).facet
    fk = a.create_table("cast", [{"label": "name", "name": "name"}]).facet
    e = a.create_record("contacts", {"name": "orig"}).id
    a.add_to_table(e, "cast", {"name": "orig"})
    net.sync_all()
    a.update_record(e, {"name": "x"}, table="contacts")
    net.sync_all()
    b.update_record(e, {"name": "y"}, table="cast")  # saw x, but on another field then
    net.sync_all()
    assert a.list_conflicts() == []
    a.confirm_mapping(f"{fc}.name", f"{fk}.name")
    net.sync_all()
    for p in (a, b):
        (rec,) = open_conflicts(p)
        assert sorted(t["value"] for t in rec["tips"]) == ["x", "y"]
    converged(net)
    a.reject_mapping(f"{fc}.name", f"{fk}.name")
    net.sync_all()
    assert a.list_conflicts("all") == [] and b.list_conflicts("all") == []
    converged(net)


# --- C18–C20: delete vs edit ----------------------------------------------------------------

def _c18(net: Net) -> tuple[Peer, Peer, bytes, bytes, bytes, bytes]:
    (a, b), e = shared(net)
    x = a.create_record("Task", {"name": "X"}).id
    g = a.create_edge(LINK, e, x).id
    net.sync_all()
    d = the_op(a, a.delete_record(e).bundle_id)
    w = the_op(b, b.update_record(e, {"name": "bname"}).bundle_id)
    net.sync_all()
    return a, b, e, g, d, w


def test_c18_delete_vs_edit_then_restore(net: Net) -> None:
    a, b, e, g, d, w = _c18(net)
    cid = conflict_id(e, ENTITY_KEY)
    for p in (a, b):
        assert e not in [ids.from_text(r["id"]) for r in p.list_records("Task")]
        (rec,) = open_conflicts(p)
        assert rec["conflict_id"] == ids.to_text(cid) and rec["kind"] == "delete"
        assert rec["field"] == ENTITY_KEY and rec["deleted"] is True
        assert tip_ids(rec) == {d, w}
        assert p.proj.conn.execute(
            "SELECT value FROM fields WHERE entity = ? AND slot = ?",
            (e, slot(p, "name"))).fetchone() is not None  # B's edit kept in field state
    converged(net)
    res = b.resolve_conflict(cid, choice="restore")
    ts = [t for t, _ in ops_in(b, res.bundle_id)]
    assert ts == ["RestoreEntity", "RestoreEdge"]
    net.sync_all()
    for p in (a, b):
        assert p.get_record(e)["values"]["name"] == "bname"
        assert e in [ids.from_text(r["id"]) for r in p.list_records("Task")]
        assert [x["id"] for x in p.list_edges(e)] == [ids.to_text(g)]
        rec = record(p, cid)
        assert rec["status"] == "resolved" and rec["deleted"] is False
    converged(net)


def test_c18_keep_deleted(net: Net) -> None:
    a, b, e, _g, _d, _w = _c18(net)
    cid = conflict_id(e, ENTITY_KEY)
    res = a.resolve_conflict(cid, choice="keep_deleted")
    ((t, p),) = ops_in(a, res.bundle_id)
    assert t == "DeleteEntity" and p["conflict"] == cid and len(p["resolves"]) == 2
    net.sync_all()
    for peer in (a, b):
        rec = record(peer, cid)
        assert rec["status"] == "resolved" and rec["deleted"] is True
        assert open_conflicts(peer) == []
        assert e not in [ids.from_text(r["id"]) for r in peer.list_records("Task")]
    converged(net)


def test_c19_edit_seen_before_delete_is_no_conflict(net: Net) -> None:
    (a, b), e = shared(net)
    b.update_record(e, {"name": "b"})
    net.sync(b, a)
    a.delete_record(e)
    net.sync_all()
    assert a.list_conflicts("all") == [] and b.list_conflicts("all") == []
    converged(net)


def test_c20_cascade_concurrent_edge_and_undo(net: Net) -> None:
    (a, b), e = shared(net)
    x = a.create_record("Task", {"name": "X"}).id
    y = a.create_record("Task", {"name": "Y"}).id
    ex = a.create_edge(LINK, e, x).id
    ye = a.create_edge(LINK, y, e).id
    net.sync_all()
    res = a.delete_record(e)
    ((t, p),) = ops_in(a, res.bundle_id)
    assert t == "DeleteEntity" and p["cascade"] == sorted([ex, ye])
    for g in (ex, ye):
        info = a.views.edge(g)
        assert info is not None and info["deleted"]
    assert a.views.is_live(x) and a.views.is_live(y)
    z = b.create_record("Task", {"name": "Z"}).id
    ze = b.create_edge(LINK, z, e).id
    net.sync_all()
    for peer in (a, b):
        info = peer.views.edge(ze)
        assert info is not None and not info["deleted"]
        assert ids.to_text(ze) not in [g["id"] for g in peer.list_edges()]
        assert peer.list_conflicts("all") == []
    converged(net)
    r = a.undo()
    assert r.status == "applied"
    net.sync_all()
    for peer in (a, b):
        assert peer.views.is_live(e)
        visible = {g["id"] for g in peer.list_edges(e)}
        assert ids.to_text(ze) in visible
        assert {ids.to_text(ex), ids.to_text(ye)} <= visible
        assert peer.list_conflicts("all") == []
    converged(net)


# --- projection mechanics -------------------------------------------------------------------

def test_incremental_equals_replay_and_reopen(net: Net) -> None:
    a, b, e, _, _ = c1(net)
    a.update_record(e, {"status": "s1"})
    b.update_record(e, {"status": "s2"})
    net.sync_all()
    before = a.conflicts.records()
    assert len(before) == 2
    a.reopen()
    assert a.conflicts.records() == before
    replays = a.conflicts.replays
    a.conflicts.rebuild()
    assert a.conflicts.replays == replays + 1
    assert a.conflicts.records() == before


def test_list_conflicts_status_filter(net: Net) -> None:
    a, _b, e, _, _ = c1(net)
    assert len(a.list_conflicts("open")) == 1
    a.resolve_conflict(conflict_id(e, slot(a, "name")), "r")
    assert a.list_conflicts("open") == []
    (rec,) = a.list_conflicts("all")
    assert a.get_conflict(rec["conflict_id"]) == rec
    with pytest.raises(ValidationError):
        a.list_conflicts("closed")
    with pytest.raises(ConflictNotFound):
        a.get_conflict(ids.new_id())
