"""Rule and proposal routes (spec 05 §5 "Rules", spec 04 §6, J4) in-process."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from openprod.core import ids
from tests.api.conftest import Api, error_of, ws_json

CREW_RULE = "crew_calls.crew_are_contacts"


# --- helpers ------------------------------------------------------------------------------------

async def _tables(api: Api) -> tuple[str, str]:
    """Two workspace tables: Cues (the source) and SMCues (the target)."""
    cues = await api.ok("POST", "/tables/create", {"label": "Cues", "fields": [
        {"label": "Name"}, {"label": "Called", "type": "boolean"},
        {"label": "Page", "type": "integer"}]})
    sm = await api.ok("POST", "/tables/create", {"label": "SMCues", "fields": [
        {"label": "Name"}, {"label": "Page", "type": "integer"}, {"label": "Note"}]})
    return str(cues["table"]), str(sm["table"])


def _doc(**over: Any) -> dict[str, Any]:
    """A valid workspace rule: called cues go to the stage manager's list."""
    return {"label": "Called cues to SM", "source": "Cues", "target": "SMCues",
            "when": {"field": "Called", "op": "eq", "value": True},
            "set": [{"field": "Name", "copy_from": "Name"},
                    {"field": "Note", "value": "from LX", "mode": "always"}],
            **over}


async def _rules(api: Api) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in (await api.ok("GET", "/rules/list"))["rules"]}


async def _proposals(api: Api) -> list[dict[str, Any]]:
    data = await api.ok("GET", "/rules/proposals")
    assert isinstance(data["seq"], int)
    return list(data["proposals"])


async def _rec(api: Api, rec_id: str) -> dict[str, Any]:
    return dict(await api.ok("GET", f"/records/{rec_id}"))


async def _row(api: Api, table: str, rec_id: str) -> dict[str, Any]:
    """A record's values in one table, keyed by field label."""
    fields = {f["name"]: f["label"] for t in (await api.ok("GET", "/tables/list"))["tables"]
              if t["id"] == table for f in t["fields"]}
    (row,) = [r for r in (await api.ok("GET", f"/records/list?table={table}"))["records"]
              if r["id"] == rec_id]
    return {fields[k]: v for k, v in row["values"].items()}


async def _adopt(api: Api, *mids: str) -> None:
    for mid in mids:
        await api.ok("POST", "/modules/adopt", {"id": mid})


async def _crew(api: Api, name: str, role: str = "LX", active: bool = True) -> str:
    return await api.record("crew_calls.Crew", name=name, role=role, active=active)


async def _crew_rule_on(api: Api) -> None:
    await _adopt(api, "contacts", "crew_calls")
    await api.ok("POST", "/rules/put", {"id": CREW_RULE, "enabled": True})


async def _until(conn: Any, kind: str, seq: int = 0) -> dict[str, Any]:
    """The next event of that type about `seq` or later (each read is bounded by ws_json)."""
    while True:
        ev = await ws_json(conn)
        if ev["type"] == kind and ev["seq"] >= seq:
            return ev


# --- bodies for tests/api/test_api.py's route-by-route checks ---------------------------------

async def _b_put(api: Api) -> dict[str, Any]:
    await _tables(api)
    return _doc(enabled=True)


async def _b_delete(api: Api) -> dict[str, Any]:
    await _tables(api)
    return {"id": (await api.ok("POST", "/rules/put", _doc()))["id"]}


async def _b_apply(api: Api) -> dict[str, Any]:
    cues, _ = await _tables(api)
    await api.record(cues, Name="Q1", Called=True)  # a match from before the rule
    return {"id": (await api.ok("POST", "/rules/put", _doc(enabled=True)))["id"]}


async def _b_proposal(api: Api) -> dict[str, Any]:
    cues, _ = await _tables(api)
    await api.ok("POST", "/rules/put", _doc(enabled=True))
    await api.record(cues, Name="Q1", Called=True)
    (p,) = await _proposals(api)
    return {"id": p["id"]}


BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/rules/put": _b_put, "/rules/delete": _b_delete, "/rules/apply": _b_apply,
    "/rules/proposals/accept": _b_proposal, "/rules/proposals/dismiss": _b_proposal}
NO_WRITE = frozenset(["/rules/proposals/dismiss"])  # proposals are local: no ops


# --- workspace rules: put, list, delete ----------------------------------------------------------

