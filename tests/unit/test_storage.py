"""Tests for openprod.storage (spec 01 §4, §8, §9, §10, §11 items 2, 4, 6, 7, 12; spec 03 §3).

The last section drives admission through the `Workspace` facade (ingest).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import pytest
from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import codec, hlc, ids
from openprod.core import ops as O
from openprod.core import vclock as vcmod
from openprod.core.errors import EquivocationError, StorageError
from openprod.core.identity import Identity
from openprod.storage import SqliteStorage
from openprod.storage.sqlite import DIGEST_PREFIX
from tests.helpers import T0, Net

WS = ids.new_id()
ACTORS = [Identity.from_seed(bytes([i + 1]) * 32, f"a{i}") for i in range(3)]
FACET = "workspace.Tasks"
DAY = 86_400_000


def mk(ident: Identity, wall: int, n: int = 2, *, op_ids: Sequence[bytes] | None = None,
       bundle_id: bytes | None = None, counter: int = 0, kind: str = "user",
       vc: dict[bytes, bytes] | None = None) -> O.Bundle:
    """A signed bundle of n small ops by ident, HLCs (wall, counter..counter+n-1)."""
    e = ids.new_id()
    payloads: list[O.Payload] = [O.CreateEntity(e)]
    payloads += [O.SetField(e, FACET, "title", ["text", f"v{i}"]) for i in range(n - 1)]
    return O.seal(ident, WS, kind, payloads, [hlc.pack(wall, counter + i) for i in range(n)],
                  vc or {}, op_ids=op_ids, bundle_id=bundle_id)


def mem() -> SqliteStorage:
    return SqliteStorage(":memory:")


def rows(s: SqliteStorage, table: str) -> int:
    for (n,) in s.conn.execute(f"SELECT count(*) FROM {table}"):
        return int(n)
    return 0


def snapshot(s: SqliteStorage) -> tuple[Any, ...]:
    return (s.op_count(), s.oplog_digest(), s.head_seq(), s.vclock(), rows(s, "ops"),
            rows(s, "bundles"), s.quarantined(), s.max_hlc())


def expected_digest(bundles: Sequence[O.Bundle]) -> bytes:
    """Spec 01 §9 computed independently from the op hashes."""
    hashes = [o.op_hash for b in bundles for o in b.ops]
    total = sum(int.from_bytes(x, "big") for x in hashes) % 2**256
    return blake3(DIGEST_PREFIX + len(hashes).to_bytes(8, "big")
                  + total.to_bytes(32, "big")).digest()


# a fixed set of bundles from three actors, interleaved in time
CORPUS: list[O.Bundle] = [
    mk(ACTORS[i % 3], T0 + 10 * (i // 3) + i % 2, n=1 + i % 3) for i in range(9)
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStorage]:
    s = SqliteStorage(tmp_path / "oplog.db")
    yield s
    s.close()


# --- basic append and reads -------------------------------------------------------------------

def test_append_assigns_seqs_and_keeps_bytes(store: SqliteStorage) -> None:
    a, b = mk(ACTORS[0], T0, 3), mk(ACTORS[1], T0, 2)
    r1 = store.append([a])
    assert r1.status == {a.bundle_id: "appended"} and r1.first_seq == 1 and r1.head == 3
    assert r1.appended == [a.bundle_id]
    r2 = store.append([b], origin="remote")
    assert r2.first_seq == 4 and r2.head == 5
    assert store.head_seq() == 5 and store.op_count() == 5
    assert store.has_bundle(a.bundle_id) and not store.has_bundle(ids.new_id())
    assert store.bundle_record(a.bundle_id) == a.record
    assert store.bundle_record(ids.new_id()) is None
    stored = store.ops_after(0)
    assert [o.seq for o in stored] == [1, 2, 3, 4, 5]
    assert [o.op_id for o in stored] == [o.op_id for o in (*a.ops, *b.ops)]
    assert [o.body for o in stored] == [*a.bodies, *b.bodies]
    assert [o.pos for o in stored] == [0, 1, 2, 0, 1]
    assert [o.seq for o in store.ops_after(3)] == [4, 5]
    assert [o.seq for o in store.ops_after(0, limit=2)] == [1, 2]
    assert store.max_hlc() == max(a.hlc, b.hlc)
    for o in stored:
        assert O.decode_stored(o.body, o.op_hash)["id"] == o.op_id


def test_empty_store() -> None:
    s = mem()
    assert (s.op_count(), s.head_seq(), s.vclock(), s.max_hlc()) == (0, 0, {}, hlc.ZERO)
    assert s.oplog_digest() == expected_digest([])
    assert list(s.bundles_since({})) == []
    assert s.append([]).status == {}


def test_pragmas_and_user_version(store: SqliteStorage) -> None:
    c = store.conn
    assert next(iter(c.execute("PRAGMA journal_mode")))[0] == "wal"
    assert next(iter(c.execute("PRAGMA user_version")))[0] == 1
    assert next(iter(c.execute("PRAGMA foreign_keys")))[0] == 0
    assert next(iter(c.execute("PRAGMA synchronous")))[0] == 2  # FULL


# --- append-only ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ops SET t = 'DeleteEntity'",
        "UPDATE ops SET body = x'00' WHERE seq = 1",
        "DELETE FROM ops",
        "DELETE FROM ops WHERE seq = 2",
        "UPDATE bundles SET kind = 'undo'",
        "DELETE FROM bundles",
        "INSERT OR REPLACE INTO ops SELECT * FROM ops WHERE seq = 1",
        "INSERT OR REPLACE INTO bundles SELECT * FROM bundles",
        "REPLACE INTO ops(seq, op_id, bundle_id, pos, hlc, actor, t, entity, body, op_hash)"
        " SELECT seq, op_id, bundle_id, pos, hlc, actor, 'X', entity, body, op_hash FROM ops",
    ],
)
def test_oplog_tables_are_append_only(store: SqliteStorage, sql: str) -> None:
    store.append([mk(ACTORS[0], T0, 3)])
    before = (list(store.conn.execute("SELECT * FROM ops ORDER BY seq")),
              list(store.conn.execute("SELECT * FROM bundles")))
    with pytest.raises(apsw.Error):
        store.conn.execute(sql)
    after = (list(store.conn.execute("SELECT * FROM ops ORDER BY seq")),
             list(store.conn.execute("SELECT * FROM bundles")))
    assert after == before


# --- atomic batches ---------------------------------------------------------------------------

def test_batch_with_equivocation_leaves_nothing(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "oplog.db")
    first = mk(ACTORS[0], T0)
    s.append([first])
    before = snapshot(s)
    good1, good2 = mk(ACTORS[1], T0), mk(ACTORS[2], T0 + 5)
    evil = mk(ACTORS[0], T0 + 9, bundle_id=first.bundle_id)
    with pytest.raises(EquivocationError):
        s.append([good1, good2, evil])
    assert snapshot(s) == before
    assert not s.has_bundle(good1.bundle_id) and not s.has_bundle(good2.bundle_id)
    s.close()
    s = SqliteStorage(tmp_path / "oplog.db")
    assert snapshot(s) == before
    # the good bundles still append afterwards, with contiguous seqs
    res = s.append([good1, good2])
    assert res.first_seq == before[2] + 1
    assert [o.seq for o in s.ops_after(0)] == list(range(1, s.head_seq() + 1))
    s.close()


def test_batch_failing_mid_insert_leaves_nothing(store: SqliteStorage) -> None:
    store.append([mk(ACTORS[0], T0)])
    before = snapshot(store)
    batch = [mk(ACTORS[1], T0 + 1, 3), mk(ACTORS[2], T0 + 2, 3), mk(ACTORS[1], T0 + 3, 3)]
    poison = batch[2].ops[1].op_id  # a later op of the last bundle
    store.conn.execute(
        f"CREATE TEMP TRIGGER boom BEFORE INSERT ON ops WHEN NEW.op_id = x'{poison.hex()}'"
        " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(StorageError):
        store.append(batch, origin="remote", stale_before_ms=T0 + DAY)
    assert snapshot(store) == before
    assert (rows(store, "stale_flags"), rows(store, "quarantine"), rows(store, "vclock")) == (
        0, 0, 1)
    store.conn.execute("DROP TRIGGER boom")
    res = store.append(batch)
    assert set(res.status.values()) == {"appended"}
    assert res.first_seq == before[2] + 1 and res.head == before[2] + 9


def test_reappend_is_a_dup_with_no_new_rows(store: SqliteStorage) -> None:
    b = mk(ACTORS[0], T0, 3)
    store.append([b])
    before = snapshot(store)
    res = store.append([b])
    assert res.status == {b.bundle_id: "dup"} and res.appended == []
    assert res.head == before[2]
    assert snapshot(store) == before
    # a dup inside a mixed batch is skipped, the rest appended
    c = mk(ACTORS[1], T0)
    res = store.append([b, c])
    assert res.status == {b.bundle_id: "dup", c.bundle_id: "appended"}
    assert store.op_count() == before[0] + 2


def test_same_bundle_id_other_bytes_is_equivocation(store: SqliteStorage) -> None:
    b = mk(ACTORS[0], T0)
    store.append([b])
    before = snapshot(store)
    for other in (mk(ACTORS[0], T0, bundle_id=b.bundle_id),
                  mk(ACTORS[1], T0, 3, bundle_id=b.bundle_id)):
        with pytest.raises(EquivocationError) as ei:
            store.append([other])
        assert ei.value.code == "equivocation"
        assert snapshot(store) == before
    assert store.bundle_record(b.bundle_id) == b.record


# --- duplicate op ids -------------------------------------------------------------------------

def rivals(shared: bytes, k: int = 2) -> list[O.Bundle]:
    """k bundles of different actors, each holding op id `shared` (plus an op of its own)."""
    return [mk(ACTORS[i], T0 + i, 2, op_ids=[ids.new_id(), shared]) for i in range(k)]


def test_shared_op_id_quarantines_the_larger_header_hash_in_both_orders() -> None:
    a, b = rivals(ids.new_id())
    loser = max((a, b), key=lambda x: x.header_hash)
    winner = a if loser is b else b
    results = []
    for order in ([a, b], [b, a]):
        s = mem()
        statuses = {}
        for x in order:
            statuses.update(s.append([x]).status)
        q = s.quarantined()
        assert set(q) == {loser.bundle_id}
        assert "duplicate op id" in q[loser.bundle_id]
        # both stored, both counted, both sent in catch-up
        assert s.has_bundle(a.bundle_id) and s.has_bundle(b.bundle_id)
        assert s.op_count() == 4
        assert s.vclock() == {a.actor: a.hlc, b.actor: b.hlc}
        assert {bytes(codec.decode(r[0])["bundle"]) for r in s.bundles_since({})} == {
            a.bundle_id, b.bundle_id}
        assert statuses[winner.bundle_id] == "appended"
        assert statuses[loser.bundle_id] == ("quarantined" if order[0] is winner else "appended")
        results.append((s.oplog_digest(), set(q)))
        s.close()
    assert results[0] == results[1]


def test_shared_op_id_in_one_batch() -> None:
    a, b = rivals(ids.new_id())
    loser = max((a, b), key=lambda x: x.header_hash)
    for order in ([a, b], [b, a]):
        s = mem()
        s.append(order)
        assert set(s.quarantined()) == {loser.bundle_id}


def test_three_rivals_every_arrival_order_quarantines_the_same_two() -> None:
    bundles = rivals(ids.new_id(), 3)
    keep = min(bundles, key=lambda x: x.header_hash)
    expected = {x.bundle_id for x in bundles if x is not keep}
    seen = set()
    for perm in itertools.permutations(bundles):
        s = mem()
        for x in perm:
            s.append([x])
        seen.add(frozenset(s.quarantined()))
        assert set(s.quarantined()) == expected
    assert len(seen) == 1


def test_quarantine_with_unrelated_bundles_and_redelivery(tmp_path: Path) -> None:
    a, b = rivals(ids.new_id())
    loser = max((a, b), key=lambda x: x.header_hash)
    s1 = SqliteStorage(tmp_path / "one.db")
    s2 = SqliteStorage(tmp_path / "two.db")
    s1.append([CORPUS[0], a, CORPUS[1], b])
    s2.append([b, *CORPUS[:2]])
    s2.append([a])
    s2.append([a, b])  # redelivery: dups, nothing changes
    assert s1.quarantined() == s2.quarantined()
    assert set(s1.quarantined()) == {loser.bundle_id}
    assert s1.oplog_digest() == s2.oplog_digest()
    s1.close()
    s2.close()


# --- vector clock -----------------------------------------------------------------------------

def test_vclock_is_max_hlc_per_actor(store: SqliteStorage) -> None:
    late = mk(ACTORS[0], T0 + 100)
    early = mk(ACTORS[0], T0)
    other = mk(ACTORS[1], T0 + 50, 4)
    store.append([late])
    store.append([early, other])  # an older bundle never lowers the VC
    assert store.vclock() == {ACTORS[0].actor: late.hlc, ACTORS[1].actor: other.hlc}
    assert dict(
        (bytes(a), bytes(h)) for a, h in store.conn.execute("SELECT actor, hlc FROM vclock")
    ) == store.vclock()


def test_vclock_counts_quarantined_bundles() -> None:
    shared = ids.new_id()
    a = mk(ACTORS[0], T0, op_ids=[ids.new_id(), shared])
    b = mk(ACTORS[1], T0 + 7, op_ids=[ids.new_id(), shared])
    s = mem()
    s.append([a, b])
    assert len(s.quarantined()) == 1
    assert s.vclock() == {a.actor: a.hlc, b.actor: b.hlc}


def test_settled_rejection_advances_vclock_unsettled_does_not(store: SqliteStorage) -> None:
    base = mk(ACTORS[0], T0)
    store.append([base])
    digest = store.oplog_digest()
    actor = ACTORS[0].actor
    unsettled = hlc.pack(T0 + 50, 0)
    store.record_rejection(ids.new_id(), actor, unsettled, "bad_digest", "flipped", b"raw",
                           settled=False)
    assert store.vclock() == {actor: base.hlc}
    bid = ids.new_id()
    settled = hlc.pack(T0 + 40, 3)
    store.record_rejection(bid, actor, settled, "content", "bad payload", settled=True)
    assert store.vclock() == {actor: settled}
    assert store.is_settled(bid)
    # an older settled rejection never lowers it; a new actor appears
    store.record_rejection(ids.new_id(), actor, hlc.pack(T0 + 1, 0), "content", "x",
                           settled=True)
    new_actor = ACTORS[2].actor
    store.record_rejection(ids.new_id(), new_actor, hlc.pack(T0, 9), "content", "x",
                           settled=True)
    assert store.vclock() == {actor: settled, new_actor: hlc.pack(T0, 9)}
    # settled rejections without an hlc are logged but cannot move the clock
    store.record_rejection(ids.new_id(), actor, None, "content", "x", settled=True)
    assert store.vclock()[actor] == settled
    assert rows(store, "rejected_bundles") == 5
    assert store.oplog_digest() == digest and store.op_count() == 2
    # survives reopening
    path = store.path
    store.close()
    s2 = SqliteStorage(path)
    assert s2.vclock() == {actor: settled, new_actor: hlc.pack(T0, 9)}
    assert s2.is_settled(bid)
    s2.close()


# --- digest -----------------------------------------------------------------------------------

def test_digest_follows_the_spec_formula_and_changes_per_op() -> None:
    s = mem()
    seen = {s.oplog_digest()}
    for i, b in enumerate(CORPUS):
        s.append([b])
        assert s.oplog_digest() == expected_digest(CORPUS[: i + 1])
        seen.add(s.oplog_digest())
    assert len(seen) == len(CORPUS) + 1
    assert s.op_count() == sum(len(b.ops) for b in CORPUS)


@given(st.permutations(list(range(len(CORPUS)))), st.integers(1, 4))
def test_digest_and_vclock_are_independent_of_arrival_order(
    perm: list[int], batch: int
) -> None:
    reference = mem()
    reference.append(CORPUS)
    s = mem()
    order = [CORPUS[i] for i in perm]
    for i in range(0, len(order), batch):
        s.append(order[i:i + batch])
    assert s.oplog_digest() == reference.oplog_digest()
    assert s.vclock() == reference.vclock()
    assert s.op_count() == reference.op_count()
    assert list(s.bundles_since({})) == list(reference.bundles_since({}))
    s.close()
    reference.close()


def test_local_only_tables_never_change_the_digest(tmp_path: Path) -> None:
    plain, busy = mem(), SqliteStorage(tmp_path / "busy.db")
    plain.append(CORPUS[:4])
    busy.append(CORPUS[:2], origin="remote", stale_before_ms=T0 + DAY)  # all stale
    busy.append(CORPUS[2:4])
    assert rows(busy, "stale_flags") > 0
    busy.local_set("workspace", WS)
    busy.local_set("note", "hello")
    busy.record_rejection(ids.new_id(), ACTORS[0].actor, hlc.pack(T0, 1), "content", "x",
                          settled=True)
    busy.record_rejection(ids.new_id(), None, None, "bad_signature", "x", b"raw",
                          settled=False)
    busy.quarantine(CORPUS[0].bundle_id, "corrupted body")
    assert busy.local_get("workspace") == WS and busy.local_get("missing") is None
    assert busy.oplog_digest() == plain.oplog_digest()
    assert busy.op_count() == plain.op_count()
    busy.close()


# --- catch-up ---------------------------------------------------------------------------------

def canonical(bundles: Sequence[O.Bundle]) -> list[list[Any]]:
    return [b.record for b in sorted(bundles, key=lambda b: b.first_stamp)]


CATCHUP_STORE_BUNDLES = [CORPUS[i] for i in random.Random(7).sample(range(len(CORPUS)), 9)]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(T0 - 5, T0 + 40), st.integers(0, 3)),
                max_size=3))
def test_bundles_since_returns_exactly_the_missing_bundles(
    cuts: list[tuple[int, int, int]]
) -> None:
    s = mem()
    for b in CATCHUP_STORE_BUNDLES:  # arrival order differs from canonical order
        s.append([b])
    vc = {ACTORS[a].actor: hlc.pack(w, c) for a, w, c in cuts}
    got = list(s.bundles_since(vc))
    want = [b for b in CORPUS if b.hlc > vc.get(b.actor, hlc.ZERO)]
    assert got == canonical(want)
    for rec in got:  # whole and verifiable
        assert O.open_bundle(rec, WS).bundle_id in {b.bundle_id for b in want}
    s.close()


def test_bundles_since_own_vclock_is_empty_and_feeds_a_replica() -> None:
    src, dst = mem(), mem()
    src.append(CORPUS)
    assert list(src.bundles_since(src.vclock())) == []
    dst.append(CORPUS[:3])
    missing = list(src.bundles_since(dst.vclock()))
    dst.append([O.open_bundle(r, WS) for r in missing])
    assert dst.oplog_digest() == src.oplog_digest()
    assert vcmod.covers(dst.vclock(), src.vclock())


def test_sql_canonical_order_equals_python_sort() -> None:
    s = mem()
    bundles = list(CORPUS)
    random.Random(3).shuffle(bundles)
    s.append(bundles)
    sql = [bytes(h) + bytes(i) for h, i in s.conn.execute(
        "SELECT hlc, op_id FROM ops ORDER BY hlc, op_id")]
    py = sorted(o.stamp for b in bundles for o in b.ops)
    assert sql == py


# --- stale flags, quarantine(), reopen --------------------------------------------------------

def test_stale_flags_mark_only_old_ops(store: SqliteStorage) -> None:
    old = mk(ACTORS[0], T0, 3)
    fresh = mk(ACTORS[1], T0 + 10, 2)
    edge = mk(ACTORS[2], T0 + 5, 1)
    store.append([old, fresh, edge], origin="remote", stale_before_ms=T0 + 5)
    flagged = {bytes(o) for (o,) in store.conn.execute("SELECT op_id FROM stale_flags")}
    assert flagged == {o.op_id for o in old.ops}
    store.append([mk(ACTORS[0], T0 - DAY)])  # no threshold given: never flagged
    assert rows(store, "stale_flags") == 3


def test_manual_quarantine(store: SqliteStorage) -> None:
    b = mk(ACTORS[0], T0)
    store.append([b])
    store.quarantine(b.bundle_id, "body no longer matches its op_hash")
    store.quarantine(b.bundle_id, "again")  # idempotent
    assert store.quarantined() == {b.bundle_id: "body no longer matches its op_hash"}


def test_reopen_keeps_count_digest_head_vclock(tmp_path: Path) -> None:
    path = tmp_path / "oplog.db"
    s = SqliteStorage(path)
    a, b = rivals(ids.new_id())
    s.append(CORPUS[:5])
    s.append([a, b])
    s.record_rejection(ids.new_id(), ACTORS[2].actor, hlc.pack(T0 + 999, 0), "content", "x",
                       settled=True)
    before = snapshot(s)
    s.close()
    s = SqliteStorage(path)
    assert snapshot(s) == before
    s.append(CORPUS[5:])
    assert s.head_seq() == before[2] + sum(len(b.ops) for b in CORPUS[5:])
    assert s.oplog_digest() == expected_digest([*CORPUS, a, b])
    s.close()


# --- admission through the Workspace facade ---------------------------------------------------

def two_peers(net: Net) -> tuple[Any, Any]:
    a = net.add_peer("a")
    b = net.add_peer("b")
    net.sync(a, b)
    b.create_table("Tasks", [{"label": "name", "type": "text", "name": "name"}])
    net.sync(b, a)
    net.assert_converged()
    return a, b


def forge(peer: Any, payloads: list[O.Payload]) -> O.Bundle:
    """A bundle validly signed by peer's identity that skips every payload check."""
    hs = peer.ws.clock.tick_many(len(payloads))
    return O.seal(peer.ws.ident, peer.ws.ws, "user", payloads, hs, peer.ws.vclock())


