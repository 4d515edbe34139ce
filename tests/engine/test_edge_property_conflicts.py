"""Conflicts on edge properties (spec 02 §0: SetEdgeProperty/ClearEdgeProperty follow the field
rules, keyed (edge_id, property)). Records have kind "property", entity = the edge id and
skey = "@" + property name (openprod/engine/conflicts.py, `prop_skey`).

"Converged" = equal state hashes and equal conflict records on every peer, equal to a replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.core import codec, ids
from openprod.core.errors import NotFound, ValidationError
from openprod.engine.conflicts import (
    ConflictAlreadyResolved,
    conflict_id,
    is_prop_skey,
    prop_skey,
)
from openprod.engine.state import ENTITY_KEY
from tests.helpers import T0, Net, Peer, shuffled

FIELDS = [{"label": "name", "name": "name"}]
LINK = "test.link"
PROPS = {"role": "text", "weight": "float"}


def shared(net: Net, names: tuple[str, ...] = ("A", "B")) -> tuple[list[Peer], bytes, bytes]:
    """Records X, Y and an edge X→Y (role="orig"), created by the first peer; all synced."""
    peers = [net.add_peer(n) for n in names]
    a = peers[0]
    a.create_table("Task", FIELDS)
    a.define_edge_type(LINK, "Link", props=PROPS)
    x = a.create_record("Task", {"name": "x"}).id
    y = a.create_record("Task", {"name": "y"}).id
    g = a.create_edge(LINK, x, y, props={"role": "orig"}).id
    net.sync_all()
    return peers, g, x


@contextmanager
def fresh_net(root: Path) -> Iterator[Net]:
    n = Net(root)
    try:
        yield n
    finally:
        for p in n.peers:
            p.ws.close()


def cid_of(g: bytes, key: str = "role") -> bytes:
    return conflict_id(g, prop_skey(key))


def prop(p: Peer, g: bytes, key: str = "role") -> Any:
    (edge,) = [d for d in p.list_edges() if d["id"] == ids.to_text(g)]
    return edge["props"].get(key)


def converged(net: Net, peers: list[Peer] | None = None) -> dict[bytes, Any]:
    peers = peers or net.peers
    net.assert_converged(peers)
    recs = [p.conflicts.records() for p in peers]
    assert all(r == recs[0] for r in recs)
    replayed = peers[0].conflicts
    replayed.rebuild()
    assert replayed.records() == recs[0]
    return recs[0]


def open_conflict(net: Net) -> tuple[list[Peer], bytes, bytes]:
    (a, b), g, x = shared(net)
    a.set_edge_property(g, "role", "a")
    b.set_edge_property(g, "role", "b")
    net.sync_all()
    return [a, b], g, x


def last_op(p: Peer, bundle_id: bytes | None) -> tuple[str, dict[str, Any]]:
    rows = list(p.storage.conn.execute(
        "SELECT t, body FROM ops WHERE bundle_id = ? ORDER BY pos", (bundle_id,)))
    assert len(rows) == 1
    t, body = rows[0]
    return str(t), codec.decode(bytes(body))["p"]


# --- opening ------------------------------------------------------------------------------------

def test_skey_cannot_collide_with_field_slots() -> None:
    assert prop_skey("name") == "@name" and is_prop_skey("@name")
    assert not is_prop_skey("test.Task.name") and not is_prop_skey(ENTITY_KEY)


def test_concurrent_differing_writes_open_one_property_conflict(net: Net) -> None:
    (a, b), g, _ = open_conflict(net)
    want = converged(net)
    cid = cid_of(g)
    assert list(want) == [cid]
    for p in (a, b):
        (c,) = p.list_conflicts()
        assert c["conflict_id"] == ids.to_text(cid)
        assert c["kind"] == "property" and c["status"] == "open" and c["reopened"] is False
        assert c["entity_id"] == ids.to_text(g) and c["property"] == "role"
        assert c["field"] == "@role" and c["field_label"] is None
        assert sorted(t["value"] for t in c["tips"]) == ["a", "b"]
        assert {t["op"] for t in c["tips"]} == {"SetEdgeProperty"}
        assert {t["actor"] for t in c["tips"]} == {a.actor.hex(), b.actor.hex()}
        assert c["display_value"] == prop(p, g)  # LWW, as the edge shows it
    # a property conflict lists nothing on the records the edge links
    assert all(r["conflicts"] == [] for r in (a.get_record(x) for x in _ends(a, g)))


def _ends(p: Peer, g: bytes) -> list[bytes]:
    info = p.views.edge(g)
    assert info is not None
    return [info["src"], info["dst"]]


def test_sequential_writes_never_conflict(net: Net) -> None:
    (a, b), g, _ = shared(net)
    a.set_edge_property(g, "role", "a")
    net.sync(a, b)
    b.set_edge_property(g, "role", "b")
    b.set_edge_property(g, "weight", 2.5)
    net.sync_all()
    converged(net)
    assert a.list_conflicts("all") == [] and b.list_conflicts("all") == []
    assert prop(a, g) == prop(b, g) == "b"


def test_equal_values_and_different_properties_never_conflict(net: Net) -> None:
    (a, b), g, _ = shared(net)
    a.set_edge_property(g, "role", "same")
    b.set_edge_property(g, "role", "same")
    a.set_edge_property(g, "weight", 1.0)
    net.sync_all()
    b.set_edge_property(g, "weight", 3.0)  # had seen A's weight
    net.sync_all()
    converged(net)
    assert a.list_conflicts("all") == []


def test_clear_counts_as_a_value(net: Net) -> None:
    (a, b), g, _ = shared(net)
    a.set_edge_property(g, "role", None)
    b.set_edge_property(g, "role", "b")
    net.sync_all()
    converged(net)
    (c,) = a.list_conflicts()
    assert sorted((t["op"], t["value"]) for t in c["tips"]) == [
        ("ClearEdgeProperty", None), ("SetEdgeProperty", "b")]


def test_concurrent_create_props_and_set_conflict(net: Net) -> None:
    """A create op's `props` value is a write of that property by the create op."""
    (a, b), _g, x = shared(net)
    y = a.create_record("Task", {"name": "z"}).id
    g = a.create_edge(LINK, x, y, props={"role": "new"}).id
    net.sync(a, b)
    b.set_edge_property(g, "role", "b1")  # had seen the create: no conflict
    net.sync_all()
    assert a.list_conflicts() == []
    # a create with props, concurrently rewritten via a replica that ingested only the create
    a2 = a.create_edge(LINK, y, x, props={"role": "c", "weight": 1.0}).id
    net.sync(a, b)
    b.set_edge_property(a2, "weight", 2.0)
    a.set_edge_property(a2, "weight", 3.0)
    net.sync_all()
    converged(net)
    (c,) = a.list_conflicts()
    assert c["entity_id"] == ids.to_text(a2) and c["property"] == "weight"
    assert sorted(t["value"] for t in c["tips"]) == [2.0, 3.0]


