"""Workspace lifecycle over real links (spec 03 §9 S33–S35): access-key joins, non-members,
ownership recovery, all derived alike on every peer."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from openprod.core.errors import ValidationError
from openprod.engine import lifecycle as lcmod
from openprod.sync import messages as m
from tests.harness.network import LinkHandle, TestNetwork
from tests.harness.peer import Peer


async def _refused(network: TestNetwork, a: Peer, b: Peer) -> LinkHandle:
    h = await network.connect(a, b)
    with trio.fail_after(60):
        await h.done.wait()
    await network.disconnect(a, b)
    return h


async def _key_mode(network: TestNetwork) -> tuple[Peer, Peer]:
    a = await network.add_peer("a")
    t = await a.create_table("Crew", [("name", "text")])
    await a.create_record(t, {"name": "Alex"})
    await a.post("/workspace/join-mode", {"mode": "key"})
    b = await network.add_peer("b")
    return a, b


async def _lifecycle(p: Peer) -> lcmod.Lifecycle:
    return await p.node.current.writer.call(lambda ws: ws.lifecycle())


async def test_s33_access_key_joins(network: TestNetwork,
                                    autojump_clock: trio.testing.MockClock) -> None:
    a, b = await _key_mode(network)
    head = await a.vector_clock()
    # no proof at all
    h = await _refused(network, a, b)
    assert m.CLOSE_JOIN_REFUSED in h.codes.values()
    assert await b.bundles() == [] and await a.vector_clock() == head
    key = await a.post("/access-keys/create", {"expires_in_s": 3600, "max_uses": 5})
    # five wrong codes lock the address out, even for the right code
    svc_b = network.sync_of(b)
    for wrong in ["AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD", "EEEEEE"]:
        svc_b.access_code = wrong
        h = await _refused(network, a, b)
        assert m.CLOSE_JOIN_REFUSED in h.codes.values()
    svc_b.access_code = key["code"].lower()  # codes are case-insensitive
    h = await _refused(network, a, b)
    assert m.CLOSE_JOIN_REFUSED in h.codes.values()
    assert await b.bundles() == []
    await trio.sleep(61)  # the first lockout lasts 60 s
    await network.connect(a, b)
    await network.wait_for_sync()
    await network.assert_converged()
    lc = await _lifecycle(a)
    assert lc.admitted == {bytes.fromhex(b.actor_id): key["key_id"]}
    assert lc.uses[key["key_id"]] == 1
    assert [r["name"] for r in await b.list_records("Crew")] == ["Alex"]


async def test_s33_expired_and_revoked_keys_refused(network: TestNetwork,
                                                    autojump_clock: trio.testing.MockClock,
                                                    ) -> None:
    a, b = await _key_mode(network)
    soon = await a.post("/access-keys/create", {"expires_in_s": 10})
    a.clock.advance(11_000)  # expiry is checked on the acceptor's clock
    network.sync_of(b).access_code = soon["code"]
    h = await _refused(network, a, b)
    assert m.CLOSE_JOIN_REFUSED in h.codes.values()
    gone = await a.post("/access-keys/create", {})
    await a.post("/access-keys/revoke", {"key_id": gone["key_id"]})
    network.sync_of(b).access_code = gone["code"]
    h = await _refused(network, a, b)
    assert m.CLOSE_JOIN_REFUSED in h.codes.values()
    assert await b.bundles() == []


async def test_s33_another_member_accepts_after_the_admit(network: TestNetwork,
                                                          autojump_clock: trio.testing.MockClock,
                                                          ) -> None:
    a = await network.add_peer("a")
    c = await network.add_peer("c")
    await network.connect(a, c)  # c joins while the workspace is open: a member
    t = await c.create_table("Cues", [("name", "text")])
    await c.create_record(t, {"name": "Q1"})
    await network.wait_for_sync()
    await a.post("/workspace/join-mode", {"mode": "key"})
    key = await a.post("/access-keys/create", {})
    await network.wait_for_sync()
    b = await network.add_peer("b")
    network.sync_of(b).access_code = key["code"]
    await network.connect(a, b)  # a admits b
    await network.wait_for_sync()
    await network.disconnect(a, b)
    await network.disconnect(a, c)
    await network.connect(a, c)  # c learns the admit
    await network.wait_for_sync()
    await network.disconnect(a, c)
    network.sync_of(b).access_code = None
    await network.connect(b, c)  # no proof needed now: b is admitted
    q1 = await b.create_record(t, {"name": "Q2"})
    await network.wait_for_sync()
    assert {r["name"] for r in await c.list_records("Cues")} == {"Q1", "Q2"}
    assert (await c.get_record(q1))["id"] == q1
    lc_c = await _lifecycle(c)
    assert bytes.fromhex(b.actor_id) in lc_c.admitted


async def test_s34_non_member_exchanges_nothing(network: TestNetwork,
                                                autojump_clock: trio.testing.MockClock) -> None:
    a, n = await _key_mode(network)
    before = (await a.vector_clock(), await a.oplog_digest())
    for x, y in ((a, n), (n, a)):  # whoever dials
        h = await _refused(network, x, y)
        assert m.CLOSE_JOIN_REFUSED in h.codes.values()
    assert (await a.vector_clock(), await a.oplog_digest()) == before
    assert await n.bundles() == []


def _secret(p: Peer) -> str:
    path = p.node.home.path / "secrets" / f"{p.ws_id}.recovery"
    return lcmod.b32(bytes.fromhex(path.read_text().strip()))


async def test_s35_recovery_reuse_and_concurrent_recoveries(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    b = await network.add_peer("b")
    c = await network.add_peer("c")
    await network.connect(a, b)
    await network.connect(b, c)
    await network.wait_for_sync()
    s0 = _secret(a)  # handed to B and C out of band
    # concurrent recoveries in two partitions, both signed with the same (current) key
    await network.partition([a, b], [c])
    rb = await b.post("/workspace/recover", {"secret": s0})
    c.clock.advance(5)
    rc = await c.post("/workspace/recover", {"secret": s0})
    assert rb["recovery_secret"] != rc["recovery_secret"]
    await network.heal()
    await network.wait_for_sync()
    await network.assert_converged()
    owners = {(lc.owner, lc.recovery_pub, len(lc.recoveries))
              for lc in [await _lifecycle(p) for p in (a, b, c)]}
    assert len(owners) == 1  # every peer derives the same owner
    owner, pub, n = owners.pop()
    assert n == 1  # the later recovery, signed with a key no longer current, is inert
    winner = b if owner == bytes.fromhex(b.actor_id) else c
    won = rb if winner is b else rc
    assert pub == lcmod.recovery_identity(lcmod.unb32(won["recovery_secret"], 32)).actor
    # the old secret is stale now: refused before anything is written
    with_old = await a.node.current.writer.call(lambda ws: ws.lifecycle())
    assert with_old.owner == owner
    with pytest.raises(ValidationError):  # the typed 400 the route answers
        await a.post("/workspace/recover", {"secret": s0})
    # the winner's new secret works for anyone holding it
    await a.post("/workspace/recover", {"secret": won["recovery_secret"]})
    await network.wait_for_sync()
    for p in (a, b, c):
        assert (await _lifecycle(p)).owner == bytes.fromhex(a.actor_id)
