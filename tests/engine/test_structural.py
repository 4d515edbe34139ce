"""Ordered edges, cascades, identity repair and field mappings (spec 01 §1.4-§1.6, §7;
§11 invariants 10, 11, 12): the parts of derivation that move data between owners, and the
full replay a late structural op forces."""

from __future__ import annotations

from typing import Any

import pytest

from openprod.core import codec, ids
from openprod.core.errors import EntityMerged, ValidationError
from openprod.engine import fracindex
from openprod.engine.statehash import open_conflicts
from tests.helpers import T0, Net, Peer

ORDERED = "workspace.sub"
LINK = "workspace.link"


# --- helpers ------------------------------------------------------------------------------

def setup(net: Net, n: int = 2) -> tuple[list[Peer], str, str]:
    peers = [net.add_peer(f"p{i}", clock_ms=T0 + i) for i in range(n)]
    a = peers[0]
    t1 = a.create_table("Tasks", [
        {"label": "name", "name": "name"},
        {"label": "n", "name": "n", "type": "integer"},
        {"label": "body", "name": "body", "crdt": True},
    ]).facet
    t2 = a.create_table("People", [
        {"label": "title", "name": "title"},
        {"label": "qty", "name": "qty", "type": "integer"},
    ]).facet
    a.define_edge_type(ORDERED, "Sub", ordered=True, props={"w": "integer"})
    a.define_edge_type(LINK, "Link")
    net.sync_all()
    assert t1 is not None and t2 is not None
    return peers, t1, t2


def order(p: Peer, dst: bytes) -> list[bytes]:
    return [ids.from_text(g["id"]) for g in p.list_edges(dst, ORDERED, "in")]


def keys(p: Peer, dst: bytes) -> list[str]:
    return [i for i, _ in p.views.ordered_scope(dst, ORDERED)]


def n_open(p: Peer) -> int:
    return sum(1 for (blob,) in p.proj.conn.execute("SELECT tips FROM tips WHERE kind = 'f'")
               if open_conflicts(codec.decode(bytes(blob))))


def converged(net: Net, peers: list[Peer] | None = None) -> bytes:
    h = net.assert_converged(peers)
    for p in peers or net.peers:
        assert p.rebuild() == h
    return h


# --- ordered edges (invariant 10) ---------------------------------------------------------

def test_midpoint_inserts_keep_order(net: Net) -> None:
    (a, b), _, _ = setup(net)
    box = a.create_record("Tasks", {"name": "box"}).id
    items = [a.create_record("Tasks", {"name": f"i{i}"}).id for i in range(5)]
    g0 = a.create_edge(ORDERED, items[0], box).id  # [0]
    g1 = a.create_edge(ORDERED, items[1], box).id  # [0 1]            (append)
    g2 = a.create_edge(ORDERED, items[2], box, before=g0).id  # [2 0 1]   (prepend)
    g3 = a.create_edge(ORDERED, items[3], box, after=g0).id  # [2 0 3 1]  (middle)
    g4 = a.create_edge(ORDERED, items[4], box, before=g3).id  # [2 0 4 3 1]
    expected = [g2, g0, g4, g3, g1]
    assert order(a, box) == expected
    ks = keys(a, box)
    assert ks == sorted(ks) and len(set(ks)) == len(ks)
    assert all(fracindex.is_valid_key(k) for k in ks)
    net.sync_all()
    assert order(b, box) == expected
    converged(net)


def test_concurrent_inserts_at_the_same_spot_are_both_kept(net: Net) -> None:
    (a, b), _, _ = setup(net)
    box = a.create_record("Tasks", {"name": "box"}).id
    x, y = (a.create_record("Tasks", {"name": n}).id for n in ("x", "y"))
    first = a.create_edge(ORDERED, x, box).id
    last = a.create_edge(ORDERED, y, box).id
    net.sync_all()
    ia = a.create_edge(ORDERED, x, box, after=first).id
    ib = b.create_edge(ORDERED, y, box, after=first).id
    net.sync_all()
    got = order(a, box)
    assert got == order(b, box)
    assert set(got) == {first, last, ia, ib}
    assert got[0] == first and got[-1] == last
    converged(net)


