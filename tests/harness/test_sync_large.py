"""Large bundles split over several `ops` messages (spec 03 §5 Large bundles, S10)."""

from __future__ import annotations

import trio
import trio.testing

from tests.harness.network import TestNetwork
from tests.harness.peer import Peer


async def _big_bundle(network: TestNetwork) -> tuple[Peer, Peer]:
    a = await network.add_peer("a")
    t = await a.create_table("Notes", [("name", "text"), ("body", "text")])
    ids = [await a.create_record(t, {"name": f"n{i}"}) for i in range(60)]
    # one bundle of 60 ops x ~20 KB: far over the (lowered) 256 KiB "send alone" threshold
    await a.post("/records/update", {"updates": [
        {"id": e, "table": t, "values": {"body": chr(65 + i % 26) * 20_000}}
        for i, e in enumerate(ids)]})
    b = await network.add_peer("b")
    for p in (a, b):
        cfg = network.sync_of(p).config
        cfg.alone_bytes = 256 * 1024
        cfg.part_bytes = 64 * 1024
    return a, b


async def test_s10_large_bundle_arrives_whole(network: TestNetwork,
                                              autojump_clock: trio.testing.MockClock) -> None:
    a, b = await _big_bundle(network)
    await network.connect(a, b)
    await network.wait_for_sync()
    await network.assert_converged()
    rows = await b.list_records("Notes")
    assert sorted(len(r["body"]) for r in rows) == [20_000] * 60


async def test_s10_cut_mid_parts_then_reconnect(network: TestNetwork,
                                                autojump_clock: trio.testing.MockClock) -> None:
    a, b = await _big_bundle(network)
    h = await network.connect(a, b)
    # cut after ~600 KB have gone a→b: inside the split bundle's parts
    h.dial.cut_after = h.dial.sent + 600_000
    with trio.fail_after(120):
        await h.done.wait()
    await network.disconnect(a, b)
    a_bundles = await a.bundles()
    b_bundles = await b.bundles()
    big = max(a_bundles, key=lambda x: len(x["ops"]))
    held = {x["bundle_id"] for x in b_bundles}
    assert len(b_bundles) == len(a_bundles) - 1  # the cut fell inside the big bundle's parts
    assert big["bundle_id"] not in held  # never partially applied
    for x in b_bundles:  # every bundle B holds is whole
        assert len(x["ops"]) == len(next(y for y in a_bundles
                                         if y["bundle_id"] == x["bundle_id"])["ops"])
    await network.connect(a, b)
    await network.wait_for_sync()
    await network.assert_converged()
