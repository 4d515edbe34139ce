"""Sync under attack and strain in the simulation harness (spec 03 §9 S11–S18, S20–S24, S26–S32).

Bad input comes from a `RawPeer` (tests/harness/rawpeer.py) that speaks the wire protocol by
hand into a real node's `SyncService.accept_stream`; clocks, slow and silent peers and the
convergence checks run between full nodes of a `TestNetwork`. Every timer-driven scenario runs
on `MockClock(autojump_threshold=0)` (the `autojump_clock` fixture), so waiting 45 or 60 s costs
nothing and the timer values themselves can be asserted.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from actors.sync_peer import SyncPeer
from actors.sync_service import Backoff, SyncConfig, SyncService
from openprod.core import codec, hlc, ids
from openprod.core import ops as O
from openprod.core.identity import Identity
from openprod.engine.workspace import OPLOG_FILE
from openprod.storage import db
from openprod.storage.sqlite import MOD
from openprod.sync import catchup
from openprod.sync import messages as m
from tests.harness.network import TestNetwork, fault_pair
from tests.harness.peer import EventStream, Peer
from tests.harness.rawpeer import RawPeer, replace_body, reseal_body, seal

MIB = 1 << 20
MINUTE_MS = 60_000
DAY_MS = 24 * 60 * MINUTE_MS
FACET = "workspace.t_0123456789abcdef0123456789abcdef"


# --- helpers -------------------------------------------------------------------------------------

async def rows(p: Peer, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A query on the peer's oplog database, run by its writer (so it sees every commit)."""
    return await p.node.current.writer.call(
        lambda ws: [tuple(r) for r in ws.storage.conn.execute(sql, args)])


async def rejected(p: Peer) -> list[tuple[Any, ...]]:
    """(bundle_id, code, settled, raw) of every rejected_bundles row."""
    return [(bytes(b), c, s, None if r is None else bytes(r)) for b, c, s, r in await rows(
        p, "SELECT bundle_id, code, settled, raw FROM rejected_bundles ORDER BY received_at")]


async def oplog_state(p: Peer) -> tuple[Any, ...]:
    """What 'nothing written' compares: VC, digest, op count and rejection rows."""
    vc = await p.vector_clock()
    digest = await p.oplog_digest()
    (n,), = await rows(p, "SELECT count(*) FROM ops")
    (r,), = await rows(p, "SELECT count(*) FROM rejected_bundles")
    return vc, digest, n, r


def missing(src: Peer, vc: dict[bytes, bytes]) -> tuple[list[list[Any]], dict[bytes, bytes]]:
    """What a session from `src` to a peer holding `vc` would send first: (records, prev)."""
    conn = src.node.current.sync.open_reader()
    try:
        page = catchup.Session(conn, vc).page()
        return page.records, dict(page.prev)
    finally:
        conn.close()


def local_vc(p: Peer) -> dict[bytes, bytes]:
    return p.node.current.sync.local_vc()


def op_index(record: list[Any], t: str) -> int:
    """The position of the first op of type `t` in a record."""
    for i, body in enumerate(record[2]):
        if codec.decode(body)["t"] == t:
            return i
    raise AssertionError(f"no {t} op in the record")


def bundle_id(record: list[Any]) -> bytes:
    bid = codec.decode(record[0])["bundle"]
    assert isinstance(bid, bytes)
    return bid


def link_of(svc: SyncService, p: Peer) -> SyncPeer:
    return svc.links[bytes.fromhex(p.actor_id)]


def link_of_raw(svc: SyncService, raw: RawPeer) -> SyncPeer:
    return svc.links[raw.actor]