async def test_put_list_update_delete_a_workspace_rule(api: Api) -> None:
    cues, sm = await _tables(api)
    head = await api.head()
    r = await api.ok("POST", "/rules/put", _doc())
    rid = r["id"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    assert r["seq"] == head + 1 and ids.from_text(r["bundle_id"])
    rule = (await _rules(api))[rid]
    assert (rule["status"], rule["enabled"], rule["reason"]) == ("disabled", False, None)
    assert (rule["source"], rule["target"], rule["label"]) == (cues, sm, "Called cues to SM")
    assert (rule["auto_accept"], rule["on_condition_lost"]) == (False, "propose_detach")
    assert [s["mode"] for s in rule["set"]] == ["fill_if_empty", "always"]
    assert [set(s) for s in rule["set"]] == [{"field", "copy_from", "mode"},
                                             {"field", "value", "mode"}]

    # keys left out keep their value
    await api.ok("POST", "/rules/put", {"id": rid, "enabled": True})
    rule = (await _rules(api))[rid]
    tables = {t["id"]: t for t in (await api.ok("GET", "/tables/list"))["tables"]}
    called = next(f["name"] for f in tables[cues]["fields"] if f["label"] == "Called")
    # stored by field name, not the label the request used (labels may be renamed)
    assert (rule["status"], rule["label"], rule["when"]) == (
        "active", "Called cues to SM", {"field": called, "op": "eq", "value": True})
    await api.ok("POST", "/rules/put", {"id": rid, "label": "Renamed", "when": None})
    rule = (await _rules(api))[rid]
    assert (rule["status"], rule["label"], rule["when"]) == ("active", "Renamed", None)

    # a caller may choose the id of a new workspace rule
    mine = "0" * 31 + "1"
    assert (await api.ok("POST", "/rules/put", {"id": mine, **_doc()}))["id"] == mine

    d = await api.ok("POST", "/rules/delete", {"id": rid})
    assert d["id"] == rid and d["seq"] > r["seq"]
    assert set(await _rules(api)) == {mine}
    for route in ("/rules/delete", "/rules/apply"):
        err = await error_of(await api.post(route, {"id": rid}), 404, "rule_not_found")
        assert err["details"]["rule_id"] == rid
    assert (await api.ok("GET", "/rules/list"))["seq"] == await api.head()


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown key", _doc(colour="red"), "colour"),
    ("unknown table", _doc(source="Nope"), "source"),
    ("unknown target", _doc(target="Nope"), "target"),
    ("same table", _doc(target="Cues"), "target"),
    ("unknown field in when", _doc(when={"field": "Nope", "op": "eq", "value": 1}), "when"),
    ("lt on boolean", _doc(when={"field": "Called", "op": "lt", "value": True}), "when"),
    ("null literal", _doc(when={"field": "Name", "op": "eq", "value": None}), "when"),
    ("null set value", _doc(set=[{"field": "Note", "value": None}]), "set[0]"),
    ("bad set field", _doc(set=[{"field": "Nope", "value": "x"}]), "set[0].field"),
    ("set value of the wrong type", _doc(set=[{"field": "Page", "value": "twelve"}]),
     "set[0].value"),
    ("copy_from type mismatch", _doc(set=[{"field": "Name", "copy_from": "Page"}]),
     "set[0].copy_from"),
    ("copy_from unknown", _doc(set=[{"field": "Name", "copy_from": "Nope"}]),
     "set[0].copy_from"),
    ("bad mode", _doc(set=[{"field": "Name", "copy_from": "Name", "mode": "sometimes"}]),
     "set[0].mode"),
    ("bad on_condition_lost", _doc(on_condition_lost="panic"), "on_condition_lost"),
    ("bad action", _doc(action="delete"), "action"),
    ("bad id", _doc(id="Not An Id"), "id"),
    ("workspace rule id with a dot", _doc(id="0123456789abcdef"), "id"),
]


@pytest.mark.parametrize(("doc", "path"), [(d, p) for _, d, p in INVALID],
                         ids=[n for n, _, _ in INVALID])
async def test_invalid_rule_names_the_path_and_writes_nothing(api: Api, doc: dict[str, Any],
                                                             path: str) -> None:
    await _tables(api)
    head = await api.head()
    err = await error_of(await api.post("/rules/put", doc), 400, "invalid_rule")
    assert err["details"]["path"] == path, err
    assert await api.head() == head
    assert await _rules(api) == {}