def stored_ids(peer: Any) -> set[bytes]:
    return {bytes(b) for (b,) in peer.ws.storage.conn.execute("SELECT bundle_id FROM bundles")}


def test_signed_bad_payload_is_settled_and_later_bundles_apply(net: Net) -> None:
    a, b = two_peers(net)
    e = ids.new_id()
    bad = forge(b, [O.CreateEntity(e), O.SetField(e, "workspace.x", "f", ["integer", "x"])])
    before = a.oplog_digest()
    report = a.ingest([bad.record])
    assert report.applied == [] and len(report.rejected) == 1
    bid, code, _ = report.rejected[0]
    assert (bid, code) == (bad.bundle_id, "content")
    assert a.vclock()[b.actor] == bad.hlc  # settled: the VC moved past it
    assert bad.bundle_id not in stored_ids(a)
    assert a.oplog_digest() == before
    assert a.storage.is_settled(bad.bundle_id)
    # re-delivery is rejected again but recorded once
    a.ingest([bad.record])
    assert rows(a.storage, "rejected_bundles") == 1
    # B's later bundles still reach A through catch-up by vector clock
    tasks = "Tasks"
    b.clock.advance(10)
    rec = b.create_record(tasks, {"name": "after"})
    assert b.ops_since(a.vclock()) != []
    net.sync(b, a)
    assert a.get_record(rec.id)["values"]
    net.assert_converged()


