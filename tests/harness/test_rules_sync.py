"""Rules over real sync links (spec 04 §6, scenarios §8.15-16, harness of 03 §9): cycles that
only exist once partitioned peers meet are suspended everywhere; rule ops travel inside their
author's bundle and are never generated again by the receiver; proposals stay local.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from openprod.engine.rules import CycleDetected
from tests.harness.network import TestNetwork
from tests.harness.peer import Peer

ACTIVE = {"field": "active", "op": "eq", "value": True}
CREW_TO_PEOPLE = {"label": "Active crew in People", "source": "crew_calls.Crew",
                  "target": "contacts.People", "when": ACTIVE, "auto_accept": True,
                  "set": [{"field": "full_name", "copy_from": "name"}], "enabled": True}
# each acyclic alone; together People.role -> Crew.active -> People membership/role -> ...
PEOPLE_TO_CREW = {"label": "Riggers are active crew", "source": "contacts.People",
                  "target": "crew_calls.Crew",
                  "when": {"field": "role", "op": "eq", "value": "rigger"},
                  "set": [{"field": "name", "copy_from": "full_name"},
                          {"field": "active", "value": True, "mode": "always"}],
                  "auto_accept": True, "enabled": True}
CREW_SETS_ROLE = {**CREW_TO_PEOPLE, "set": [{"field": "full_name", "copy_from": "name"},
                                            {"field": "role", "value": "rigger"}]}


async def _two_peers(network: TestNetwork) -> tuple[Peer, Peer]:
    a = await network.add_peer("a")
    b = await network.add_peer("b")
    await network.connect(a, b)
    for mid in ("contacts", "crew_calls"):
        assert (await a.post("/modules/adopt", {"id": mid}))["changed"] is True
    await network.wait_for_sync()
    await b.settled()
    return a, b


async def _statuses(p: Peer) -> dict[str, str]:
    return {r["id"]: r["status"] for r in await p.list_rules() if r["status"] != "offered"}


async def _bundle(p: Peer, bundle_id: str) -> dict[str, Any]:
    [b] = [x for x in await p.bundles() if x["bundle_id"] == bundle_id]
    return b


def _types(b: dict[str, Any]) -> list[str]:
    return [o["t"] for o in b["ops"]]


async def _authored(p: Peer, who: Peer) -> list[str]:
    return [b["bundle_id"] for b in await p.bundles() if b["actor"] == who.actor_id]


async def test_cycle_from_partitioned_puts_is_suspended_everywhere(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await _two_peers(network)
    # put together on one peer, the pair is refused
    ra = (await a.put_rule(CREW_SETS_ROLE))["id"]
    with pytest.raises(CycleDetected) as ei:
        await a.put_rule(PEOPLE_TO_CREW)
    assert ei.value.status == 409  # type: ignore[attr-defined]
    await a.delete_rule(ra)
    await network.wait_for_sync()
    await network.partition([a], [b])
    ra = (await a.put_rule(CREW_SETS_ROLE))["id"]
    rb = (await b.put_rule(PEOPLE_TO_CREW))["id"]
    assert await _statuses(a) == {ra: "active"}
    assert await _statuses(b) == {rb: "active"}
    events = {p.name: p.events() for p in (a, b)}
    await network.heal()
    await network.wait_for_sync()
    for p in (a, b):
        await p.settled()
        assert await _statuses(p) == {ra: "suspended", rb: "suspended"}
        async with events[p.name] as ev_stream:
            ev = await ev_stream.next("automation_suspended")
        assert sorted(ev["rules"]) == sorted([ra, rb])
        assert ev["cycles"] and set(ev["cycles"][0].split(" -> ")) == {ra, rb}
    # a triggering edit fires nothing: no rule op, no proposal, on either side
    crew = await a.create_record("crew_calls.Crew", {"name": "Ann", "active": True})
    person = await b.create_record("contacts.People", {"full_name": "Bo", "role": "rigger"})
    await network.wait_for_sync()
    for p in (a, b):
        await p.settled()
        assert (await p.get_record(crew))["tables"] == ["crew_calls.Crew"]
        assert (await p.get_record(person))["tables"] == ["contacts.People"]
        assert await p.proposals() == []
    await network.assert_converged()
    # deleting one side of the cycle lets the other run again, on both peers
    await b.delete_rule(rb)
    await network.wait_for_sync()
    for p in (a, b):
        await p.settled()
        assert await _statuses(p) == {ra: "active"}


async def test_rule_ops_travel_in_the_authors_bundle(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await _two_peers(network)
    rid = (await a.put_rule(CREW_TO_PEOPLE))["id"]
    lx = await a.create_table("LX crew", [])
    pid = (await a.put_rule(label="LX crew", source="crew_calls.Crew", target=lx,
                            when={"field": "role", "op": "eq", "value": "LX"},
                            enabled=True))["id"]
    e = await a.create_record("crew_calls.Crew", {"name": "Ann", "active": False})
    await network.wait_for_sync()
    await b.settled()
    assert await _statuses(b) == {rid: "active", pid: "active"}  # the rule is enabled on b too
    mine = await _authored(b, b)
    r = await a.update_record(e, "crew_calls.Crew", {"active": True, "role": "LX"})
    ops = (await _bundle(a, r["bundle_id"]))["ops"]
    assert [o["t"] for o in ops] == ["SetField", "SetField", "AttachFacet", "SetField"]
    assert ops[2]["facet"] == "contacts.People" and ops[3]["value"] == ["text", "Ann"]
    [prop] = await a.proposals()
    assert (prop["rule_id"], prop["action"], prop["target"]) == (pid, "attach", lx)
    await network.wait_for_sync()
    await b.settled()
    await network.assert_converged()  # same state hash
    assert await _authored(b, b) == mine  # b generated nothing of its own
    assert sorted((await b.get_record(e))["tables"]) == ["contacts.People", "crew_calls.Crew"]
    assert await b.proposals() == []  # proposals are local
    # accepting on a: one bundle, which reaches b as is
    before = {x["bundle_id"] for x in await b.bundles()}
    acc = await a.accept_proposal(prop["id"])
    await network.wait_for_sync()
    await b.settled()
    new = [x for x in await b.bundles() if x["bundle_id"] not in before]
    assert [x["bundle_id"] for x in new] == [acc["bundle_id"]]
    assert new[0]["actor"] == a.actor_id and _types(new[0]) == ["AttachFacet"]
    assert lx in (await b.get_record(e))["tables"]
    assert await a.proposals() == [] and await b.proposals() == []
    assert await _authored(b, b) == mine
    await network.assert_converged()


async def test_proposal_events_and_dismiss_over_http(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await _two_peers(network)
    # the module's own rule, offered switched off, is enabled by id alone
    offered = {r["id"]: r for r in await a.list_rules()}
    rid = "crew_calls.crew_are_contacts"
    assert offered[rid]["status"] == "offered" and offered[rid]["enabled"] is False
    r = await a.put_rule(id=rid, enabled=True)
    assert r["id"] == rid
    events = a.events()
    e = await a.create_record("crew_calls.Crew", {"name": "Cy", "role": "SM", "active": True})
    async with events:
        ev = await events.next("rule_proposals_changed")
    assert isinstance(ev["seq"], int)
    [prop] = await a.proposals()
    assert (prop["rule_id"], prop["entity_id"], prop["title"]) == (rid, e, "Cy")
    await a.dismiss_proposal(prop["id"])
    assert await a.proposals() == []
    await a.update_record(e, "crew_calls.Crew", {"active": False})
    await a.update_record(e, "crew_calls.Crew", {"active": True})
    [again] = await a.proposals()
    assert again["id"] != prop["id"]
    # b, where the record is already in People by then, answers its own stale proposal 409
    await network.wait_for_sync()
    await b.settled()
    assert await b.proposals() == []
    await b.add_to_table(e, "contacts.People")
    await network.wait_for_sync()
    await a.settled()
    assert await a.proposals() == []
    with pytest.raises(Exception) as ei:
        await a.accept_proposal(again["id"])
    assert ei.value.code == "proposal_stale"  # type: ignore[attr-defined]
    assert ei.value.status == 409  # type: ignore[attr-defined]
    # applying to existing and deleting through the routes
    f = await b.create_record("crew_calls.Crew", {"name": "Di", "active": True})
    await network.wait_for_sync()
    await a.settled()
    applied = await a.apply_rule(rid)
    assert applied["changed"] is True
    vals = (await a.get_record(f))["values"]
    assert vals["full_name"] == "Di"
    assert (await a.apply_rule(rid))["changed"] is False
    await a.delete_rule(rid)
    assert (await _statuses(a)) == {}
    await network.wait_for_sync()
    await network.assert_converged()


async def test_cycle_closed_by_a_synced_mapping_is_suspended(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a, b = await _two_peers(network)
    await network.partition([a], [b])
    # r1 writes People.notes; r2 reads Calls.notes: apart until the two are mapped
    r1 = (await a.put_rule(label="r1", source="crew_calls.Crew", target="contacts.People",
                           when=ACTIVE, set=[{"field": "notes", "value": "crew"}],
                           auto_accept=True, enabled=True))["id"]
    r2 = (await a.put_rule(label="r2", source="crew_calls.Calls", target="crew_calls.Crew",
                           when={"field": "notes", "op": "eq", "value": "crew"},
                           set=[{"field": "active", "value": True}],
                           auto_accept=True, enabled=True))["id"]
    pair = {"key_a": "contacts.People.notes", "key_b": "crew_calls.Calls.notes"}
    with pytest.raises(CycleDetected) as ei:  # refused where the rules are known
        await a.post("/field-mappings/confirm", pair)
    assert set(ei.value.details["path"].split(" -> ")) == {r1, r2}
    await b.post("/field-mappings/confirm", pair)  # b does not know them yet
    events = {p.name: p.events() for p in (a, b)}
    await network.heal()
    await network.wait_for_sync()
    for p in (a, b):
        await p.settled()
        assert await _statuses(p) == {r1: "suspended", r2: "suspended"}
        async with events[p.name] as stream:
            ev = await stream.next("automation_suspended")
        assert sorted(ev["rules"]) == sorted([r1, r2])
    crew = await a.create_record("crew_calls.Crew", {"name": "Ann", "active": True})
    assert (await a.get_record(crew))["tables"] == ["crew_calls.Crew"]
    await network.wait_for_sync()
    await network.assert_converged()