async def test_malformed_put_bodies_are_400_invalid(api: Api) -> None:
    await _tables(api)
    head = await api.head()
    for key, bad in [("id", 7), ("label", 7), ("source", ["Cues"]), ("target", {}),
                     ("when", "Called"), ("set", {"field": "Name"}), ("auto_accept", "yes"),
                     ("on_condition_lost", 1), ("enabled", 1), ("apply_existing", "no")]:
        err = await error_of(await api.post("/rules/put", _doc(**{key: bad})), 400, "invalid")
        assert err["details"]["field"] == key, (key, err)
    for route in ("/rules/delete", "/rules/apply", "/rules/proposals/accept",
                  "/rules/proposals/dismiss"):
        await error_of(await api.post(route, {"id": ["x"]}), 400, "invalid")
        await error_of(await api.post(route, {}), 400, "invalid")
    for route in ("/rules/proposals/accept", "/rules/proposals/dismiss"):
        err = await error_of(await api.post(route, {"id": "not-a-uuid"}), 400, "invalid")
        assert err["message"]
    assert await api.head() == head


# --- module rules ------------------------------------------------------------------------------

async def test_module_rule_is_offered_dormant_then_active(api: Api) -> None:
    assert await _rules(api) == {}
    await _adopt(api, "crew_calls")
    offered = (await _rules(api))[CREW_RULE]
    assert (offered["status"], offered["enabled"]) == ("offered", False)
    assert (offered["source"], offered["target"]) == ("crew_calls.Crew", "contacts.People")
    assert offered["label"] == "Active crew appear in Contacts"
    # enabling it before contacts is adopted stores it; it waits for the table
    await api.ok("POST", "/rules/put", {"id": CREW_RULE, "enabled": True})
    rule = (await _rules(api))[CREW_RULE]
    assert (rule["status"], rule["enabled"]) == ("dormant", True)
    assert "contacts.People" in rule["reason"]
    await _adopt(api, "contacts")
    rule = (await _rules(api))[CREW_RULE]
    assert (rule["status"], rule["reason"]) == ("active", None)
    assert rule["set"] == [
        {"field": "full_name", "copy_from": "name", "mode": "fill_if_empty"},
        {"field": "role", "copy_from": "role", "mode": "fill_if_empty"}]
    # switched off again, it stays a stored document (no longer "offered")
    await api.ok("POST", "/rules/put", {"id": CREW_RULE, "enabled": False})
    assert (await _rules(api))[CREW_RULE]["status"] == "disabled"
    # deleting the document offers it again
    await api.ok("POST", "/rules/delete", {"id": CREW_RULE})
    assert (await _rules(api))[CREW_RULE]["status"] == "offered"


async def test_crew_rule_proposes_accept_adds_to_people(api: Api) -> None:
    await _crew_rule_on(api)
    made = await api.ok("POST", "/records/create", {"table": "crew_calls.Crew", "values": {
        "name": "Jane Doe", "role": "Head of LX", "active": True}})
    jane = made["id"]
    assert await api.head() == made["seq"]  # a proposal writes nothing
    assert (await _rec(api, jane))["tables"] == ["crew_calls.Crew"]
    (p,) = await _proposals(api)
    assert (p["rule_id"], p["entity_id"], p["action"], p["context"], p["status"]) == (
        CREW_RULE, jane, "attach", "canonical", "open")
    assert (p["title"], p["rule_label"]) == ("Jane Doe", "Active crew appear in Contacts")
    assert (p["source"], p["target"], p["target_label"]) == (
        "crew_calls.Crew", "contacts.People", "People")
    assert isinstance(p["created_at"], int)

    r = await api.ok("POST", "/rules/proposals/accept", {"id": p["id"]})
    assert r["seq"] > made["seq"] and ids.from_text(r["bundle_id"]) and r["id"] == p["id"]
    rec = await _rec(api, jane)
    assert sorted(rec["tables"]) == ["contacts.People", "crew_calls.Crew"]
    person = await _row(api, "contacts.People", jane)
    assert (person["Name"], person["Role"]) == ("Jane Doe", "Head of LX")
    assert await _proposals(api) == []
    await error_of(await api.post("/rules/proposals/accept", {"id": p["id"]}), 404,
                   "proposal_not_found")
    # the acceptance is one undo step
    u = await api.ok("POST", "/undo")
    assert u["status"] == "applied"
    assert (await _rec(api, jane))["tables"] == ["crew_calls.Crew"]


