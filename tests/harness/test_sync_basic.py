"""Basic sync over real links in the simulation harness (spec 03 §9 S1–S4)."""

from __future__ import annotations

import trio
import trio.testing

from tests.harness.network import TestNetwork


async def test_s1_join_and_catch_up(network: TestNetwork,
                                    autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("name", "text"), ("page", "integer")])
    for i in range(100):
        await a.create_record(t, {"name": f"cue {i}", "page": i})
    b = await network.add_peer("b")
    events = b.events()
    await network.connect(a, b)
    await network.wait_for_sync()
    await network.assert_converged()
    bundles = await b.bundles()
    assert bundles[0]["ops"][0]["t"] == "CreateWorkspace"
    rows = await b.list_records("Cues")
    assert len(rows) == 100
    seen = set()
    async with events:
        while not {"workspace_joined", "sync_caught_up"} <= seen:
            seen.add((await events.next())["type"])