def test_create_props_are_writes_of_the_create_op(net: Net) -> None:
    """Each `props` value of a CreateEdge/CreateOrderedEdge enters W as a write by the create op
    (a later write that saw the create prunes it: no conflict)."""
    (a, _b), g, _ = shared(net)
    rows = list(a.conflicts.conn.execute(
        "SELECT t, skey, value, is_clear FROM cf_writes WHERE entity = ?", (g,)))
    assert rows == [("CreateEdge", "@role", codec.encode(["text", "orig"]), 0)]
    assert a.list_conflicts("all") == []


def test_three_way(net: Net) -> None:
    (a, b, c), g, _ = shared(net, ("A", "B", "C"))
    for p in (a, b, c):
        p.set_edge_property(g, "role", p.name)
    net.sync_all()
    converged(net)
    for p in (a, b, c):
        (rec,) = p.list_conflicts()
        assert sorted(t["value"] for t in rec["tips"]) == ["A", "B", "C"]


# --- resolution ---------------------------------------------------------------------------------

def test_resolve_picks_a_value_and_closes_everywhere(net: Net) -> None:
    (a, b), g, _ = open_conflict(net)
    cid = cid_of(g)
    tips = sorted(ids.from_text(t["op_id"]) for t in a.get_conflict(cid)["tips"])
    r = b.resolve_conflict(cid, "r")
    t, p = last_op(b, r.bundle_id)
    assert t == "SetEdgeProperty" and p["resolves"] == tips and p["conflict"] == cid
    assert p["edge"] == g and p["key"] == "role"
    net.sync_all()
    converged(net)
    for peer in (a, b):
        assert peer.list_conflicts() == []
        c = peer.get_conflict(cid)
        assert c["status"] == "resolved" and c["display_value"] == "r"
        assert [x["value"] for x in c["resolutions"]] == ["r"]
        assert prop(peer, g) == "r"