async def test_dismiss_hides_until_the_condition_flips(api: Api) -> None:
    await _crew_rule_on(api)
    sam = await _crew(api, "Sam")
    (p,) = await _proposals(api)
    head = await api.head()
    r = await api.ok("POST", "/rules/proposals/dismiss", {"id": p["id"]})
    assert (r["id"], r["seq"]) == (p["id"], head)  # local: nothing written
    assert await _proposals(api) == []
    # other edits keep it dismissed
    await api.ok("POST", "/records/update", {"id": sam, "values": {"role": "Sound"}})
    assert await _proposals(api) == []
    # the condition flips off (nothing to remove: Sam is not in People) and on again
    await api.ok("POST", "/records/update", {"id": sam, "values": {"active": False}})
    assert await _proposals(api) == []
    await api.ok("POST", "/records/update", {"id": sam, "values": {"active": True}})
    (again,) = await _proposals(api)
    assert again["entity_id"] == sam and again["id"] != p["id"]
    await error_of(await api.post("/rules/proposals/dismiss",
                                  {"id": ids.to_text(ids.new_id())}), 404,
                   "proposal_not_found")


async def test_detach_proposal_and_proposal_stale(api: Api) -> None:
    await _crew_rule_on(api)
    kim = await _crew(api, "Kim")
    (p,) = await _proposals(api)
    await api.ok("POST", "/rules/proposals/accept", {"id": p["id"]})
    # condition lost: propose_detach asks before removing
    await api.ok("POST", "/records/update", {"id": kim, "values": {"active": False}})
    (d,) = await _proposals(api)
    assert (d["action"], d["entity_id"], d["title"]) == ("detach", kim, "Kim")
    # meanwhile someone removes Kim from People by hand: the proposal no longer applies
    await api.ok("POST", "/records/delete", {"ids": [kim], "table": "contacts.People"})
    assert await _proposals(api) == []  # stale proposals are not listed
    head = await api.head()
    err = await error_of(await api.post("/rules/proposals/accept", {"id": d["id"]}), 409,
                         "proposal_stale")
    assert err["details"]["proposal_id"] == d["id"]
    assert await api.head() == head
    assert (await _rec(api, kim))["tables"] == ["crew_calls.Crew"]
    # a stale proposal is removed when refused
    await error_of(await api.post("/rules/proposals/accept", {"id": d["id"]}), 404,
                   "proposal_not_found")


async def test_accepting_a_detach_proposal_removes_from_the_target(api: Api) -> None:
    await _crew_rule_on(api)
    lee = await _crew(api, "Lee")
    (p,) = await _proposals(api)
    await api.ok("POST", "/rules/proposals/accept", {"id": p["id"]})
    await api.ok("POST", "/records/update", {"id": lee, "values": {"active": False}})
    (d,) = await _proposals(api)
    await api.ok("POST", "/rules/proposals/accept", {"id": d["id"]})
    assert (await _rec(api, lee))["tables"] == ["crew_calls.Crew"]
    assert await _proposals(api) == []


# --- auto_accept, on_condition_lost, apply to existing -----------------------------------------

async def test_auto_accept_writes_in_the_same_bundle_and_one_undo_reverts(api: Api) -> None:
    cues, sm = await _tables(api)
    await api.ok("POST", "/rules/put", _doc(enabled=True, auto_accept=True,
                                            on_condition_lost="auto_detach"))
    made = await api.ok("POST", "/records/create", {"table": cues, "values": {
        "Name": "Q1", "Called": True}})
    q1 = made["id"]
    assert await api.head() == made["seq"]  # record + attach + sets: one command
    assert sorted((await _rec(api, q1))["tables"]) == sorted([cues, sm])
    assert await _row(api, sm, q1) == {"Name": "Q1", "Page": None, "Note": "from LX"}
    assert await _proposals(api) == []
    # one undo reverts the trigger and what the rule added: the record is gone
    await api.ok("POST", "/undo")
    await error_of(await api.get(f"/records/{q1}?after={await api.head()}"), 404,
                   "not_found")
    await api.ok("POST", "/redo")
    assert sorted((await _rec(api, q1))["tables"]) == sorted([cues, sm])
    # condition lost with auto_detach: removed from SMCues in the triggering bundle
    await api.ok("POST", "/records/update", {"id": q1, "values": {"Called": False}})
    assert (await _rec(api, q1))["tables"] == [cues]
    await api.ok("POST", "/undo")
    assert sorted((await _rec(api, q1))["tables"]) == sorted([cues, sm])


