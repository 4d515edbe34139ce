"""S36 (spec 03 §9): fork a shared workspace through the API, then try to sync it with the source.

Blobs are not part of this scenario yet ("blobs present"): there is no blob store.
"""

from __future__ import annotations

import trio
import trio.testing

from openprod.sync import messages as m
from tests.harness.network import TestNetwork


async def test_s36_fork_is_a_new_workspace_that_never_syncs_with_its_source(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("Name", "text"), ("Page", "integer")])
    await a.add_field(t, "Notes", crdt=True)
    q1 = await a.create_record(t, {"Name": "q1", "Page": 1, "Notes": "lights up"})
    q2 = await a.create_record(t, {"Name": "q2", "Page": 2})
    q3 = await a.create_record(t, {"Name": "q3", "Page": 3})
    await a.define_edge_type("show.next", ordered=True)
    e1 = await a.create_ordered_edge("show.next", q1, q3)
    e2 = await a.create_ordered_edge("show.next", q2, q3, before=e1)
    b = await network.add_peer("b")
    await network.sync_all()
    a.clock.advance(10)
    b.clock.advance(20)  # concurrent edits of q1's name: an open conflict, B's value shown
    await a.update_record(q1, t, {"Name": "from a"})
    await b.update_record(q1, t, {"Name": "from b"})
    await b.edit_text(q1, t, "Notes", 0, "house ")
    await network.sync_all()
    (conflict,) = await b.list_conflicts()
    source_ws = b.ws_id
    source_rows = await b.list_records(t)
    source_edges = await b.list_edges()
    a_before = (await a.vector_clock(), await a.oplog_digest())

    made = await b.fork("Cues (copy)")

    fork_ws = made["id"]
    assert fork_ws != source_ws and b.ws_id == fork_ws
    current = await b.current()
    assert (current["id"], current["name"]) == (fork_ws, "Cues (copy)")
    # same entity ids and displayed values (the conflict's shown value), same edges and order
    assert await b.list_records(t) == source_rows
    assert [r["Name"] for r in source_rows if r["id"] == q1] == ["from b"]
    assert [r["Notes"] for r in source_rows if r["id"] == q1] == ["house lights up"]
    assert await b.list_edges() == source_edges
    assert [e["id"] for e in await b.list_edges(q3, type="show.next", direction="in")] == [e2, e1]
    assert await b.list_conflicts() == []
    (item,) = made["report"]["open_conflicts"]
    assert (item["conflict_id"], item["copied_value"]) == (conflict["conflict_id"], "from b")
    assert made["report"]["records"] == 3 and made["report"]["edges"] == 2
    # no history: one author (the forker), the genesis and import bundles only
    bundles = await b.bundles()
    assert {x["actor"] for x in bundles} == {b.actor_id}
    assert [x["kind"] for x in bundles] == ["user"] + ["import"] * (len(bundles) - 1)
    genesis = bundles[0]["ops"][0]
    assert genesis["t"] == "CreateWorkspace" and genesis["forked_from"]["ws"] == source_ws
    assert list(await b.vector_clock()) == [b.actor_id]
    # the forker owns it
    owner = await b.node.current.writer.call(lambda ws: ws.lifecycle().owner)
    assert owner is not None and owner.hex() == b.actor_id
    assert await b.verify()

    # the source (a) and the fork (b) refuse each other: 4001, nothing exchanged
    link = await network.connect(a, b)
    with trio.fail_after(60):
        await link.done.wait()
    assert link.codes == {"dial": m.CLOSE_WRONG_WORKSPACE, "accept": m.CLOSE_WRONG_WORKSPACE}
    assert (await a.vector_clock(), await a.oplog_digest()) == a_before
    assert await b.bundles() == bundles