def test_resolve_clear_and_type_validation(net: Net) -> None:
    (a, b), g, _ = shared(net)
    a.set_edge_property(g, "weight", 1.0)
    b.set_edge_property(g, "weight", 2.0)
    net.sync_all()
    cid = cid_of(g, "weight")
    head = a.storage.head_seq()
    with pytest.raises(ValidationError):
        a.resolve_conflict(cid, "not a number")
    with pytest.raises(ValidationError):
        a.resolve_conflict(cid, 1.5, choice="restore")
    assert a.storage.head_seq() == head
    r = a.resolve_conflict(cid, None)
    t, p = last_op(a, r.bundle_id)
    assert t == "ClearEdgeProperty" and p["conflict"] == cid
    net.sync_all()
    converged(net)
    assert prop(a, g, "weight") is None and prop(b, g, "weight") is None
    assert a.get_conflict(cid)["status"] == "resolved"
    with pytest.raises(ConflictAlreadyResolved):
        a.resolve_conflict(cid, 3.0)
    assert a.storage.head_seq() == head + 1


def test_resolve_on_deleted_edge_refused(net: Net) -> None:
    (a, _b), g, _ = open_conflict(net)
    a.delete_edge(g)
    head = a.storage.head_seq()
    with pytest.raises(NotFound):
        a.resolve_conflict(cid_of(g), "r")
    assert a.storage.head_seq() == head


def test_concurrent_second_resolution_is_rejected(net: Net) -> None:
    (a, b), g, _ = open_conflict(net)
    cid = cid_of(g)
    ra = a.resolve_conflict(cid, "x")
    rb = b.resolve_conflict(cid, "y")
    net.sync_all()
    want = converged(net)
    rec = want[cid]
    assert rec["status"] == "resolved" and rec["reopened"] is False
    oa = last_op_id(a, ra.bundle_id)
    ob = last_op_id(a, rb.bundle_id)
    stamp = {oa: op_stamp(a, oa), ob: op_stamp(a, ob)}
    first, second = sorted(stamp, key=stamp.__getitem__)
    assert [r[0] for r in rec["resolutions"]] == [first]
    assert [r[0] for r in rec["rejected"]] == [second]
    winner = "x" if first == oa else "y"
    c = a.get_conflict(cid)
    assert c["display_value"] == winner and b.get_conflict(cid) == c
    assert [x["value"] for x in c["rejected_resolutions"]] == ["y" if winner == "x" else "x"]


def last_op_id(p: Peer, bundle_id: bytes | None) -> bytes:
    ((o,),) = list(p.storage.conn.execute(
        "SELECT op_id FROM ops WHERE bundle_id = ?", (bundle_id,)))
    return bytes(o)


def op_stamp(p: Peer, op_id: bytes) -> bytes:
    ((h,),) = list(p.storage.conn.execute("SELECT hlc FROM ops WHERE op_id = ?", (op_id,)))
    return bytes(h) + op_id


def test_late_edit_reopens(net: Net) -> None:
    (a, b, d), g, _ = shared(net, ("A", "B", "D"))
    a.set_edge_property(g, "role", "a")
    b.set_edge_property(g, "role", "b")
    net.sync_all([a, b])
    cid = cid_of(g)
    b.resolve_conflict(cid, "r")
    net.sync(b, a)
    d.clock.set(T0 + 100_000)
    d.set_edge_property(g, "role", "d")
    net.sync(d, b)
    c = b.get_conflict(cid)
    assert c["status"] == "open" and c["reopened"] is True
    assert sorted(t["value"] for t in c["tips"]) == ["d", "r"]
    assert c["display_value"] == "r"  # the accepted resolution, despite d's higher HLC
    assert prop(b, g) == "r"  # and the edge shows it while open
    net.sync_all()
    converged(net)
    assert a.get_conflict(cid) == b.get_conflict(cid) == d.get_conflict(cid)
    a.resolve_conflict(cid, "final")
    net.sync_all()
    converged(net)
    assert d.get_conflict(cid)["status"] == "resolved"
    assert prop(d, g) == "final"