async def test_apply_existing_attaches_directly_in_one_bundle(api: Api) -> None:
    cues, sm = await _tables(api)
    old = [await api.record(cues, Name=f"Q{i}", Called=i % 2 == 0) for i in range(4)]
    rid = (await api.ok("POST", "/rules/put", _doc()))["id"]
    # apply needs an active rule
    err = await error_of(await api.post("/rules/apply", {"id": rid}), 400, "invalid")
    assert err["details"]["status"] == "disabled"
    head = await api.head()
    r = await api.ok("POST", "/rules/put", {"id": rid, "enabled": True,
                                            "apply_existing": True})
    # the rule document, then one bundle attaching every match (no proposals: the click is
    # the acceptance, even without auto_accept)
    assert r["seq"] > head and r["id"] == rid and ids.from_text(r["bundle_id"])
    members = {x["id"] for x in (await api.ok("GET", f"/records/list?table={sm}"))["records"]}
    assert members == {old[0], old[2]}
    assert await _proposals(api) == []
    await api.ok("POST", "/undo")
    assert (await api.ok("GET", f"/records/list?table={sm}"))["records"] == []
    # the apply route does the same; again with nothing left to add changes nothing
    a = await api.ok("POST", "/rules/apply", {"id": rid})
    assert (a["changed"], a["id"]) == (True, rid) and ids.from_text(a["bundle_id"])
    members = {x["id"] for x in (await api.ok("GET", f"/records/list?table={sm}"))["records"]}
    assert members == {old[0], old[2]}
    head = await api.head()
    again = await api.ok("POST", "/rules/apply", {"id": rid})
    assert (again["changed"], again["seq"]) == (False, head) and "bundle_id" not in again


# --- cycles and limits ---------------------------------------------------------------------------

async def test_enabling_a_cycle_is_409_with_path_and_keys(api: Api) -> None:
    cues, sm = await _tables(api)
    a = (await api.ok("POST", "/rules/put", _doc(enabled=True)))["id"]
    back = {"label": "SM cues back to Cues", "source": "SMCues", "target": "Cues"}
    head = await api.head()
    err = await error_of(await api.post("/rules/put", {**back, "enabled": True}), 409,
                         "cycle_detected")
    path = err["details"]["path"]
    names = path.split(" -> ")
    assert names[0] == names[-1] and a in names and len(names) == 3
    b = next(n for n in names if n != a)
    keys = err["details"]["keys"]
    assert {"key": f"@member:{sm}", "written_by": a, "watched_by": b} in keys
    assert {"key": f"@member:{cues}", "written_by": b, "watched_by": a} in keys
    assert await api.head() == head
    # stored switched off it is fine; enabling it later is refused the same way
    bid = (await api.ok("POST", "/rules/put", back))["id"]
    err = await error_of(await api.post("/rules/put", {"id": bid, "enabled": True}), 409,
                         "cycle_detected")
    assert set(err["details"]["path"].split(" -> ")) == {a, bid}
    rules = await _rules(api)
    assert (rules[a]["status"], rules[bid]["status"]) == ("active", "disabled")


async def test_rule_limit_exceeded_is_422_and_writes_nothing(api: Api) -> None:
    cues, sm = await _tables(api)
    rid = (await api.ok("POST", "/rules/put", _doc(enabled=True, auto_accept=True)))["id"]
    ticks = itertools.count(0, 31)  # every reading is 31 s later: the 30 s budget is spent

    def slow_clock(ws: Any) -> None:
        ws.rule_clock = lambda: float(next(ticks))

    await api.node.current.writer.call(slow_clock)
    head = await api.head()
    err = await error_of(await api.post("/records/create", {
        "table": cues, "values": {"Name": "Q1", "Called": True}}), 422, "rule_limit_exceeded")
    assert err["details"]["limit"] == "time"
    (step,) = err["details"]["chain"]
    assert (step["depth"], step["rule"], step["action"]) == (0, rid, "attach")
    assert await api.head() == head
    assert (await api.ok("GET", f"/records/list?table={cues}"))["records"] == []
    assert (await api.ok("GET", f"/records/list?table={sm}"))["records"] == []


# --- overlays ------------------------------------------------------------------------------------