def test_concurrent_moves_last_writer_wins(net: Net) -> None:
    (a, b), _, _ = setup(net)
    box = a.create_record("Tasks", {"name": "box"}).id
    items = [a.create_record("Tasks", {"name": f"i{i}"}).id for i in range(3)]
    gs = [a.create_edge(ORDERED, it, box).id for it in items]
    net.sync_all()
    a.clock.advance(10)
    b.clock.advance(20)  # b's move has the larger stamp
    a.reorder_edge(gs[1], before=gs[0])
    b.reorder_edge(gs[1], after=gs[2])
    b_index = b.views.edge(gs[1])["index"]
    net.sync_all()
    for p in (a, b):
        assert order(p, box) == [gs[0], gs[2], gs[1]]
        assert p.views.edge(gs[1])["index"] == b_index
    converged(net)


@pytest.mark.parametrize("delete_later", [False, True])
def test_move_against_a_concurrent_delete_is_deleted(net: Net, delete_later: bool) -> None:
    (a, b), _, _ = setup(net)
    box = a.create_record("Tasks", {"name": "box"}).id
    items = [a.create_record("Tasks", {"name": f"i{i}"}).id for i in range(3)]
    gs = [a.create_edge(ORDERED, it, box).id for it in items]
    net.sync_all()
    (b if delete_later else a).clock.advance(50)
    a.reorder_edge(gs[2], before=gs[0])
    b.delete_edge(gs[2])
    net.sync_all()
    for p in (a, b):
        assert p.views.edge(gs[2])["deleted"]
        assert order(p, box) == gs[:2]
    converged(net)


def test_long_keys_trigger_a_rebalance_that_keeps_the_order(net: Net) -> None:
    (a, b), _, _ = setup(net)
    box = a.create_record("Tasks", {"name": "box"}).id
    it = a.create_record("Tasks", {"name": "item"}).id
    left = a.create_edge(ORDERED, it, box).id
    right = a.create_edge(ORDERED, it, box).id
    anchor = left
    inserted = []
    while max(len(k) for k in keys(a, box)) <= fracindex.REBALANCE_LEN:
        # always right after the newest insert: keys grow at this one spot
        anchor = a.create_edge(ORDERED, it, box, after=anchor).id
        inserted.append(anchor)
        assert len(inserted) < 200
    expected = [left, *inserted, right]
    assert order(a, box) == expected
    net.sync_all()
    replays = b.proj.replays
    a.clock.advance(5)
    a.reorder_edge(right, before=left)  # sees the long keys: rebalances first, then moves
    ks = keys(a, box)
    assert max(len(k) for k in ks) <= fracindex.REBALANCE_LEN
    assert ks == sorted(ks) and len(set(ks)) == len(ks)
    assert order(a, box) == [right, *expected[:-1]]
    kinds = [codec.decode(r[0])["kind"] for r in a.ops_since(b.vclock())]
    assert len(kinds) == 2  # one rebalance bundle, one move bundle
    net.sync_all()
    assert order(b, box) == order(a, box)
    assert b.proj.replays == replays, "a rebalance is not structural"
    converged(net)


def test_rebalance_tie_and_concurrent_insert_converge(net: Net) -> None:
    (a, b), _, _ = setup(net)
    box = a.create_record("Tasks", {"name": "box"}).id
    it = a.create_record("Tasks", {"name": "item"}).id
    gs = [a.create_edge(ORDERED, it, box).id for _ in range(4)]
    net.sync_all()
    a.rebalance(box, ORDERED)
    extra = b.create_edge(ORDERED, it, box, after=gs[1]).id
    net.sync_all()
    got = order(a, box)
    assert got == order(b, box)
    assert [g for g in got if g != extra] == gs  # the rebalanced edges keep their order
    converged(net)