def test_integrity_failure_is_rejected_unstored_and_unsettled(net: Net) -> None:
    a, b = two_peers(net)
    tasks = "Tasks"
    b.clock.advance(10)
    rec = b.create_record(tasks, {"name": "x"})
    genuine = b.ops_since(a.vclock())
    assert len(genuine) == 1
    header, sig, bodies = genuine[0]
    tampered_body = bytearray(bodies[-1])
    tampered_body[-2] ^= 0x01
    vc_before, digest_before = a.vclock(), a.oplog_digest()
    for bad in ([header, sig, [*bodies[:-1], bytes(tampered_body)]],
                [header, bytes([sig[0] ^ 1]) + sig[1:], bodies]):
        report = a.ingest([bad])
        assert report.applied == [] and len(report.rejected) == 1
        assert report.rejected[0][1] in ("bad_digest", "bad_signature")
        assert a.vclock() == vc_before  # not settled
        assert a.oplog_digest() == digest_before
    assert rows(a.storage, "rejected_bundles") == 0 or not any(
        s for (s,) in a.storage.conn.execute("SELECT settled FROM rejected_bundles"))
    # the genuine bundle applies afterwards
    report = a.ingest(genuine)
    assert len(report.applied) == 1 and not report.rejected
    assert a.get_record(rec.id)["values"]
    net.assert_converged()