async def test_proposals_follow_their_overlay(api: Api) -> None:
    await _crew_rule_on(api)
    ov = (await api.ok("POST", "/overlays/create", {"name": "Tour crew"}))["overlay_id"]
    ana = await _crew(api, "Ana")
    (p,) = await _proposals(api)
    assert (p["context"], p["entity_id"], p["title"]) == (ov, ana, "Ana")
    # accepting stages into the overlay: canonical is unchanged
    head = await api.head()
    r = await api.ok("POST", "/rules/proposals/accept", {"id": p["id"]})
    assert r.get("staged") is True and await api.head() == head
    assert sorted((await _rec(api, ana))["tables"]) == ["contacts.People", "crew_calls.Crew"]
    await api.ok("POST", "/records/update", {"id": ana, "values": {"active": False}})
    (d,) = await _proposals(api)
    assert (d["action"], d["context"]) == ("detach", ov)
    # committing moves the open question to canonical
    await api.ok("POST", "/overlays/commit", {"id": ov})
    (d2,) = await _proposals(api)
    assert (d2["id"], d2["action"], d2["context"]) == (d["id"], "detach", "canonical")
    # a discarded overlay's proposals are dropped
    ov2 = (await api.ok("POST", "/overlays/create", {"name": "Maybe"}))["overlay_id"]
    await _crew(api, "Bo")
    assert {x["context"] for x in await _proposals(api)} == {"canonical", ov2}
    await api.ok("POST", "/overlays/discard", {"id": ov2})
    assert [x["id"] for x in await _proposals(api)] == [d["id"]]


# --- events --------------------------------------------------------------------------------------

async def test_events_rules_changed_and_rule_proposals_changed(api: Api) -> None:
    await _adopt(api, "contacts", "crew_calls")
    await api.settled()
    async with api.client.websocket("/events", headers=api.headers) as conn:
        assert (await ws_json(conn))["type"] == "hello"
        put = await api.ok("POST", "/rules/put", {"id": CREW_RULE, "enabled": True})
        ev = await _until(conn, "rules_changed", put["seq"])
        assert ev["seq"] == put["seq"]
        jane = await _crew(api, "Jane")
        ev = await _until(conn, "rule_proposals_changed")
        assert ev["seq"] == await api.head()
        (p,) = await _proposals(api)
        assert p["entity_id"] == jane
        d = await api.ok("POST", "/rules/proposals/dismiss", {"id": p["id"]})
        ev = await _until(conn, "rule_proposals_changed")
        assert ev["seq"] == d["seq"]
        deleted = await api.ok("POST", "/rules/delete", {"id": CREW_RULE})
        ev = await _until(conn, "rules_changed", deleted["seq"])
        assert ev["seq"] == deleted["seq"]


async def test_a_cycle_that_bypassed_the_check_is_suspended_with_an_event(api: Api) -> None:
    """Cycles can only arrive by sync (the put check refuses them); written here through the
    writer's plain put_config, the rules in it are suspended and `automation_suspended` says so."""
    cues, _ = await _tables(api)
    a = (await api.ok("POST", "/rules/put", _doc(enabled=True)))["id"]
    b = (await api.ok("POST", "/rules/put", {"source": "SMCues", "target": "Cues"}))["id"]
    stored = (await _rules(api))[b]
    doc = {k: v for k, v in stored.items() if k not in ("id", "status", "reason")}
    await api.settled()
    async with api.client.websocket("/events", headers=api.headers) as conn:
        assert (await ws_json(conn))["type"] == "hello"
        await api.node.current.writer.call(
            lambda ws: ws.put_config("rule", b, {**doc, "enabled": True}))
        head = await api.head()
        ev = await _until(conn, "automation_suspended", head)
        assert ev["rules"] == sorted([a, b])
        (cycle,) = ev["cycles"]
        assert set(cycle.split(" -> ")) == {a, b}
        rules = await _rules(api)
        assert {rules[a]["status"], rules[b]["status"]} == {"suspended"}
        assert cycle in rules[a]["reason"]
        # suspended rules do nothing; switching one off lets the other run again
        await api.record(cues, Name="Q1", Called=True)
        assert await _proposals(api) == []
        await api.ok("POST", "/rules/put", {"id": b, "enabled": False})
        rules = await _rules(api)
        assert (rules[a]["status"], rules[b]["status"]) == ("active", "disabled")