def test_local_write_to_open_property_is_a_resolution(net: Net) -> None:
    (a, b), g, _ = open_conflict(net)
    cid = cid_of(g)
    tips = sorted(ids.from_text(t["op_id"]) for t in a.get_conflict(cid)["tips"])
    r = a.set_edge_property(g, "role", "mine")
    t, p = last_op(a, r.bundle_id)
    assert t == "SetEdgeProperty" and p["resolves"] == tips and p["conflict"] == cid
    assert a.list_conflicts() == []
    net.sync_all()
    converged(net)
    assert b.get_conflict(cid)["status"] == "resolved" and prop(b, g) == "mine"
    # a write to a property without an open conflict stays untagged
    r = a.set_edge_property(g, "weight", 4.0)
    assert "resolves" not in last_op(a, r.bundle_id)[1]


def test_overlay_commit_tags_property_writes(net: Net) -> None:
    (a, b), g, _ = open_conflict(net)
    cid = cid_of(g)
    a.create_overlay("ov")
    a.set_edge_property(g, "role", "staged")
    assert a.get_conflict(cid)["status"] == "open"
    bid = a.commit_overlay(a.overlays.active or a.list_overlays()[0]["id"])
    t, p = last_op(a, bid)
    assert t == "SetEdgeProperty" and p["conflict"] == cid
    net.sync_all()
    converged(net)
    assert b.get_conflict(cid)["status"] == "resolved" and prop(b, g) == "staged"


def test_merged_entities_keep_edge_property_conflicts(net: Net) -> None:
    (a, b), g, x = open_conflict(net)
    other = a.create_record("Task", {"name": "other"}).id
    a.merge(x, other)
    net.sync_all()
    want = converged(net)
    assert cid_of(g) in want and want[cid_of(g)]["entity"] == g
    assert b.get_conflict(cid_of(g))["status"] == "open"


# --- replay and delivery orders -----------------------------------------------------------------

def _history(net: Net) -> tuple[Peer, dict[bytes, Any]]:
    (a, b, d), g, _ = shared(net, ("A", "B", "D"))
    a.set_edge_property(g, "role", "a")
    a.set_edge_property(g, "weight", 1.0)
    b.set_edge_property(g, "role", "b")
    b.set_edge_property(g, "weight", None)
    net.sync_all([a, b])
    cid = cid_of(g)
    b.resolve_conflict(cid, "r")
    a.resolve_conflict(cid_of(g, "weight"), 9.0)
    d.clock.set(T0 + 100_000)
    d.set_edge_property(g, "role", "d")
    net.sync_all()
    want = converged(net)
    assert want[cid]["reopened"] is True
    return a, want


def test_delivery_orders_and_replay_agree(net: Net, tmp_path: Path) -> None:
    a, want = _history(net)
    records = a.ops_since({})
    with fresh_net(tmp_path / "fresh") as fresh:
        fresh.ws_id = net.ws_id
        peers = [fresh.add_peer(f"F{i}") for i in range(3)]
        for i, p in enumerate(peers):
            for rec in shuffled(records, seed=i) if i else list(reversed(records)):
                fresh.deliver(p, [rec])
        for p in peers:
            assert p.conflicts.records() == want
            p.conflicts.rebuild()
            assert p.conflicts.records() == want
        assert {p.state_hash() for p in peers} == {a.state_hash()}


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_any_delivery_order_agrees(tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    root = tmp_path_factory.mktemp("prop")
    with fresh_net(root / "src") as net:
        a, want = _history(net)
        records = a.ops_since({})
        with fresh_net(root / "dst") as fresh:
            fresh.ws_id = net.ws_id
            p = fresh.add_peer("F")
            for rec in shuffled(records, seed):
                fresh.deliver(p, [rec])
            assert p.conflicts.records() == want


def test_old_version_databases_replay(net: Net) -> None:
    """A CF_VERSION 1 database (no cf_writes.t column, no property records) replays on open."""
    (a, _b), g, _ = open_conflict(net)
    want = a.conflicts.records()
    assert cid_of(g) in want
    conn = a.ws._conflict_proj.conn
    conn.execute("UPDATE cf_meta SET v = 1 WHERE k = 'version'")
    conn.execute("DELETE FROM cf_records")
    conn.execute("DELETE FROM cf_writes")
    conn.execute("ALTER TABLE cf_writes DROP COLUMN t")
    a.reopen()
    proj = a.ws._conflict_proj
    assert proj.replays == 0
    assert a.conflicts.records() == want
    assert proj.replays == 1