# --- DeleteEntity cascade (invariant 11) ----------------------------------------------------

def test_delete_cascades_only_listed_edges_and_restore_brings_them_back(net: Net) -> None:
    (a, b), _, _ = setup(net)
    x = a.create_record("Tasks", {"name": "x"}).id
    y = a.create_record("Tasks", {"name": "y"}).id
    z = a.create_record("Tasks", {"name": "z"}).id
    listed = a.create_edge(LINK, x, y).id
    net.sync_all()
    concurrent = b.create_edge(LINK, z, x).id  # a has not seen it when deleting x
    a.clock.advance(5)
    a.delete_record(x)
    net.sync_all()
    for p in (a, b):
        assert p.views.edge(listed)["deleted"] is True
        assert p.views.edge(concurrent)["deleted"] is False, "not in the cascade list"
        assert p.list_edges(z) == [], "an edge touching a deleted entity is hidden"
        assert p.list_edges(y) == []
    converged(net)
    a.clock.advance(5)
    res = a.undo()
    assert res.status == "applied" and res.edges_not_restored == []
    net.sync_all()
    for p in (a, b):
        shown = {ids.from_text(g["id"]) for g in p.list_edges(x)}
        assert shown == {listed, concurrent}
        assert p.views.edge(listed)["deleted"] is False
    converged(net)


# --- merge (invariant 11) -----------------------------------------------------------------

def test_merge_survivor_is_min_and_differing_values_keep_both_tips(net: Net) -> None:
    (a, b), t1, _ = setup(net)
    x = a.create_record("Tasks", {"name": "same", "n": 1, "body": "foo"}).id
    a.clock.advance(3)
    y = a.create_record("Tasks", {"name": "same", "n": 2, "body": "bar"}).id
    other = a.create_record("Tasks", {"name": "o"}).id
    g = a.create_edge(LINK, other, y).id
    net.sync_all()
    lo, hi = min(x, y), max(x, y)
    a.clock.advance(3)
    a.merge(hi, lo)  # argument order does not matter
    net.sync_all()
    for p in (a, b):
        assert p.proj.resolve(hi) == lo
        assert not p.views.is_live(hi)
        rec = p.get_record(hi)  # reads follow the redirect
        assert rec["id"] == ids.to_text(lo)
        assert rec["conflicts"] == ["n"], "n differed; equal names do not conflict"
        assert len(p.views.tips("f", lo, f"{t1}.n")) == 2, "tips are unioned, unpruned"
        assert rec["values"]["n"] == 2  # the LWW winner: y's write is the later one
        assert rec["values"]["body"] in ("foobar", "barfoo")
        assert [r["id"] for r in p.list_records("Tasks")].count(ids.to_text(lo)) == 1
        assert ids.to_text(hi) not in [r["id"] for r in p.list_records("Tasks")]
        edge = p.views.edge(g)
        assert edge["dst"] == lo, "edges are repointed to the survivor"
        with pytest.raises(EntityMerged):
            p.update_record(hi, {"name": "refused"})
        with pytest.raises(EntityMerged):
            p.merge(hi, other)
    converged(net)


def test_merge_chains_resolve_transitively(net: Net) -> None:
    (a, b, c), _, _ = setup(net, 3)
    e1, e2, e3 = (a.create_record("Tasks", {"name": n}).id for n in ("1", "2", "3"))
    assert e1 < e2 < e3
    net.sync_all()
    b.merge(e2, e3)  # e3 -> e2, concurrently with ...
    c.merge(e1, e2)  # ... e2 -> e1
    net.sync_all()
    for p in (a, b, c):
        assert p.proj.resolve(e3) == e1 and p.proj.resolve(e2) == e1
        assert p.get_record(e3)["id"] == ids.to_text(e1)
        assert [r["id"] for r in p.list_records("Tasks")] == [ids.to_text(e1)]
    converged(net)


