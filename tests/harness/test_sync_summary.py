"""What a catch-up brought (spec 05 J15: "12 changes from Alex and Jordan · 2 conflicts").

`sync_caught_up` carries `changes` (bundles applied in the catch-up), `authors` (who made them,
most first, with display names) and `conflicts` (open conflicts one of whose values arrived in
it), once the conflict projection has applied the catch-up.
"""

from __future__ import annotations

import trio
import trio.testing

from tests.harness.network import TestNetwork
from tests.harness.test_blobs_sync import _attach, _data, _fetcher
from tests.harness.test_sync_scenarios import shared_task


async def test_caught_up_counts_changes_authors_and_conflicts(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await network.add_peer("alex"), await network.add_peer("jordan")
    t, e = await shared_task(network, a, b)
    a.clock.advance(1000)
    b.clock.advance(2000)
    for i in range(3):
        await a.create_record(t, {"name": f"a{i}"})
    await a.update_record(e, t, {"name": "from-a"})
    await b.update_record(e, t, {"name": "from-b"})  # same field, concurrent: one conflict
    a_events, b_events = a.events(), b.events()
    async with a_events, b_events:
        await network.connect(a, b)
        on_b = await b_events.next("sync_caught_up", timeout=30)
        on_a = await a_events.next("sync_caught_up", timeout=30)
    assert on_b["peer_id"] == a.actor_id
    assert on_b["changes"] == 4
    assert on_b["authors"] == [{"actor_id": a.actor_id, "name": "alex", "changes": 4}]
    assert on_b["conflicts"] == 1
    assert on_a["changes"] == 1
    assert on_a["authors"] == [{"actor_id": b.actor_id, "name": "jordan", "changes": 1}]
    assert on_a["conflicts"] == 1
    await network.wait_for_sync()
    await network.assert_converged()


async def test_caught_up_with_nothing_new(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await network.add_peer("a"), await network.add_peer("b")
    await shared_task(network, a, b)
    events = b.events()
    async with events:
        await network.connect(a, b)
        ev = await events.next("sync_caught_up", timeout=30)
    assert ev["changes"] == 0 and ev["authors"] == [] and ev["conflicts"] == 0


async def test_status_counts_file_downloads_under_way(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    """`/sync/status` `fetching`: the fetches running now (J15 "Fetching files · 1")."""
    a, b = await network.add_peer("a"), await network.add_peer("b")
    await network.connect(a, b)
    h = await _attach(a, _data(3 * 1024 * 1024))
    await network.wait_for_sync()
    assert (await b.get("/sync/status"))["fetching"] == 0
    job = _fetcher(b).fetch(h)
    assert (await b.get("/sync/status"))["fetching"] == 1
    with trio.fail_after(600):
        await job.done.wait()
    assert job.result == "present"
    assert (await b.get("/sync/status"))["fetching"] == 0