def test_wrong_workspace_bundle_is_rejected_unsettled(net: Net) -> None:
    a, b = two_peers(net)
    stranger = O.seal(b.ws.ident, ids.new_id(), "user", [O.CreateEntity(ids.new_id())],
                      [b.ws.clock.tick()], {})
    vc = a.vclock()
    report = a.ingest([stranger.record])
    assert len(report.rejected) == 1 and report.applied == []
    assert a.vclock() == vc


def test_future_bundle_drift_boundary(net: Net) -> None:
    a, b = two_peers(net)
    tasks = "Tasks"
    now = a.clock.ms
    b.clock.set(now + 300_001)
    rec = b.create_record(tasks, {"name": "future"})
    records = b.ops_since(a.vclock())
    assert len(records) == 1
    assert hlc.wall_ms(O.open_bundle(records[0], a.ws.ws).hlc) == now + 300_001
    vc, state = a.vclock(), a.ws.clock.current()
    report = a.ingest(records)
    assert [r[1] for r in report.rejected] == ["future_hlc"] and report.applied == []
    assert a.vclock() == vc and a.ws.clock.current() == state  # unchanged, not settled
    assert not a.storage.has_bundle(rec.bundle_id)
    # one millisecond later the same bundle is exactly +300 000 ms ahead: accepted
    a.clock.advance(1)
    report = a.ingest(records)
    assert report.applied == [rec.bundle_id] and not report.rejected
    assert a.ws.clock.current() > O.open_bundle(records[0], a.ws.ws).hlc
    net.assert_converged()