def test_partitions_merging_the_same_pair_converge(net: Net) -> None:
    (a, b), _, _ = setup(net)
    x = a.create_record("Tasks", {"name": "x"}).id
    y = a.create_record("Tasks", {"name": "y"}).id
    net.sync_all()
    a.merge(x, y)
    b.clock.advance(1)
    b.merge(y, x)
    a.clock.advance(2)
    a.update_record(min(x, y), {"n": 5})
    net.sync_all()
    for p in (a, b):
        assert p.proj.resolve(max(x, y)) == min(x, y)
        assert p.get_record(max(x, y))["values"]["n"] == 5
        inert = list(p.proj.conn.execute("SELECT reason FROM inert_ops"))
        assert len(inert) == 1, "the second merge of one pair is inert"
    converged(net)


def test_a_remote_op_on_the_absorbed_id_lands_on_the_survivor(net: Net) -> None:
    (a, b), t1, _ = setup(net)
    x = a.create_record("Tasks", {"name": "x"}).id
    y = a.create_record("Tasks", {"name": "y"}).id
    net.sync_all()
    lo, hi = min(x, y), max(x, y)
    a.clock.advance(5)
    a.merge(lo, hi)
    b.clock.advance(10)  # b has not seen the merge; its write names the absorbed id
    b.update_record(hi, {"n": 9})
    net.sync_all()
    for p in (a, b):
        assert p.get_record(lo)["values"]["n"] == 9
        assert p.views.slot_value(hi, f"{t1}.n") is None
    converged(net)


def test_split_moves_listed_facets_and_copies_their_values(net: Net) -> None:
    (a, b), t1, t2 = setup(net)
    e = a.create_record("Tasks", {"name": "x", "n": 1}).id
    a.add_to_table(e, "People", {"title": "Dr", "qty": 4})
    other = a.create_record("Tasks", {"name": "o"}).id
    g = a.create_edge(LINK, other, e).id
    net.sync_all()
    a.clock.advance(5)
    new = a.split(e, ["People"]).id
    net.sync_all()
    for p in (a, b):
        src, moved = p.get_record(e), p.get_record(new)
        assert src["tables"] == [t1]
        assert moved["tables"] == [t2]
        assert moved["values"] == {"title": "Dr", "qty": 4}
        assert src["values"]["name"] == "x"
        assert p.views.edge(g)["dst"] == e, "edges stay on the source"
        assert list(p.proj.conn.execute("SELECT a, b FROM merge_exceptions")) == [(e, new)]
    # The copies are independent registers from now on.
    b.update_record(new, {"qty": 5})
    net.sync_all()
    assert a.get_record(new)["values"]["qty"] == 5
    with pytest.raises(ValidationError):
        a.split(e, ["People"])  # no longer attached
    converged(net)


# --- mappings (invariant 12) ---------------------------------------------------------------

def test_confirmed_mapping_reads_one_value_and_concurrent_writes_make_one_conflict(
    net: Net,
) -> None:
    (a, b), t1, t2 = setup(net)
    e = a.create_record("Tasks", {"name": "x"}).id
    a.add_to_table(e, "People")
    net.sync_all()
    a.confirm_mapping(f"{t2}.title", f"{t1}.name")  # any key order
    net.sync_all()
    for p in (a, b):
        assert p.get_record(e)["values"]["title"] == "x", "the group reads its old register"
    a.clock.advance(5)
    a.update_record(e, {"title": "via people"}, table="People")
    net.sync_all()
    assert b.get_record(e)["values"]["name"] == "via people"
    a.clock.advance(5)
    b.clock.advance(5)
    a.update_record(e, {"name": "A"}, table="Tasks")
    b.update_record(e, {"title": "B"}, table="People")
    net.sync_all()
    for p in (a, b):
        rec = p.get_record(e)
        assert rec["values"]["name"] == rec["values"]["title"]
        assert n_open(p) == 1, "one slot, one conflict"
        assert sorted(rec["conflicts"]) == ["name", "title"]
    # A record only in one table also writes the shared slot.
    f = a.create_record("People", {"title": "solo"}).id
    assert a.views.slot_value(f, min(f"{t1}.name", f"{t2}.title")) == ["text", "solo"]
    net.sync_all()
    converged(net)


