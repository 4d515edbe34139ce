"""Module adoption and mapping decisions over real sync links (spec 04 §4, harness of 03 §9)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from tests.harness.network import TestNetwork
from tests.harness.peer import Peer


async def _tables(p: Peer) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in (await p.get("/tables/list"))["tables"]}


async def _modules(p: Peer) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in (await p.get("/modules/list"))["modules"]}


async def _suggested(p: Peer) -> set[tuple[str, str]]:
    lists = await p.get("/field-mappings/list")
    return {(s["key_a"], s["key_b"]) for s in lists["suggestions"]}


async def test_adoption_on_a_reaches_b(network: TestNetwork,
                                       autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    b = await network.add_peer("b")
    await network.connect(a, b)
    await network.wait_for_sync()
    events = b.events()
    r = await a.post("/modules/adopt", {"id": "crew_calls"})
    assert r["changed"] is True
    await network.wait_for_sync()
    await b.settled()
    async with events:
        ev = await events.next("tables_changed")
    assert isinstance(ev["seq"], int)
    tables = await _tables(b)
    calls = tables["crew_calls.Calls"]
    assert calls["module"] == "crew_calls"
    assert {f["name"]: f["type"] for f in calls["fields"]}["call_time"] == "datetime"
    etypes = {e["type"]: e for e in (await b.get("/edge-types/list"))["edge_types"]}
    assert etypes["crew_calls.for_person"]["props"] == {"role_today": "text"}
    # b sees the adoption without having installed anything: tables usable in the generic UI
    m = (await _modules(b))["crew_calls"]
    assert (m["adopted"], m["installed"]) == ("1.0.0", [])
    rec = await b.post("/records/create", {"table": "crew_calls.Calls",
                                           "values": {"label": "Focus", "day": "2025-03-01"}})
    await network.wait_for_sync()
    assert (await a.get(f"/records/{rec['id']}"))["values"]["label"] == "Focus"
    await network.assert_converged()


async def test_partitioned_adoptions_and_decisions_converge(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    b = await network.add_peer("b")
    await network.connect(a, b)
    await network.wait_for_sync()
    await network.partition([a], [b])
    # both adopt contacts concurrently; each adds another module too
    for p, other in ((a, "crew_calls"), (b, "lighting_cues")):
        assert (await p.post("/modules/adopt", {"id": "contacts"}))["changed"] is True
        assert (await p.post("/modules/adopt", {"id": other}))["changed"] is True
    a.clock.advance(5)
    pair = {"key_a": "contacts.People.email", "key_b": "crew_calls.Crew.email"}
    await a.post("/field-mappings/confirm", pair)
    assert await _suggested(b) == set()  # b has no crew_calls yet: nothing to suggest
    await network.heal()
    await network.wait_for_sync()
    await a.settled()
    await b.settled()
    await network.assert_converged()
    for p in (a, b):
        tables = await _tables(p)
        assert {"contacts.People", "crew_calls.Crew", "crew_calls.Calls", "lighting_cues.Cues",
                "lighting_cues.SMCues"} <= set(tables)
        people = tables["contacts.People"]
        # adopted twice concurrently, defined once: same fields, in manifest order
        assert [f["name"] for f in people["fields"]] == [
            "full_name", "role", "phone", "email", "department", "notes"]
        adopted = {k: v["adopted"] for k, v in (await _modules(p)).items()}
        assert adopted["contacts"] == adopted["crew_calls"] == adopted["lighting_cues"] == "1.0.0"
        lists = await p.get("/field-mappings/list")
        assert [(x["key_a"], x["key_b"]) for x in lists["confirmed"]] == [
            ("contacts.People.email", "crew_calls.Crew.email")]
    assert await _suggested(a) == await _suggested(b)
    assert ("contacts.People.phone", "crew_calls.Crew.phone") in await _suggested(b)
    # b now keeps a suggested pair separate: gone on a too, after sync
    await b.post("/field-mappings/reject", {"key_a": "contacts.People.phone",
                                            "key_b": "crew_calls.Crew.phone"})
    await network.wait_for_sync()
    await a.settled()
    assert ("contacts.People.phone", "crew_calls.Crew.phone") not in await _suggested(a)
    await network.assert_converged()
