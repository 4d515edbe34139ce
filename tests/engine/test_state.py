"""The state projection (spec 01 §5, §7-§9, §11 invariants 4, 5, 6, 8, 9, 12).

Canonical order, LWW registers and tombstones, existence tips, conflict tips, CRDT slots,
local-only tables, projection resume from its checkpoint, re-ingest and corrupted stored bodies.
Remote writes with chosen HLCs and op ids are crafted with `seal` under fresh identities and
delivered like any remote bundle.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.core import codec, ids
from openprod.core import hlc as hlcmod
from openprod.core import ops as O
from openprod.core.errors import ValidationError
from openprod.core.identity import Identity
from openprod.engine import state
from openprod.engine.state import StateProjection
from openprod.storage import sqlite as oplog
from openprod.storage.sqlite import SqliteStorage
from tests.helpers import T0, Net, Peer

HOUR = 3_600_000


# --- helpers ------------------------------------------------------------------------------

def make_table(p: Peer) -> str:
    facet = p.create_table("Tasks", [
        {"label": "name", "name": "name"},
        {"label": "n", "name": "n", "type": "integer"},
        {"label": "st", "name": "st", "type": "enum", "options": {"choices": ["x", "y"]}},
        {"label": "body", "name": "body", "crdt": True},
    ]).facet
    assert facet is not None
    return facet


def make_table_facet(p: Peer) -> str:
    return str(p.views.table("Tasks").facet)


def v7(n: int, rnd: random.Random | None = None) -> bytes:
    """A UUIDv7-shaped id whose order follows n (the rest is random)."""
    tail = (rnd or random).randbytes(10)
    raw = bytearray(n.to_bytes(6, "big") + tail)
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return bytes(raw)


def craft(ident: Identity, ws: bytes, payloads: Sequence[O.Payload], hlcs: Sequence[bytes],
          vc: dict[bytes, bytes], op_ids: Sequence[bytes] | None = None) -> O.Bundle:
    return O.seal(ident, ws, "user", payloads, hlcs, vc, op_ids=op_ids)


def H(ms: int, c: int = 0) -> bytes:
    return hlcmod.pack(T0 + ms, c)


def tips(p: Peer, e: bytes, slot: str) -> list[list[Any]]:
    return p.views.tips("f", e, slot)


def replica(net: Net, name: str, records: Sequence[list[Any]], clock_ms: int = T0 + HOUR) -> Peer:
    f = net.add_peer(name, clock_ms=clock_ms)
    net.deliver(f, records)
    return f


def base_records(p: Peer) -> list[list[Any]]:
    return p.ops_since({})


def set_op(e: bytes, facet: str, text: str | None, field: str = "name") -> O.Payload:
    if text is None:
        return O.ClearField(e, facet, field)
    return O.SetField(e, facet, field, ["text", text])


# --- canonical order (invariant 4) --------------------------------------------------------

hlc_bytes = st.one_of(
    st.binary(min_size=12, max_size=12),  # includes bytes >= 0x80: memcmp, not signed order
    st.builds(lambda w, c: hlcmod.pack(w, c), st.integers(0, 3), st.integers(0, 3)),
)


@settings(max_examples=30)
@given(stamps=st.lists(st.tuples(hlc_bytes, st.binary(min_size=16, max_size=16)),
                       min_size=1, max_size=25, unique_by=lambda x: x[1]),
       seed=st.integers(0, 2**32 - 1))
def test_sql_canonical_order_is_python_sort(stamps: list[tuple[bytes, bytes]],
                                            seed: int) -> None:
    ident = Identity.from_seed(bytes(32))
    ws = bytes(16)
    order = list(stamps)
    random.Random(seed).shuffle(order)
    with tempfile.TemporaryDirectory() as tmp:
        st1 = SqliteStorage(Path(tmp) / "a.db")
        st2 = SqliteStorage(Path(tmp) / "b.db")
        try:
            bundles = [craft(ident, ws, [O.PutConfig("test", "k", i)], [h], {}, [oid])
                       for i, (h, oid) in enumerate(stamps)]
            st1.append(bundles)  # insertion order differs between the two oplogs
            for b in reversed(bundles):
                st2.append([b])
            expected = sorted(stamps)
            for s in (st1, st2):
                got = [(bytes(h), bytes(o)) for h, o in s.conn.execute(
                    "SELECT hlc, op_id FROM ops ORDER BY hlc, op_id")]
                assert got == expected
        finally:
            st1.close()
            st2.close()


def test_state_ignores_insertion_order(net: Net) -> None:
    a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    for i, p in enumerate((a, b, c)):
        p.clock.advance(i)
        p.update_record(e, {"name": f"v{i}", "n": i})
    records = [r for p in (a, b, c) for r in p.ops_since({})]
    uniq = {codec.decode(r[0])["bundle"]: r for r in records}
    recs = list(uniq.values())
    fresh = [replica(net, f"f{i}", random.Random(i).sample(recs, len(recs))) for i in range(3)]
    net.sync_all([a, b, c])
    h = net.assert_converged()
    assert len(tips(a, e, f"{facet}.name")) == 3
    for f in fresh:
        assert f.rebuild() == h


# --- LWW registers (invariant 5) ------------------------------------------------------------

def test_lww_every_arrival_order_equal_hlc_larger_op_id_wins(net: Net) -> None:
    a = net.add_peer("a")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "base"}).id
    base = base_records(a)
    vc = a.vclock()
    lo, hi = v7(1), v7(2)
    assert lo < hi
    writes = [  # all concurrent: each saw only the record's creation
        craft(Identity.generate(), a.ws.ws, [set_op(e, facet, "lo")], [H(10)], vc, [lo]),
        craft(Identity.generate(), a.ws.ws, [set_op(e, facet, "hi")], [H(10)], vc, [hi]),
        craft(Identity.generate(), a.ws.ws, [set_op(e, facet, "older")], [H(5, 3)], vc),
        craft(Identity.generate(), a.ws.ws, [set_op(e, facet, None)], [H(7)], vc),
    ]
    hashes = set()
    for i, perm in enumerate(itertools.permutations(writes)):
        f = replica(net, f"f{i}", base)
        for b in perm:
            net.deliver(f, [b.record])
        rec = f.get_record(e)
        assert rec["values"]["name"] == "hi"
        assert rec["conflicts"] == ["name"]
        assert sorted(t[0] for t in tips(f, e, f"{facet}.name")) == sorted(
            b.ops[0].op_id for b in writes)
        hashes.add(f.state_hash())
        assert f.rebuild() in hashes
    assert len(hashes) == 1


@settings(max_examples=25)
@given(writes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2),
                                 st.sampled_from(["a", "b", None])), min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_lww_register_matches_model(writes: list[tuple[int, int, str | None]],
                                    seed: int) -> None:
    """Concurrent writes with colliding HLCs, any arrival order: the max stamp wins, every
    write is a tip, and the conflict is open iff the tips hold two different values."""
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        net = Net(Path(tmp))
        try:
            a = net.add_peer("a")
            facet = make_table(a)
            e = a.create_record("Tasks", {"name": "base"}).id
            base, vc = base_records(a), a.vclock()
            bundles = []
            for i, (ms, c, text) in enumerate(writes):
                oid = v7(rnd.randrange(1, 4) * 1000 + i, rnd)
                bundles.append(craft(Identity.generate(), a.ws.ws, [set_op(e, facet, text)],
                                     [H(10 + ms, c)], vc, [oid]))
            rnd.shuffle(bundles)
            f = replica(net, "f", base)
            for b in bundles:
                net.deliver(f, [b.record])
            winner = max(bundles, key=lambda b: b.ops[0].stamp)
            assert f.get_record(e)["values"]["name"] == winner.ops[0].p.get("value", [0, None])[1]
            slot = f"{facet}.name"
            ts = tips(f, e, slot)
            assert sorted(t[0] for t in ts) == sorted(b.ops[0].op_id for b in bundles)
            distinct = {codec.encode(b.ops[0].p["value"]) if "value" in b.ops[0].p else None
                        for b in bundles}
            assert f.views.is_conflicted(e, slot) == (len(distinct) > 1)
            h = f.state_hash()
            assert f.rebuild() == h
        finally:
            for p in net.peers:
                p.ws.close()


def test_an_older_set_never_beats_a_clear(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    make_table(a)
    e = a.create_record("Tasks", {"name": "base"}).id
    net.sync_all()
    base = base_records(a)
    a.clock.advance(10)
    set_rec = a.update_record(e, {"name": "late"})
    net.sync(a, b)
    b.clock.advance(20)
    clear_rec = b.update_record(e, {"name": None})  # saw the Set
    assert set_rec.bundle_id and clear_rec.bundle_id
    set_b = a.storage.bundle_record(set_rec.bundle_id)
    clear_b = b.storage.bundle_record(clear_rec.bundle_id)
    for i, order in enumerate(([set_b, clear_b], [clear_b, set_b])):
        f = replica(net, f"f{i}", base)
        for r in order:
            net.deliver(f, [r])
        rec = f.get_record(e)
        assert rec["values"]["name"] is None
        assert rec["conflicts"] == []
    # A concurrent older Set against a Clear: still cleared (the tombstone has the larger
    # stamp), and the conflict is open because a tombstone is a value.
    c = net.add_peer("c")
    net.deliver(c, base)
    facet = make_table_facet(a)
    vc = c.vclock()
    older = craft(Identity.generate(), a.ws.ws, [set_op(e, facet, "old")], [H(1)], vc)
    newer = craft(Identity.generate(), a.ws.ws, [set_op(e, facet, None)], [H(2)], vc)
    for i, order in enumerate(([older, newer], [newer, older])):
        f = replica(net, f"g{i}", base)
        for bnd in order:
            net.deliver(f, [bnd.record])
        assert f.get_record(e)["values"]["name"] is None
        assert f.get_record(e)["conflicts"] == ["name"]


def test_delete_beats_a_concurrent_restore(net: Net) -> None:
    a, c = net.add_peer("a"), net.add_peer("c")
    make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    base = base_records(a)
    a.clock.advance(5)
    d1 = a.delete_record(e).bundle_id
    a.clock.advance(5)
    r = a.undo()  # a RestoreEntity that saw d1
    assert r.status == "applied"
    assert a.get_record(e)["id"]
    c.clock.advance(7)
    d2 = c.delete_entity(e).bundle_id  # concurrent with a's restore
    assert d1 and d2 and r.bundle_id
    recs = [a.storage.bundle_record(d1), a.storage.bundle_record(r.bundle_id),
            c.storage.bundle_record(d2)]
    hashes = set()
    for i, perm in enumerate(itertools.permutations(recs)):
        f = replica(net, f"f{i}", base)
        for rec in perm:
            net.deliver(f, [rec])
        assert not f.views.is_live(e), "delete must win over a concurrent restore"
        codes = sorted(t[4] for t in f.views.existence_tips(e))
        assert codes == ["d", "r"]
        hashes.add(f.state_hash())
    assert len(hashes) == 1
    net.sync_all([a, c])
    assert not a.views.is_live(e) and not c.views.is_live(e)
    # A restore that saw both tips makes it live again everywhere.
    a.clock.advance(5)
    a.ws.ingest([craft(a.ws.ident, a.ws.ws, [O.RestoreEntity(e)], a.ws.clock.tick_many(1),
                       a.vclock()).record])
    net.sync_all([a, c])
    assert a.views.is_live(e) and c.views.is_live(e)
    net.assert_converged([a, c])


# --- conflicts and tips (invariant 9) -------------------------------------------------------

def test_concurrent_differing_writes_open_a_conflict_with_two_tips(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    a.update_record(e, {"name": "A"})
    b.update_record(e, {"name": "B"})
    net.sync_all()
    for p in (a, b):
        assert p.get_record(e)["conflicts"] == ["name"]
        assert len(tips(p, e, f"{facet}.name")) == 2
    net.assert_converged()


def test_sequential_writes_do_not_conflict(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    for i in range(4):
        p, q = (a, b) if i % 2 == 0 else (b, a)
        p.clock.advance(3)
        p.update_record(e, {"name": f"v{i}"})
        net.sync(p, q)
    for p in (a, b):
        assert p.get_record(e) == b.get_record(e)
        assert p.get_record(e)["conflicts"] == []
        assert len(tips(p, e, f"{facet}.name")) == 1
    assert a.get_record(e)["values"]["name"] == "v3"


def test_concurrent_equal_writes_do_not_open_a_conflict(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    a.update_record(e, {"name": "same"})
    b.update_record(e, {"name": "same"})
    net.sync_all()
    for p in (a, b):
        assert len(tips(p, e, f"{facet}.name")) == 2
        assert p.get_record(e)["conflicts"] == []
        assert not p.views.is_conflicted(e, f"{facet}.name")
    net.assert_converged()


def test_three_way_conflict_has_three_tips_and_a_write_that_saw_them_closes_it(
    net: Net,
) -> None:
    a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
    facet = make_table(a)
    slot = f"{facet}.name"
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    for p, v in ((a, "A"), (b, "B"), (c, "C")):
        p.update_record(e, {"name": v})
    net.sync_all()
    for p in (a, b, c):
        assert len(tips(p, e, slot)) == 3
        assert p.get_record(e)["conflicts"] == ["name"]
    b.clock.advance(10)
    b.update_record(e, {"name": "final"})  # b has seen all three tips
    net.sync_all()
    for p in (a, b, c):
        assert [t[4] for t in tips(p, e, slot)] == [codec.encode(["text", "final"])]
        assert p.get_record(e)["conflicts"] == []
    h = net.assert_converged()
    for p in (a, b, c):
        assert p.rebuild() == h


def test_a_late_old_write_seen_by_newer_ones_does_not_become_a_tip(net: Net) -> None:
    a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
    facet = make_table(a)
    slot = f"{facet}.name"
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    base = base_records(a)
    a.clock.advance(5)
    w1 = a.update_record(e, {"name": "old"}).bundle_id
    net.sync(a, b)
    b.clock.advance(10)
    w2 = b.update_record(e, {"name": "new"}).bundle_id  # saw w1
    c.clock.advance(12)
    w3 = c.update_record(e, {"name": "other"}).bundle_id  # concurrent with both
    assert w1 and w2 and w3
    r1, r2, r3 = (a.storage.bundle_record(w1), b.storage.bundle_record(w2),
                  c.storage.bundle_record(w3))
    in_order = replica(net, "in_order", [*base, r1, r2, r3])
    late = replica(net, "late", base)
    for r in (r3, r2, r1):  # w1 arrives last, after the write that saw it
        net.deliver(late, [r])
    for f in (in_order, late):
        got = sorted(codec.decode(t[4])[1] for t in tips(f, e, slot))
        assert got == ["new", "other"]
        assert f.get_record(e)["conflicts"] == ["name"]
    assert late.state_hash() == in_order.state_hash()
    assert late.rebuild() == in_order.state_hash()


@pytest.mark.parametrize("flush_every", [1, 2, 3])
def test_full_replay_flushing_its_caches_midway_keeps_explicit_tips(
    net: Net, monkeypatch: pytest.MonkeyPatch, flush_every: int,
) -> None:
    """Regression: a full replay flushes its row caches every FLUSH_EVERY ops (50 000); a
    tip list flushed that way must be read back, not taken as absent (it lost tips, so a
    rebuild of a big workspace disagreed with its incremental state)."""
    monkeypatch.setattr(state, "FLUSH_EVERY", flush_every)
    a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    for p, v in ((a, "A"), (b, "B"), (c, "C")):
        p.update_record(e, {"name": v})
    net.sync_all()
    h = net.assert_converged()
    assert len(tips(a, e, f"{facet}.name")) == 3
    for p in (a, b, c):
        assert p.rebuild() == h
        assert len(tips(p, e, f"{facet}.name")) == 3
        assert p.verify()["ok"]


# --- CRDT slots (invariant 8) ---------------------------------------------------------------

def test_setfield_on_a_crdt_field_is_refused_by_the_facade_and_inert_if_injected(
    net: Net,
) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "x", "body": "hello"}).id
    net.sync_all()
    before_seq = a.storage.head_seq()
    with pytest.raises(ValidationError):
        a.set_field_raw(e, facet, "body", ["text", "nope"])
    assert a.storage.head_seq() == before_seq
    intruder = Identity.generate()
    a.clock.advance(10)
    bad = craft(intruder, a.ws.ws, [O.SetField(e, facet, "body", ["text", "injected"]),
                                    O.ClearField(e, facet, "body")],
                [H(20), H(21)], a.vclock())
    report = a.ws.ingest([bad.record])
    assert report.applied == [bad.bundle_id]
    inert = {bytes(o) for (o,) in a.proj.conn.execute("SELECT op_id FROM inert_ops")}
    assert {o.op_id for o in bad.ops} <= inert
    assert a.get_record(e)["values"]["body"] == "hello"
    assert a.get_record(e)["conflicts"] == []
    assert tips(a, e, f"{facet}.body") == []
    net.sync(a, b)
    h = net.assert_converged()
    assert a.rebuild() == h
    inert = {bytes(o) for (o,) in a.proj.conn.execute("SELECT op_id FROM inert_ops")}
    assert {o.op_id for o in bad.ops} <= inert, "a full replay keeps them inert"


def test_crdt_edits_in_any_order_converge_without_conflict(net: Net) -> None:
    a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
    facet = make_table(a)
    e = a.create_record("Tasks", {"body": "hello world"}).id
    net.sync_all()
    base = base_records(a)
    edits = [
        a.edit_text(e, "Tasks", "body", 0, 5, "HELLO").bundle_id,
        b.edit_text(e, "Tasks", "body", 11, 0, "!").bundle_id,
        c.edit_text(e, "Tasks", "body", 5, 1, "_").bundle_id,
    ]
    recs = [p.storage.bundle_record(bid) for p, bid in zip((a, b, c), edits, strict=True)]
    texts, hashes = set(), set()
    for i, perm in enumerate(itertools.permutations(recs)):
        f = replica(net, f"f{i}", base)
        for r in perm:
            net.deliver(f, [r])
        rec = f.get_record(e)
        texts.add(rec["values"]["body"])
        assert rec["conflicts"] == []
        assert tips(f, e, f"{facet}.body") == []
        hashes.add(f.state_hash())
    assert texts == {"HELLO_world!"}
    assert len(hashes) == 1
    net.sync_all([a, b, c])
    assert a.get_record(e)["values"]["body"] == "HELLO_world!"
    assert a.state_hash() in hashes


# --- local-only tables and vector clocks (invariant 12) --------------------------------------

def test_local_only_tables_never_change_either_hash(net: Net) -> None:
    a = net.add_peer("a")
    make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    digest, h = a.oplog_digest(), a.state_hash()
    conn = a.storage.conn
    conn.execute("INSERT OR REPLACE INTO local_meta(k, v) VALUES ('ui_theme', 'dark')")
    conn.execute("INSERT INTO stale_flags(op_id, bundle_id, hlc, received_at) VALUES (?,?,?,?)",
                 (ids.new_id(), ids.new_id(), H(0), 1))
    conn.execute("INSERT INTO inert_ops(op_id, seq, reason) VALUES (?, 1, 'test')",
                 (ids.new_id(),))
    # A validly signed bundle with bad content is settled in rejected_bundles (local-only).
    ident = Identity.generate()
    rec = craft(ident, a.ws.ws, [O.SetField(e, make_table_facet(a), "name", ["nonsense", 1])],
                [H(50)], a.vclock())
    bad_id = rec.bundle_id
    report = a.ws.ingest([rec.record])
    assert report.rejected and report.rejected[0][0] == bad_id
    assert a.storage.is_settled(bad_id)
    assert a.vclock()[ident.actor] == H(50), "a settled rejection advances the VC"
    assert (a.oplog_digest(), a.state_hash()) == (digest, h)
    a.reopen()
    assert (a.oplog_digest(), a.state_hash()) == (digest, h)
    assert a.get_record(e)["values"]["name"] == "x"


def test_vclock_is_max_hlc_per_actor(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    b.clock.advance(100)
    b.update_record(e, {"n": 1})
    a.update_record(e, {"n": 2})
    net.sync_all()
    for p in (a, b):
        expected: dict[bytes, bytes] = {}
        for actor, h in p.storage.conn.execute("SELECT actor, max(hlc) FROM ops GROUP BY actor"):
            expected[bytes(actor)] = bytes(h)
        assert p.vclock() == expected


# --- projection resume, re-ingest, corruption (invariant 6) ----------------------------------

def _remote_bundle(src: Peer, e: bytes) -> O.Bundle:
    src.clock.advance(10)
    res = src.update_record(e, {"name": "remote", "n": 7})
    assert res.bundle_id
    return O.open_bundle(src.storage.bundle_record(res.bundle_id), src.ws.ws)


def test_projection_resumes_from_its_checkpoint_after_a_close(net: Net) -> None:
    a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
    make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    bundle = _remote_bundle(a, e)
    net.sync(a, c)  # c applies it normally
    checkpoint = b.proj.checkpoint
    b.storage.append([bundle], origin="remote")  # appended, projection not caught up ...
    assert b.proj.checkpoint == checkpoint < b.storage.head_seq()
    b.reopen()  # ... then the process stops; the reopened projection resumes
    assert b.proj.checkpoint == b.storage.head_seq()
    assert b.get_record(e) == c.get_record(e)
    assert b.state_hash() == c.state_hash()
    assert b.rebuild() == c.state_hash()


def test_a_projection_killed_mid_batch_leaves_its_checkpoint_and_resumes(
    net: Net, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
    make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    bundles = [_remote_bundle(a, e) for _ in range(3)]
    net.sync(a, c)
    checkpoint = b.proj.checkpoint
    before = b.get_record(e)
    b.storage.append(bundles, origin="remote")
    calls = {"n": 0}
    real = StateProjection._apply

    def dying(self: StateProjection, op: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed mid-batch")
        real(self, op)

    monkeypatch.setattr(StateProjection, "_apply", dying)
    with pytest.raises(KeyboardInterrupt):
        b.proj.catch_up()
    monkeypatch.setattr(StateProjection, "_apply", real)
    assert b.proj.checkpoint == checkpoint, "nothing of the killed batch was committed"
    assert b.views.slot_value(e, f"{make_table_facet(b)}.name") == ["text", before["values"]
                                                                      ["name"]]
    b.reopen()
    assert b.get_record(e) == c.get_record(e)
    assert b.state_hash() == c.state_hash()


def test_reingest_is_a_no_op(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    a.update_record(e, {"n": 3})
    net.sync(a, b)
    everything = a.ops_since({})
    seq, digest, h, replays = (b.storage.head_seq(), b.oplog_digest(), b.state_hash(),
                               b.proj.replays)
    report = b.ws.ingest(everything)
    assert report.applied == [] and report.rejected == []
    assert len(report.dup) == len(everything)
    assert (b.storage.head_seq(), b.oplog_digest(), b.state_hash(), b.proj.replays) == (
        seq, digest, h, replays)
    # Also straight into storage: a known bundle is a dup, nothing is appended.
    res = b.storage.append([O.open_bundle(r, b.ws.ws) for r in everything])
    assert set(res.status.values()) == {"dup"}
    assert b.state_hash() == h


def _corrupt_body(path: Path, bundle_id: bytes) -> None:
    """Flip one byte of a stored op body behind the append-only trigger's back."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("DROP TRIGGER ops_no_update")
        seq, body = next(iter(conn.execute(
            "SELECT seq, body FROM ops WHERE bundle_id = ? ORDER BY pos DESC LIMIT 1",
            (bundle_id,))))
        body = bytearray(body)
        body[-1] ^= 0x01
        conn.execute("UPDATE ops SET body = ? WHERE seq = ?", (bytes(body), seq))
        conn.execute(oplog.SCHEMA)  # recreates the trigger
        with pytest.raises(apsw.ConstraintError):
            conn.execute("UPDATE ops SET t = t WHERE seq = ?", (seq,))
    finally:
        conn.close()