def test_reject_splits_the_group_keeping_values_in_both(net: Net) -> None:
    (a, b), t1, t2 = setup(net)
    e = a.create_record("Tasks", {"name": "x"}).id
    a.add_to_table(e, "People")
    a.confirm_mapping(f"{t1}.name", f"{t2}.title")
    a.clock.advance(2)
    a.update_record(e, {"title": "shared"}, table="People")
    net.sync_all()
    b.clock.advance(5)
    b.reject_mapping(f"{t1}.name", f"{t2}.title")
    net.sync_all()
    for p in (a, b):
        assert p.get_record(e)["values"] == {
            "name": "shared", "n": None, "body": None, "title": "shared", "qty": None}
        assert p.proj.slot_of(t1, "name") == f"{t1}.name"
        assert p.proj.slot_of(t2, "title") == f"{t2}.title"
    a.clock.advance(10)
    a.update_record(e, {"name": "only tasks"}, table="Tasks")
    net.sync_all()
    for p in (a, b):
        assert p.get_record(e)["values"]["name"] == "only tasks"
        assert p.get_record(e)["values"]["title"] == "shared"
        assert p.get_record(e)["conflicts"] == []
    converged(net)


def test_confirming_a_mapping_over_differing_values_opens_a_conflict(net: Net) -> None:
    (a, b), t1, t2 = setup(net)
    e = a.create_record("Tasks", {"name": "from tasks"}).id
    a.clock.advance(3)
    a.add_to_table(e, "People", {"title": "from people"})  # the later write
    same = a.create_record("Tasks", {"name": "eq"}).id
    a.add_to_table(same, "People", {"title": "eq"})
    net.sync_all()
    b.confirm_mapping(f"{t1}.name", f"{t2}.title")
    net.sync_all()
    slot = min(f"{t1}.name", f"{t2}.title")
    for p in (a, b):
        rec = p.get_record(e)
        assert rec["values"]["name"] == rec["values"]["title"] == "from people"
        assert sorted(rec["conflicts"]) == ["name", "title"], "tips unioned, unpruned"
        assert len(p.views.tips("f", e, slot)) == 2
        assert p.get_record(same)["conflicts"] == [], "equal values: no conflict"
    a.clock.advance(10)
    a.update_record(e, {"name": "settled"}, table="Tasks")  # saw both tips
    net.sync_all()
    for p in (a, b):
        assert p.get_record(e)["conflicts"] == []
        assert p.get_record(e)["values"]["title"] == "settled"
    converged(net)


def test_rejecting_one_pair_of_a_three_key_group_keeps_the_rest_together(net: Net) -> None:
    (a, b), t1, t2 = setup(net)
    t3 = a.create_table("Orgs", [{"label": "label", "name": "label"}]).facet
    ka, kb, kc = f"{t1}.name", f"{t2}.title", f"{t3}.label"
    e = a.create_record("Tasks", {"name": "x"}).id
    a.add_to_table(e, "People")
    a.add_to_table(e, "Orgs")
    a.confirm_mapping(ka, kb)
    a.confirm_mapping(kb, kc)
    slot = min(ka, kb, kc)
    assert {a.proj.slot_of(*k.rsplit(".", 1)) for k in (ka, kb, kc)} == {slot}
    a.clock.advance(3)
    a.update_record(e, {"label": "via orgs"}, table="Orgs")
    assert a.get_record(e)["values"]["name"] == "via orgs"
    net.sync_all()
    b.clock.advance(5)
    b.reject_mapping(ka, kb)
    net.sync_all()
    for p in (a, b):
        vals = p.get_record(e)["values"]
        assert vals["name"] == vals["title"] == vals["label"] == "via orgs"
        assert p.proj.slot_of(t2, "title") == p.proj.slot_of(t3, "label") == min(kb, kc)
        assert p.proj.slot_of(t1, "name") == ka
    a.clock.advance(10)
    a.update_record(e, {"title": "bc"}, table="People")
    net.sync_all()
    for p in (a, b):
        vals = p.get_record(e)["values"]
        assert (vals["name"], vals["title"], vals["label"]) == ("via orgs", "bc", "bc")
        assert p.get_record(e)["conflicts"] == []
    converged(net)