async def collect(events: EventStream, until: str, *, timeout: float) -> list[dict[str, Any]]:
    """Every event up to and including the first of type `until`."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        async for ev in events:
            seen.append(ev)
            if ev["type"] == until:
                return seen
    raise AssertionError(f"the event stream ended before {until}")


def fresh_hello(raw: RawPeer, **over: Any) -> m.Hello:
    fields: dict[str, Any] = {
        "proto_min": raw.proto_min, "proto_max": raw.proto_max, "ws": raw.ws,
        "genesis": raw.genesis, "actor": raw.actor, "nonce": ids.new_id() * 2,
        "name": "raw", "device": "raw", "sw": "rawpeer"}
    fields.update(over)
    return m.Hello(**fields)


def own_bundles(ident: Identity, ws: bytes, wall_ms: int, n: int, *, first: int = 0,
                ) -> list[O.Bundle]:
    """n consecutive one-op bundles of `ident` (CreateEntity), HLC counters first, first+1, …"""
    return [seal(ident, ws, [O.CreateEntity(ids.new_id())], [hlc.pack(wall_ms, first + i)])
            for i in range(n)]


async def workspace_with_author(network: TestNetwork, records: int = 1,
                                ) -> tuple[Peer, Peer, str]:
    """A (creator) and X, a member that authored `records` records A has not seen."""
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    x = await network.add_peer("x")
    await network.sync(a, x)
    for i in range(records):
        await x.create_record(t, {"name": f"genuine {i}"})
    return a, x, t


async def relay_forgery(network: TestNetwork, a: Peer, x: Peer,
                        forge: Callable[[list[list[Any]]], tuple[int, list[Any]]],
                        code: str) -> bytes:
    """A RawPeer relays X's bundles to A with one record replaced by `forge`'s; A must reject
    it with `code`, keep the raw bytes, ack, close 4008 and report the peer misbehaving.
    Returns the id of X's genuine bundle the forgery replaced."""
    svc = network.sync_of(a)
    records, prev = missing(x, local_vc(a))
    i, forged = forge(records)
    genuine = bundle_id(records[i])
    records[i] = forged
    bid = bundle_id(forged)
    (before,), = await rows(a, "SELECT count(*) FROM bundles")
    events = a.events()
    raw = RawPeer.joining(svc, "relay")
    async with raw.link(svc) as link:
        await link.handshake()
        await link.send(link.ops(records, prev))
        ack = await link.recv(m.Ack)
        assert isinstance(ack, m.Ack)
        assert ack.rejected == [[bid, code]]
        assert ack.applied == i  # the genuine bundles before the forgery still land
        assert await link.closed() == m.CLOSE_INVALID_SIGNED_DATA
        assert link.close_code == m.CLOSE_INVALID_SIGNED_DATA
    ev = await events.next("sync_peer_misbehaving")
    assert ev["peer_id"] == raw.actor.hex()
    events.close()
    rej = await rejected(a)
    assert [(b, c, s) for b, c, s, _ in rej] == [(bid, code, 0)]  # unsettled
    assert rej[0][3] == codec.encode(forged)  # raw bytes kept for diagnosis
    assert await rows(a, "SELECT count(*) FROM bundles WHERE bundle_id = ?", (bid,)) == [(0,)]
    assert (await rows(a, "SELECT count(*) FROM bundles"))[0][0] == before + i
    # the VC did not move past it
    assert local_vc(a).get(bytes.fromhex(x.actor_id), hlc.ZERO) < codec.decode(forged[0])["hlc"]
    return genuine


async def genuine_arrives(network: TestNetwork, a: Peer, x: Peer, bid: bytes) -> None:
    """The VC never moved past the forgery: X's own session now delivers the real bundle."""
    await network.connect(x, a)
    await network.wait_for_sync()
    await network.assert_converged()
    assert await rows(a, "SELECT count(*) FROM bundles WHERE bundle_id = ?", (bid,)) == [(1,)]
    assert await a.verify()


# --- S11–S21: bad input --------------------------------------------------------------------------