def test_a_corrupted_stored_body_is_quarantined_on_rebuild_and_verify_reports_it(
    net: Net,
) -> None:
    """Decision: verify() compares the live state with a scratch full replay. While the live
    state still holds the effects of a bundle whose stored body no longer matches its op_hash,
    the replay (which re-checks every op_hash and quarantines that bundle) differs, so verify
    says ok=False. `rebuild()` quarantines the same bundle in the live projection and reaches
    exactly the replayed state; after that verify() says ok=True, and the bundle stays listed
    in storage.quarantined() (the oplog itself is not repaired in V1)."""
    a, b = net.add_peer("a"), net.add_peer("b")
    facet = make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    a.clock.advance(10)
    bad = a.update_record(e, {"name": "doomed", "n": 5}).bundle_id
    a.clock.advance(10)
    a.update_record(e, {"st": "y"})
    net.sync_all()
    assert bad is not None
    assert b.get_record(e)["values"]["name"] == "doomed"
    b.ws.close()
    _corrupt_body(b.ws.path / "oplog.db", bad)
    b.ws = type(b.ws).open(b.ws.path, b.ws.ident, now=b.clock)
    v1 = b.verify()
    assert v1["ok"] is False
    assert v1["state_hash"] != v1["replayed_state_hash"]
    h = b.rebuild()
    assert h.hex() == v1["replayed_state_hash"], "live rebuild = verify's replay"
    assert bad in b.storage.quarantined()
    rec = b.get_record(e)
    assert rec["values"]["name"] == "x" and rec["values"]["n"] is None, "bundle not applied"
    assert rec["values"]["st"] == "y", "later bundles still apply"
    v2 = b.verify()
    assert v2["ok"] is True
    assert v2["state_hash"] == v2["replayed_state_hash"] == h.hex()
    b.reopen()
    assert b.state_hash() == h
    assert [codec.decode(t[4]) for t in tips(b, e, f"{facet}.name")] == [["text", "x"]]


def test_a_corrupted_body_not_yet_projected_is_quarantined_incrementally(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    make_table(a)
    e = a.create_record("Tasks", {"name": "x"}).id
    net.sync_all()
    bundle = _remote_bundle(a, e)
    b.storage.append([bundle], origin="remote")
    b.ws.close()
    _corrupt_body(b.ws.path / "oplog.db", bundle.bundle_id)
    b.ws = type(b.ws).open(b.ws.path, b.ws.ident, now=b.clock)  # catch_up on open
    assert bundle.bundle_id in b.storage.quarantined()
    assert b.get_record(e)["values"]["name"] == "x"
    h = b.state_hash()
    assert b.rebuild() == h
    assert b.verify()["ok"] is True