def test_mapping_crdt_or_differently_typed_fields_is_refused(net: Net) -> None:
    (a, _), t1, t2 = setup(net)
    seq = a.storage.head_seq()
    with pytest.raises(ValidationError):
        a.confirm_mapping(f"{t1}.body", f"{t2}.title")  # CRDT
    with pytest.raises(ValidationError):
        a.confirm_mapping(f"{t1}.n", f"{t2}.title")  # integer vs text
    with pytest.raises(ValidationError):
        a.confirm_mapping(f"{t1}.name", f"{t1}.name")
    assert a.storage.head_seq() == seq


# --- late structural ops and the incremental rule (spec 01 §7) -------------------------------

def _fresh_in_order(net: Net, name: str, peers: list[Peer]) -> Peer:
    records: dict[bytes, list[Any]] = {}
    for p in peers:
        for r in p.ops_since({}):
            records.setdefault(codec.decode(r[0])["bundle"], r)
    f = net.add_peer(name, clock_ms=max(p.clock.ms for p in peers))
    ordered = sorted(records.values(), key=lambda r: codec.decode(r[2][0])["hlc"])
    for r in ordered:  # one bundle at a time, canonical order: never late
        net.deliver(f, [r])
    return f


def test_a_late_define_field_forces_a_full_replay_and_converges(net: Net) -> None:
    (a, b), _, _ = setup(net)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    b.clock.advance(60_000)  # b runs ahead; a's schema change will be older than b's writes
    for i in range(3):
        b.update_record(e, {"n": i})
    a.add_field("Tasks", "extra", "integer")
    replays = b.proj.replays
    net.sync(a, b)
    assert b.proj.replays == replays + 1, "DefineField older than applied ops: full replay"
    net.sync(b, a)
    f = _fresh_in_order(net, "f", [a, b])
    assert f.proj.replays == 0
    assert "extra" in {fl.label for fl in b.views.table("Tasks").fields}
    converged(net)


def test_a_late_mapping_forces_a_full_replay_and_converges(net: Net) -> None:
    (a, b), t1, t2 = setup(net)
    e = a.create_record("Tasks", {"name": "x"}).id
    a.add_to_table(e, "People", {"title": "t"})
    net.sync_all()
    b.clock.advance(60_000)
    b.update_record(e, {"title": "written after"}, table="People")
    b.update_record(e, {"name": "by b"}, table="Tasks")
    a.confirm_mapping(f"{t1}.name", f"{t2}.title")
    replays = b.proj.replays
    net.sync(a, b)
    assert b.proj.replays == replays + 1
    net.sync(b, a)
    f = _fresh_in_order(net, "f", [a, b])
    h = converged(net)
    assert f.state_hash() == h
    for p in (a, b, f):
        rec = p.get_record(e)
        assert rec["values"]["name"] == rec["values"]["title"] == "by b"


def test_late_ordinary_writes_apply_incrementally_without_a_replay(net: Net) -> None:
    (a, b), _, _ = setup(net)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    b.clock.advance(60_000)
    b.update_record(e, {"name": "newer"})
    a.update_record(e, {"name": "older", "n": 1})  # concurrent, smaller stamp: late at b
    replays = b.proj.replays
    net.sync(a, b)
    assert b.proj.replays == replays, "a late non-structural op commutes: no replay"
    net.sync(b, a)
    for p in (a, b):
        assert p.get_record(e)["values"]["name"] == "newer"
        assert p.get_record(e)["conflicts"] == ["name"]
    converged(net)