async def test_s11_altered_op_body_is_bad_digest(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, x, t = await workspace_with_author(network)

    def forge(records: list[list[Any]]) -> tuple[int, list[Any]]:
        i = len(records) - 1  # X's record bundle (the last X wrote)
        rec = records[i]

        def alter(body: dict[str, Any]) -> None:
            body["p"]["value"] = ["text", "forged"]
        return i, reseal_body(rec, op_index(rec, "SetField"), alter)

    bid = await relay_forgery(network, a, x, forge, m.REJECT_BAD_DIGEST)
    await genuine_arrives(network, a, x, bid)
    assert [r["name"] for r in await a.list_records(t)] == ["genuine 0"]


async def test_s12_op_swapped_under_valid_header_is_bad_digest(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, x, t = await workspace_with_author(network, records=2)

    def forge(records: list[list[Any]]) -> tuple[int, list[Any]]:
        first, second = records[-2], records[-1]  # X's two record bundles, in order
        k = op_index(first, "SetField")
        # a genuine op X signed in another bundle, under the first bundle's valid header
        return len(records) - 2, replace_body(first, k, second[2][op_index(second, "SetField")])

    bid = await relay_forgery(network, a, x, forge, m.REJECT_BAD_DIGEST)
    await genuine_arrives(network, a, x, bid)
    assert sorted(r["name"] for r in await a.list_records(t)) == ["genuine 0", "genuine 1"]


async def test_s13_bundle_of_another_workspace_is_bad_signature(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, x, _ = await workspace_with_author(network)
    w1 = ids.new_id()  # another workspace X also belongs to (one device key for all, §1)
    foreign = seal(x.node.ident, w1, [O.CreateEntity(ids.new_id())],
                   [hlc.pack(x.clock.ms + 1000, 0)])

    def forge(records: list[list[Any]]) -> tuple[int, list[Any]]:
        return len(records) - 1, foreign.record

    genuine = await relay_forgery(network, a, x, forge, m.REJECT_BAD_SIGNATURE)
    await genuine_arrives(network, a, x, genuine)
    assert await rows(a, "SELECT count(*) FROM bundles WHERE bundle_id = ?",
                      (foreign.bundle_id,)) == [(0,)]


async def test_s14_signed_bad_content_is_settled_and_later_bundles_apply(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    raw = RawPeer.joining(svc, "x")
    e = ids.new_id()
    bad = seal(raw.ident, svc.ws, [O.CreateEntity(e), O.SetField(e, FACET, "f", [
        "integer", "not a number"])], [hlc.pack(a.clock.ms, 0), hlc.pack(a.clock.ms, 1)])
    good = seal(raw.ident, svc.ws, [O.CreateEntity(ids.new_id())], [hlc.pack(a.clock.ms, 2)])
    async with raw.link(svc) as link:
        await link.handshake()
        await link.send(link.ops([bad.record], {}))
        ack = await link.recv(m.Ack)
        assert isinstance(ack, m.Ack)
        assert ack.rejected == [[bad.bundle_id, m.REJECT_CONTENT]] and ack.applied == 0
        # settled: the VC passes the bad bundle, so X's next bundle is no gap
        assert ack.vc[raw.actor] == bad.hlc
        await link.send(link.ops([good.record], {raw.actor: bad.hlc}))
        ack2 = await link.recv(m.Ack)
        assert isinstance(ack2, m.Ack)
        assert ack2.rejected == [] and ack2.applied == 1
        assert ack2.vc[raw.actor] == good.hlc
        assert raw.actor in svc.links  # content is no misbehaviour: the link stays
        # the same bad bundle again is settled already: rejected alike, no second row
        await link.send(link.ops([bad.record], {}))
        ack3 = await link.recv(m.Ack)
        assert isinstance(ack3, m.Ack)
        assert ack3.rejected == [[bad.bundle_id, m.REJECT_CONTENT]]
        assert raw.actor in svc.links
    rej = await rejected(a)
    assert [(b, c, s, r) for b, c, s, r in rej] == [(bad.bundle_id, "content", 1, None)]
    assert await rows(a, "SELECT count(*) FROM bundles WHERE bundle_id = ?",
                      (good.bundle_id,)) == [(1,)]
    assert local_vc(a)[raw.actor] == good.hlc
    assert await a.verify()


async def test_s15_foreign_workspace_in_hello_is_4001(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    before = await oplog_state(a)
    events = a.events()
    raw = RawPeer(Identity.generate("stranger"), ids.new_id(), None)
    async with raw.link(svc) as link:
        await link.send(fresh_hello(raw))
        assert await link.closed() == m.CLOSE_WRONG_WORKSPACE
        assert link.close_code == m.CLOSE_WRONG_WORKSPACE
        assert not any(isinstance(msg, m.Auth) for msg in link.received)
    assert svc.links == {}
    assert await oplog_state(a) == before
    a.node.hub.publish({"type": "test_marker"})
    seen = await collect(events, "test_marker", timeout=10)
    assert "sync_peer_connected" not in {ev["type"] for ev in seen}


async def test_s16_same_workspace_other_genesis_is_4001_and_collision(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    assert svc.genesis is not None
    before = await oplog_state(a)
    events = a.events()
    raw = RawPeer(Identity.generate("twin"), svc.ws, bytes(32))
    async with raw.link(svc) as link:
        await link.send(fresh_hello(raw))
        assert await link.closed() == m.CLOSE_WRONG_WORKSPACE
    ev = await events.next("sync_workspace_collision")
    assert ev["peer_id"] == raw.actor.hex()
    assert svc.links == {}
    assert await oplog_state(a) == before


async def test_s17_auth_replayed_from_an_older_session_is_4002(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    raw = RawPeer.joining(svc, "eve")
    async with raw.link(svc) as link:
        await link.handshake()
        assert raw.actor in svc.links
        old_hello, old_auth = link.hello, link.auth
    assert old_hello is not None and old_auth is not None
    with trio.fail_after(10):
        while raw.actor in svc.links:
            await svc.changed.park()
    # a captured session replayed word for word: same hello (same nonce), same auth
    async with raw.link(svc) as link:
        await link.send(old_hello)
        await link.recv(m.Auth)  # the node's auth binds its fresh nonce
        await link.send(old_auth)
        assert await link.closed() == m.CLOSE_BAD_AUTH
    assert raw.actor not in svc.links


async def test_s18_dialing_self_is_4006(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    before = await oplog_state(a)
    s1, s2 = fault_pair()
    codes: dict[str, int] = {}

    async def side(name: str, run: Callable[[trio.abc.Stream], Any],
                   stream: trio.abc.Stream) -> None:
        codes[name] = await run(stream)
        s1.cut()  # one side ended: the other sees the stream end

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(side, "dial", svc.dial_stream, s1)
            n.start_soon(side, "accept", svc.accept_stream, s2)
    assert codes["dial"] == m.CLOSE_SELF and codes["accept"] == m.CLOSE_SELF
    assert svc.links == {} and not svc.pending
    assert await oplog_state(a) == before


async def test_s20_message_over_16_mib_is_1009(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    before = await oplog_state(a)
    raw = RawPeer.joining(svc, "big")
    async with raw.link(svc) as link:
        await link.handshake()
        await link.send_raw(bytes(16 * MIB + 1))
        assert await link.closed() == m.CLOSE_TOO_BIG
        assert link.close_code == m.CLOSE_TOO_BIG
    assert await oplog_state(a) == before

    # exactly 16 MiB passes the WebSocket layer; this one then fails verification (4008)
    b = own_bundles(raw.ident, svc.ws, a.clock.ms, 1)[0]
    pad = 0
    for _ in range(4):  # the length prefix grows with the padding: converge on the size
        rec = [b.header, b.sig, [b.bodies[0] + bytes(pad)]]
        frame = m.encode(m.Ops(seq=1, prev={}, bundles=[rec], live=True))
        pad += 16 * MIB - len(frame)
    rec = [b.header, b.sig, [b.bodies[0] + bytes(pad)]]
    frame = m.encode(m.Ops(seq=1, prev={}, bundles=[rec], live=True))
    assert len(frame) == 16 * MIB
    async with raw.link(svc) as link:
        await link.handshake()
        await link.send_raw(frame)
        ack = await link.recv(m.Ack)
        assert isinstance(ack, m.Ack) and ack.rejected == [[b.bundle_id, m.REJECT_BAD_DIGEST]]
        code = await link.closed()
    assert code != m.CLOSE_TOO_BIG
    assert code == m.CLOSE_INVALID_SIGNED_DATA
    assert [(r[0], r[1]) for r in await rejected(a)] == [(b.bundle_id, m.REJECT_BAD_DIGEST)]


@pytest.mark.parametrize("garbage", ["bad_cbor", "unknown_key", "ops_before_auth"])
async def test_s21_garbage_is_4007_and_stores_nothing(
        network: TestNetwork, autojump_clock: trio.testing.MockClock, garbage: str) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    before = await oplog_state(a)
    raw = RawPeer.joining(svc, "junk")
    bundle = own_bundles(raw.ident, svc.ws, a.clock.ms, 1)[0]
    async with raw.link(svc) as link:
        if garbage == "ops_before_auth":
            await link.send(fresh_hello(raw))
            await link.send(link.ops([bundle.record], {}))
        else:
            await link.handshake()
            if garbage == "bad_cbor":
                await link.send_raw(b"\xa2\x61t\x63ops\xff\x00not cbor")
            else:
                await link.send_map({"t": "ops", "seq": 1, "prev": [],
                                     "bundles": [bundle.record], "more": False,
                                     "done": False, "live": True, "extra": 1})
        assert await link.closed() == m.CLOSE_PROTOCOL
        assert link.close_code == m.CLOSE_PROTOCOL
        assert not any(isinstance(msg, m.Ack) for msg in link.received)
    assert await oplog_state(a) == before
    assert raw.actor not in local_vc(a)


# --- S22–S24: clocks ---------------------------------------------------------------------------

async def test_s22_future_hlc_is_refused_until_the_clock_catches_up(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    b = await network.add_peer("b")
    h = await network.connect(a, b)
    await network.wait_for_sync()
    sa, sb = network.sync_of(a), network.sync_of(b)
    a_hlc = a.node.current.ws.clock.current()
    events = a.events()
    b.clock.advance(10 * MINUTE_MS)
    await b.create_record(t, {"name": "from the future"})
    ev = await events.next("sync_rejected", timeout=30)
    assert ev["code"] == m.REJECT_FUTURE_HLC and ev["direction"] == "in"
    b_actor = bytes.fromhex(b.actor_id)
    assert local_vc(a).get(b_actor) != local_vc(b)[b_actor]  # not stored
    assert a.node.current.ws.clock.current() == a_hlc  # A's HLC unchanged
    assert await rejected(a) == []  # drift is neither stored nor settled
    assert not h.done.is_set() and b_actor in sa.links and bytes.fromhex(a.actor_id) in sb.links
    assert [r["name"] for r in await a.list_records(t)] == []

    a.clock.advance(6 * MINUTE_MS)  # B is now 4 min ahead: within the 5 min allowed
    advanced = trio.current_time()
    await network.wait_for_sync()
    assert trio.current_time() - advanced <= sa.config.anti_entropy_s + 1
    assert not h.done.is_set()  # the same link delivered it
    await network.assert_converged()
    assert [r["name"] for r in await a.list_records(t)] == ["from the future"]


async def test_s23_clock_skew_is_reported_and_ops_still_accepted(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    b = await network.add_peer("b", clock_ms=a.clock.ms + 90_000)
    events = a.events()
    await network.connect(a, b)
    await network.wait_for_sync()
    ev = await events.next("sync_clock_skew", timeout=60)  # from the first idle ping
    assert ev["peer_id"] == b.actor_id
    assert abs(ev["skew_ms"] - 90_000) < 1_000
    await b.create_record(t, {"name": "from a fast clock"})
    await network.wait_for_sync()
    await network.assert_converged()
    assert [r["name"] for r in await a.list_records(t)] == ["from a fast clock"]


async def test_s24_old_bundles_apply_and_are_flagged_stale(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    await a.create_record(t, {"name": "written a week ago"})
    b = await network.add_peer("b", clock_ms=a.clock.ms + 8 * DAY_MS)
    events = b.events()
    await network.connect(a, b)
    await network.wait_for_sync()
    ev = await events.next("stale_ops_arrived")
    assert ev["peer_id"] == a.actor_id and ev["bundles"] >= 1
    await network.assert_converged()
    assert [r["name"] for r in await b.list_records(t)] == ["written a week ago"]
    (stale,), = await rows(b, "SELECT count(*) FROM stale_flags")
    (ops,), = await rows(b, "SELECT count(*) FROM ops")
    assert stale == ops  # every op of A is 8 days old to B
    assert await rows(a, "SELECT count(*) FROM stale_flags") == [(0,)]


# --- S26–S30: slow and silent peers -------------------------------------------------------------

async def test_s26_a_throttled_peer_never_blocks_commits_or_other_peers(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    b = await network.add_peer("b")
    c = await network.add_peer("c")
    hb = await network.connect(a, b)
    await network.connect(a, c)
    await network.wait_for_sync()
    sa = network.sync_of(a)
    hb.dial.bytes_per_s = 10_000  # everything A sends to B crawls at 10 KB/s
    n = 300
    for i in range(n):
        await a.create_record(t, {"name": f"cue {i}"})
    head = a.node.current.writer.appended
    to_b = link_of(sa, b)
    assert len(to_b.lanes.data) <= sa.config.data_lane  # lagging costs bounded memory
    # every commit returned while B was still far behind
    assert b.node.current.writer.appended < head
    await c.node.current.deriver.wait_applied(head)  # C's oplog holds exactly A's ops again
    assert local_vc(c) == local_vc(a)
    assert b.node.current.writer.appended < head  # C done long before B
    assert not hb.done.is_set()
    hb.dial.bytes_per_s = None
    await network.wait_for_sync()
    await network.assert_converged()
    assert len(await b.list_records(t)) == n


async def test_s27_a_stalled_peer_is_closed_as_too_slow(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    b = await network.add_peer("b")
    h = await network.connect(a, b)
    await network.wait_for_sync()
    cfg = network.sync_of(a).config
    h.accept.stall()  # B sends nothing any more: no ack, no pong
    stalled = trio.current_time()
    await a.create_record(t, {"name": "never acked"})  # the commit itself never waits
    with trio.fail_after(cfg.ack_timeout_s + 5):
        await h.done.wait()
    assert h.codes["dial"] == m.CLOSE_TOO_SLOW
    assert trio.current_time() - stalled <= cfg.ack_timeout_s + 3  # close handshake ≤ 2 s


async def test_s27_a_peer_that_talks_but_never_acks_is_closed_after_60_s(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    raw = RawPeer.joining(svc, "lazy")
    first_ops: list[float] = []

    def on_message(msg: m.Message) -> None:
        if isinstance(msg, m.Ops) and not first_ops:
            first_ops.append(trio.current_time())

    async with raw.link(svc) as link, trio.open_nursery() as n:
        await link.handshake(send_clock=False)

        async def keepalive() -> None:  # frames keep coming, acks never do
            for i in range(100):
                await trio.sleep(10)
                await link.send(m.Ping(n=i, wall_ms=a.clock.ms))

        n.start_soon(link.drain, on_message)
        n.start_soon(keepalive)
        # a long healthy idle stretch first: the 60 s count starts at the first unacked send
        await trio.sleep(2 * svc.config.ack_timeout_s)
        assert raw.actor in svc.links and not first_ops
        await link.send(m.ClockMsg(vc={}, full=False))  # A now streams its log to us
        assert await link.closed() == m.CLOSE_TOO_SLOW
        n.cancel_scope.cancel()
    assert first_ops
    waited = link.closed_at - first_ops[0]
    assert svc.config.ack_timeout_s <= waited <= svc.config.ack_timeout_s + 1


async def test_s28_a_flooding_peer_is_paused_not_buffered(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    svc = network.sync_of(a)
    raw = RawPeer.joining(svc, "flood")
    messages, per = 60, 20
    bundles = own_bundles(raw.ident, svc.ws, a.clock.ms, messages * per)
    # verification stands still until the test opens the gate (a node whose cores are busy)
    gate = trio.Event()
    check = svc.check

    async def gated_check(records: list[list[Any]]) -> Any:
        await gate.wait()
        return await check(records)

    svc.check = gated_check  # type: ignore[method-assign]
    sent = 0
    acks: list[m.Ack] = []
    all_acked = trio.Event()

    def on_message(msg: m.Message) -> None:
        if isinstance(msg, m.Ack):
            acks.append(msg)
            if len(acks) == messages:
                all_acked.set()

    async with raw.link(svc, window=64 * 1024) as link, trio.open_nursery() as n:
        assert link.window is not None
        await link.handshake(send_clock=False)

        async def flood() -> None:
            nonlocal sent
            prev: dict[bytes, bytes] = {}
            for i in range(messages):
                chunk = bundles[i * per:(i + 1) * per]
                await link.send(link.ops([b.record for b in chunk], prev))
                prev = {raw.actor: chunk[-1].hlc}
                sent += 1

        n.start_soon(link.drain, on_message)
        n.start_soon(flood)
        with trio.fail_after(10):
            await link.window.wait_blocked()
        # the node reads no further than its one-slot queues: the flood waits on the window
        assert 0 < sent < messages // 2
        assert link.window.in_flight <= link.window.size
        assert link_of_raw(svc, raw).in_applied == 0
        # and the node stays responsive meanwhile
        rec = await a.create_record(t, {"name": "still here"})
        assert (await a.get_record(rec))["id"] == rec
        assert sent < messages // 2
        gate.set()
        with trio.fail_after(60):
            await all_acked.wait()
        n.cancel_scope.cancel()
    assert sent == messages
    assert all(ack.rejected == [] for ack in acks)
    assert sum(ack.applied for ack in acks) == messages * per
    assert local_vc(a)[raw.actor] == bundles[-1].hlc


async def test_s29_a_silent_link_is_closed_at_45_s(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    raw = RawPeer.joining(svc, "mute")
    async with raw.link(svc) as link, trio.open_nursery() as n:
        await link.handshake(send_clock=False)
        last = link.last_sent_at
        assert last is not None
        n.start_soon(link.drain)  # we read everything and say nothing
        assert await link.closed() == m.CLOSE_TOO_SLOW
        n.cancel_scope.cancel()
    silent = link.closed_at - last
    assert svc.config.dead_s <= silent <= svc.config.dead_s + 1
    pings = [msg for msg in link.received if isinstance(msg, m.Ping)]
    assert len(pings) >= 2  # A pinged the idle link (15 s, 30 s) before giving up


@pytest.mark.parametrize("seed", range(20))
def test_s29_redial_backoff_doubles_to_60_s_with_jitter(seed: int) -> None:
    cfg = SyncConfig()
    backoff = Backoff(cfg, random.Random(seed))
    for base in [1, 2, 4, 8, 16, 32, 60, 60, 60]:
        wait = backoff.next(1006, healthy_for=0.0)
        assert base * 0.8 <= wait <= base * 1.2
    # 30 s healthy resets the ladder
    assert 0.8 <= backoff.next(1006, healthy_for=cfg.backoff_healthy_s) <= 1.2
    assert 1.6 <= backoff.next(1006, healthy_for=1.0) <= 2.4
    # misbehaviour (4002/4007/4008/1009): 60 s doubling to 30 min
    for base in [60, 120, 240, 480, 960, 1800, 1800]:
        wait = backoff.next(m.CLOSE_INVALID_SIGNED_DATA, healthy_for=0.0)
        assert base * 0.8 <= wait <= base * 1.2


def test_s29_backoff_jitter_spreads_retries() -> None:
    waits = {round(Backoff(SyncConfig(), random.Random(s)).next(1006, 0.0), 6)
             for s in range(20)}
    assert len(waits) > 10  # not one fixed delay: peers that dropped together spread out


async def test_s30_peer_offering_only_proto_2_is_4003(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    svc = network.sync_of(a)
    before = await oplog_state(a)
    raw = RawPeer.joining(svc, "future", proto_min=2, proto_max=2)
    async with raw.link(svc) as link:
        await link.send(fresh_hello(raw))
        assert await link.closed() == m.CLOSE_NO_COMMON_VERSION
        assert link.close_code == m.CLOSE_NO_COMMON_VERSION
        assert not any(isinstance(msg, m.Auth) for msg in link.received)
    assert svc.links == {}
    assert await oplog_state(a) == before


# --- S31–S32: convergence checks ----------------------------------------------------------------

async def test_s31_tampered_derived_state_is_divergence_never_repaired(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    rec = await a.create_record(t, {"name": "original"})
    b = await network.add_peer("b")
    ev_a, ev_b = a.events(), b.events()
    await network.connect(a, b)
    await network.wait_for_sync()
    await ev_b.next("sync_converged", timeout=30)
    await ev_a.next("sync_converged", timeout=30)

    # write into B's derived tables behind the engine's back
    entity = ids.from_text(rec)
    conn = db.connect(b.node.current.path / OPLOG_FILE)
    try:
        (slot, value), = [(s, bytes(v)) for s, v in conn.execute(
            "SELECT slot, value FROM fields WHERE entity = ? AND value IS NOT NULL", (entity,))
            if codec.decode(bytes(v)) == ["text", "original"]]
        tampered = codec.encode(["text", "tampered"])
        with db.transaction(conn):
            conn.execute("UPDATE fields SET value = ? WHERE entity = ? AND slot = ?",
                         (tampered, entity, slot))
    finally:
        conn.close()
    assert value != tampered

    # the next periodic state exchange (≤ 60 s) finds equal VC and digest, unequal state
    seen_b = await collect(ev_b, "sync_divergence", timeout=200)
    seen_a = await collect(ev_a, "sync_divergence", timeout=200)
    for seen, other in ((seen_b, a), (seen_a, b)):
        div = seen[-1]
        assert div["kind"] == "divergent" and div["peer_id"] == other.actor_id
        assert div["ours"]["oplog_digest"] == div["theirs"]["oplog_digest"]
        assert div["ours"]["state_hash"] != div["theirs"]["state_hash"]
        assert "sync_converged" not in {ev["type"] for ev in seen}
    # never auto-repaired: no clock{full}, the tampered row stays
    sa, sb = network.sync_of(a), network.sync_of(b)
    assert not link_of(sa, b).link.full_requested
    assert not link_of(sb, a).link.full_requested
    assert await rows(b, "SELECT value FROM fields WHERE entity = ? AND slot = ?",
                      (entity, slot)) == [(tampered,)]
    assert await a.oplog_digest() == await b.oplog_digest()
    assert await a.state_hash() != await b.state_hash()


async def test_s32_a_bundle_lost_below_the_vc_is_repaired_by_one_full_clock(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text")])
    for i in range(3):
        await a.create_record(t, {"name": f"cue {i}"})
    b = await network.add_peer("b")
    await network.connect(a, b)
    await network.wait_for_sync()
    await network.assert_converged()
    lost = ids.from_text((await a.bundles())[-2]["bundle_id"])  # below vc[A]: cue 1

    # stop B and delete one stored bundle behind the append-only triggers
    await network.disconnect(a, b)
    session, b.node.session = b.node.session, None
    assert session is not None
    path = session.path / OPLOG_FILE
    await session.stop()
    conn = db.connect(path)
    try:
        with db.transaction(conn):
            hashes = [bytes(h) for (h,) in conn.execute(
                "SELECT op_hash FROM ops WHERE bundle_id = ?", (lost,))]
            assert hashes
            meta = {k: v for k, v in conn.execute("SELECT k, v FROM oplog_meta")}
            dsum = int.from_bytes(meta["digest_sum"], "big")
            for h in hashes:
                dsum = (dsum - int.from_bytes(h, "big")) % MOD
            for trig in ("ops_no_delete", "bundles_no_delete"):
                conn.execute(f"DROP TRIGGER {trig}")
            conn.execute("DELETE FROM ops WHERE bundle_id = ?", (lost,))
            conn.execute("DELETE FROM bundles WHERE bundle_id = ?", (lost,))
            conn.executemany("UPDATE oplog_meta SET v = ? WHERE k = ?", [
                (int(meta["count"]) - len(hashes), "count"),
                (dsum.to_bytes(32, "big"), "digest_sum")])
    finally:
        conn.close()  # reopening the storage recreates the triggers
    await b.restart()
    network.sync_of(b)
    assert await a.vector_clock() == await b.vector_clock()  # the loss is below the VC
    assert await a.oplog_digest() != await b.oplog_digest()

    ev_b = b.events()
    await network.connect(a, b)
    seen = await collect(ev_b, "sync_converged", timeout=300)
    assert "sync_divergence" not in {ev["type"] for ev in seen}
    sb = network.sync_of(b)
    assert link_of(sb, a).link.full_requested  # asked for everything, once
    await network.wait_for_sync()
    await network.assert_converged()
    assert await rows(b, "SELECT count(*) FROM bundles WHERE bundle_id = ?", (lost,)) == [(1,)]
    assert sorted(r["name"] for r in await b.list_records(t)) == ["cue 0", "cue 1", "cue 2"]
    assert await b.verify()