def test_signed_bad_payload_from_the_future_is_not_settled(net: Net) -> None:
    """A bundle failing both content and drift is a drift failure: not settled (spec 01 §5)."""
    a, b = two_peers(net)
    b.clock.set(a.clock.ms + 10 * 60_000)
    e = ids.new_id()
    bad = forge(b, [O.CreateEntity(e), O.SetField(e, "workspace.x", "f", ["integer", "x"])])
    vc = a.vclock()
    report = a.ingest([bad.record])
    assert len(report.rejected) == 1 and report.rejected[0][1] == "future_hlc"
    assert a.vclock() == vc
    assert not a.storage.is_settled(bad.bundle_id)


def test_stale_bundle_is_applied_and_flagged(net: Net) -> None:
    a, b = two_peers(net)
    tasks = "Tasks"
    b.clock.advance(1)
    old = b.create_record(tasks, {"name": "old"})
    b.clock.advance(1)
    borderline = b.create_record(tasks, {"name": "borderline"})
    records = b.ops_since(a.vclock())
    border_wall = hlc.wall_ms(O.open_bundle(records[1], a.ws.ws).ops[0].hlc)
    a.clock.set(border_wall + hlc.STALE_MS)  # `old` is > 7 days old, `borderline` exactly 7
    report = a.ingest(records)
    assert report.applied == [old.bundle_id, borderline.bundle_id] and not report.rejected
    flagged = {bytes(x) for (x,) in a.storage.conn.execute("SELECT bundle_id FROM stale_flags")}
    assert flagged == {old.bundle_id}
    assert a.get_record(old.id)["values"]  # applied
    net.assert_converged()


def test_equivocation_through_ingest_is_rejected(net: Net) -> None:
    a, b = two_peers(net)
    tasks = "Tasks"
    b.clock.advance(5)
    res = b.create_record(tasks, {"name": "one"})
    net.sync(b, a)
    twin = O.seal(b.ws.ident, b.ws.ws, "user", [O.CreateEntity(ids.new_id())],
                  [b.ws.clock.tick()], {}, bundle_id=res.bundle_id)
    digest = a.oplog_digest()
    report = a.ingest([twin.record])
    assert [r[1] for r in report.rejected] == ["equivocation"]
    assert a.oplog_digest() == digest
    # an exact re-delivery is a dup
    assert a.ingest(b.ops_since({})).dup != []


def test_shared_op_id_quarantines_the_same_bundle_on_every_peer(net: Net) -> None:
    a, b = two_peers(net)
    c, d = net.add_peer("c"), net.add_peer("d")
    net.sync_all()
    shared = ids.new_id()
    e1, e2 = ids.new_id(), ids.new_id()
    x = O.seal(a.ws.ident, a.ws.ws, "user", [O.CreateEntity(e1)], a.ws.clock.tick_many(1),
               a.vclock(), op_ids=[shared])
    y = O.seal(b.ws.ident, b.ws.ws, "user", [O.CreateEntity(e2)], b.ws.clock.tick_many(1),
               b.vclock(), op_ids=[shared])
    loser = max((x, y), key=lambda z: z.header_hash)
    winner_entity = e1 if loser is y else e2
    loser_entity = e2 if loser is y else e1
    for peer, order in ((a, [x, y]), (b, [y, x]), (c, [x, y]), (d, [y, x])):
        for z in order:
            net.deliver(peer, [z.record])
        assert set(peer.storage.quarantined()) == {loser.bundle_id}, peer.name
        assert peer.views.is_live(winner_entity) and not peer.views.is_live(loser_entity)
    net.assert_converged()
    # catch-up still carries the quarantined bundle, so late joiners decide alike
    e = net.add_peer("e")
    net.deliver(e, a.ops_since({}))
    assert set(e.storage.quarantined()) == {loser.bundle_id}
    net.assert_converged()
