"""The built-in modules' scripts, each run for real through the API (spec 04 §7; 05 J14).

A node in-process with the real sandbox host: a built-in module is adopted (POST /modules/adopt),
its records made through the API, the script run with POST /scripts/run, and the run's overlay
checked (GET /overlays/<id>/changes) before it is committed and the records read back:

- lighting_cues `renumber_cues`: a cue list renumbered in stack order (also the SM cue list's
  number of a called cue); an unknown list or a zero step fails in plain words, with no overlay;
- crew_calls `generate_calls`: one Call per active crew member, linked to them (for_person with
  the day's role); a second run for the same day stages nothing;
- crew_calls `publish_calls` + the on-change `flag_changed_calls`: moving a published call
  flags it, moving an unpublished one fires nothing, publishing again clears the flag, and one
  edit moving two calls is one run with both changes;
- contacts `normalize_phones`: numbers rewritten as +<country><number>, unreadable ones left
  and logged.
"""

from __future__ import annotations

from typing import Any

import trio

from tests.api.conftest import Api, api  # noqa: F401  (the fixture)

END = ("script_completed", "script_failed")


async def run_script(api: Api, script: str, args: dict[str, Any] | None = None,  # noqa: F811
                     ) -> dict[str, Any]:
    """Run a manual script and wait for its end; the run as GET /scripts/runs tells it."""
    sub, _ = api.node.hub.subscribe(None)
    body: dict[str, Any] = {"script": script}
    if args is not None:
        body["args"] = args
    r = await api.ok("POST", "/scripts/run", body)
    await wait_end(sub, lambda ev: ev.get("run_id") == r["run_id"])
    return dict((await api.ok("GET", f"/scripts/runs?run_id={r['run_id']}"))["run"])


async def wait_end(sub: Any, pred: Any) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            ev = await sub.recv.receive()
            if ev["type"] in END and pred(ev):
                return dict(ev)


async def changes(api: Api, run: dict[str, Any]) -> list[dict[str, Any]]:  # noqa: F811
    assert run["status"] == "completed", run
    assert run["overlay_id"], run
    return list((await api.ok("GET", f"/overlays/{run['overlay_id']}/changes"))["changes"])


def sets(chs: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """entity -> new value of the staged SetField writes to `field`."""
    return {c["entity_id"]: c["new_value"] for c in chs
            if c["op"] == "SetField" and c["field_name"] == field}


async def values(api: Api, rec: str) -> dict[str, Any]:  # noqa: F811
    return dict((await api.ok("GET", f"/records/{rec}"))["values"])


def log_text(run: dict[str, Any]) -> str:
    return "\n".join(line["msg"] for line in run["log"])


# --- lighting_cues.renumber_cues ---------------------------------------------------------------

async def test_renumber_cues_in_stack_order(api: Api) -> None:  # noqa: F811
    await api.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
    await api.ok("POST", "/rules/put", {"id": "lighting_cues.called_cues_to_sm",
                                        "enabled": True})
    main = await api.record("lighting_cues.CueLists", name="Main")
    other = await api.record("lighting_cues.CueLists", name="Preshow")
    cues = {}
    links = {}
    for number, called in (("1", False), ("5", True), ("2.5", False), ("7", False)):
        cues[number] = await api.record("lighting_cues.Cues", number=number, is_called=called)
        links[number] = (await api.ok("POST", "/edges/create", {
            "type": "lighting_cues.cue_stack", "src": cues[number], "dst": main}))["id"]
    # cue 7 moved up between 1 and 5: the stack reads 1, 7, 5, 2.5
    await api.ok("POST", "/edges/reorder", {"id": links["7"], "after": links["1"]})
    elsewhere = await api.record("lighting_cues.Cues", number="99")
    await api.ok("POST", "/edges/create", {"type": "lighting_cues.cue_stack",
                                           "src": elsewhere, "dst": other})
    await api.ok("POST", "/rules/apply", {"id": "lighting_cues.called_cues_to_sm"})
    sm = await api.ok("GET", "/records/list?table=lighting_cues.SMCues")
    assert [r["values"]["number"] for r in sm["records"]] == ["5"]

    run = await run_script(api, "lighting_cues.renumber_cues",
                           {"cue_list": "  main ", "start": 10, "step": 10})
    staged = await changes(api, run)
    want = {cues["1"]: "10", cues["7"]: "20", cues["5"]: "30", cues["2.5"]: "40"}
    assert sets(staged, "number") == want  # both the Cues and SM number of cue 5: one slot each
    assert {(c["table"], c["entity_id"]) for c in staged} == {
        *(("lighting_cues.Cues", e) for e in want), ("lighting_cues.SMCues", cues["5"])}
    assert run["op_count"] == 5
    assert "Cue 7 → 20" in log_text(run)
    assert log_text(run).endswith("Main: 4 of 4 cues renumbered (10 to 40).")
    # nothing real until committed
    assert (await values(api, cues["1"]))["number"] == "1"
    await api.ok("POST", "/overlays/commit", {"id": run["overlay_id"]})
    for e, n in want.items():
        assert (await values(api, e))["number"] == n
    assert (await values(api, elsewhere))["number"] == "99"
    sm = await api.ok("GET", "/records/list?table=lighting_cues.SMCues")
    assert [r["values"]["number"] for r in sm["records"]] == ["30"]

    # decimals, and cues already right are left alone
    run = await run_script(api, "lighting_cues.renumber_cues",
                           {"cue_list": "Main", "start": 10, "step": 0.5})
    assert sets(await changes(api, run), "number") == {
        cues["7"]: "10.5", cues["5"]: "11", cues["2.5"]: "11.5"}
    await api.ok("POST", "/overlays/discard", {"id": run["overlay_id"]})


async def test_renumber_cues_refuses_in_plain_words(api: Api) -> None:  # noqa: F811
    await api.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
    run = await run_script(api, "lighting_cues.renumber_cues",
                           {"cue_list": "Main", "start": 1, "step": 1})
    assert run["status"] == "failed" and run["overlay_id"] is None
    assert run["error"]["message"] == ("There are no cue lists yet: add one in Cue lists "
                                       "first.")
    await api.record("lighting_cues.CueLists", name="Main")
    await api.record("lighting_cues.CueLists", name="Act 2")
    run = await run_script(api, "lighting_cues.renumber_cues",
                           {"cue_list": "Act 3", "start": 1, "step": 1})
    assert run["status"] == "failed", run
    err = run["error"]
    assert err["code"] == "ScriptError"
    assert err["message"] == "No cue list is named “Act 3”. Cue lists: Act 2, Main."
    assert isinstance(err["line"], int) and err["line"] > 1
    run = await run_script(api, "lighting_cues.renumber_cues",
                           {"cue_list": "Main", "start": 1, "step": 0})
    assert run["error"]["message"] == "The step must be more than 0 (for example 1 or 10)."
    assert (await api.ok("GET", "/overlays/list"))["overlays"] == []


# --- crew_calls --------------------------------------------------------------------------------

DAY = "2025-03-01"
NINE = 1740819600000  # 2025-03-01T09:00:00Z


async def crew(api: Api) -> dict[str, str]:  # noqa: F811
    await api.ok("POST", "/modules/adopt", {"id": "crew_calls"})
    return {
        "jane": await api.record("crew_calls.Crew", name="Jane Doe", role="LX"),
        "sam": await api.record("crew_calls.Crew", name="Sam Roe", active=False),
        "kim": await api.record("crew_calls.Crew", name="Kim Lee"),  # active by default
    }


async def test_generate_calls_one_per_active_crew_member(api: Api) -> None:  # noqa: F811
    people = await crew(api)
    run = await run_script(api, "crew_calls.generate_calls",
                           {"day": DAY, "call_time": NINE, "location": "Stage"})
    staged = await changes(api, run)
    assert [c["op"] for c in staged].count("CreateEntity") == 2
    assert [c["op"] for c in staged].count("CreateEdge") == 2
    assert sorted(sets(staged, "label").values()) == ["Jane Doe", "Kim Lee"]
    assert set(sets(staged, "location").values()) == {"Stage"}
    assert run["log"][-1]["msg"] == f"2 calls for {DAY} at Stage; 0 already called."
    assert (await api.ok("GET", "/records/list?table=crew_calls.Calls"))["records"] == []

    await api.ok("POST", "/overlays/commit", {"id": run["overlay_id"]})
    calls = (await api.ok("GET", "/records/list?table=crew_calls.Calls"))["records"]
    by_label = {c["values"]["label"]: c for c in calls}
    assert set(by_label) == {"Jane Doe", "Kim Lee"}
    for c in calls:
        v = c["values"]
        assert (v["day"], v["call_time"], v["location"]) == (DAY, NINE, "Stage")
        assert v.get("published") is False
    for label, who, role in (("Jane Doe", "jane", "LX"), ("Kim Lee", "kim", None)):
        edges = (await api.ok("GET", f"/edges/list?entity={by_label[label]['id']}"))["edges"]
        assert [(e["type"], e["dst"]) for e in edges] == [("crew_calls.for_person",
                                                           people[who])]
        assert (edges[0].get("props") or {}).get("role_today") == role

    # again for the same day: everyone is called already, nothing staged, no overlay
    run = await run_script(api, "crew_calls.generate_calls",
                           {"day": DAY, "call_time": NINE, "location": "Stage"})
    assert (run["status"], run["op_count"], run["overlay_id"]) == ("completed", 0, None)
    assert "Jane Doe already has a call on 2025-03-01: skipped." in log_text(run)
    # a bad argument is refused before anything runs
    resp = await api.post("/scripts/run", {"script": "crew_calls.generate_calls",
                                           "args": {"day": "tomorrow", "call_time": NINE,
                                                    "location": "Stage"}})
    assert resp.status_code == 400
    assert (await resp.get_json())["error"]["code"] == "invalid_args"


async def test_moving_a_published_call_flags_it(api: Api) -> None:  # noqa: F811
    await crew(api)
    run = await run_script(api, "crew_calls.generate_calls",
                           {"day": DAY, "call_time": NINE, "location": "Stage"})
    await api.ok("POST", "/overlays/commit", {"id": run["overlay_id"]})
    other = await api.record("crew_calls.Calls", label="Load-in", day="2025-03-02",
                             location="Dock")
    run = await run_script(api, "crew_calls.publish_calls", {"day": DAY})
    assert set(sets(await changes(api, run), "published").values()) == {True}
    await api.ok("POST", "/overlays/commit", {"id": run["overlay_id"]})
    calls = {c["values"]["label"]: c["id"] for c in (await api.ok(
        "GET", "/records/list?table=crew_calls.Calls"))["records"]}

    listed = {s["id"]: s for s in (await api.ok("GET", "/scripts/list"))["scripts"]}
    assert listed["crew_calls.flag_changed_calls"]["trigger_enabled"] is False
    await api.ok("POST", "/scripts/triggers", {"script": "crew_calls.flag_changed_calls",
                                               "enabled": True})
    sub, _ = api.node.hub.subscribe(None)
    # an unpublished call moved: nothing fires; a published one moved: one run, one change
    await api.ok("POST", "/records/update", {"id": other, "values": {"location": "Stage"}})
    await api.ok("POST", "/records/update", {"id": calls["Jane Doe"],
                                             "values": {"location": "Studio B"}})
    ev = await wait_end(sub, lambda e: e["script"] == "crew_calls.flag_changed_calls")
    assert ev["type"] == "script_completed", ev
    runs = [r for r in (await api.ok("GET", "/scripts/runs"))["runs"]
            if r["script"] == "crew_calls.flag_changed_calls"]
    assert len(runs) == 1 and runs[0]["trigger"] == "on_change" and runs[0]["changes"] == 1
    assert runs[0]["log"] == [{"level": "info",
                               "msg": "Jane Doe: location “Stage” → “Studio B”"}]
    staged = await changes(api, runs[0])
    assert sets(staged, "changed_after_publish") == {calls["Jane Doe"]: True}
    await api.ok("POST", "/overlays/commit", {"id": ev["overlay_id"]})
    assert (await values(api, calls["Jane Doe"]))["changed_after_publish"] is True
    assert (await values(api, calls["Kim Lee"]))["changed_after_publish"] is False
    assert (await values(api, other)).get("changed_after_publish") is False

    # publishing the day again clears the mark (and fires nothing: no watched field changed)
    run = await run_script(api, "crew_calls.publish_calls", {"day": DAY})
    assert sets(await changes(api, run), "changed_after_publish") == {
        calls["Jane Doe"]: False}
    assert "Jane Doe: changed since it was published, published again." in log_text(run)
    await api.ok("POST", "/overlays/commit", {"id": run["overlay_id"]})
    assert (await values(api, calls["Jane Doe"]))["changed_after_publish"] is False

    # one edit moving both calls (one bundle): one run sees both changes and flags both
    later = NINE + 30 * 60_000
    await api.ok("POST", "/records/update", {"updates": [
        {"id": calls["Jane Doe"], "values": {"call_time": later}},
        {"id": calls["Kim Lee"], "values": {"call_time": later}}]})
    ev = await wait_end(sub, lambda e: e["script"] == "crew_calls.flag_changed_calls")
    run = (await api.ok("GET", f"/scripts/runs?run_id={ev['run_id']}"))["run"]
    assert run["changes"] == 2
    assert sorted(line["msg"] for line in run["log"]) == ["Jane Doe: call time changed",
                                                          "Kim Lee: call time changed"]
    assert sets(await changes(api, run), "changed_after_publish") == {
        calls["Jane Doe"]: True, calls["Kim Lee"]: True}
    await api.ok("POST", "/overlays/discard", {"id": run["overlay_id"]})
    await api.ok("POST", "/scripts/triggers", {"script": "crew_calls.flag_changed_calls",
                                               "enabled": False})
    runs = [r for r in (await api.ok("GET", "/scripts/runs"))["runs"]
            if r["script"] == "crew_calls.flag_changed_calls"]
    assert len(runs) == 2


# --- contacts.normalize_phones -----------------------------------------------------------------

async def test_normalize_phones(api: Api) -> None:  # noqa: F811
    await api.ok("POST", "/modules/adopt", {"id": "contacts"})
    phones = {
        "Ana": ("01632 960123", "+441632960123"),  # national, trunk 0 dropped
        "Ben": ("+1 (555) 010-4477", "+15550104477"),
        "Cleo": ("0044 20 7946 0018", "+442079460018"),
        "Dev": ("+44 (0)20 7946 0019", "+442079460019"),
        "Eve": ("+441632960999", None),  # already fine
        "Finn": ("call the office", None),  # skipped
        "Gus": ("123", None),  # too short: skipped
        "Hal": ("020.7946.0020", "+442079460020"),
    }
    ids = {name: await api.record("contacts.People", full_name=name, phone=p)
           for name, (p, _) in phones.items()}
    ids["Ivy"] = await api.record("contacts.People", full_name="Ivy")  # no phone
    run = await run_script(api, "contacts.normalize_phones", {"country_code": "+44"})
    want = {ids[n]: new for n, (_, new) in phones.items() if new is not None}
    assert sets(await changes(api, run), "phone") == want
    warns = [line["msg"] for line in run["log"] if line["level"] == "warn"]
    assert warns == ["Skipped Finn: “call the office” is not a phone number this can read.",
                     "Skipped Gus: “123” is not a phone number this can read."]
    assert run["log"][-1]["msg"] == "5 numbers normalised, 1 already fine, 2 skipped."
    await api.ok("POST", "/overlays/commit", {"id": run["overlay_id"]})
    for name, (old, new) in phones.items():
        assert (await values(api, ids[name]))["phone"] == (new or old)
    assert (await values(api, ids["Ivy"]))["phone"] is None

    run = await run_script(api, "contacts.normalize_phones", {"country_code": "UK"})
    assert run["status"] == "failed"
    assert run["error"]["message"] == ("The country code “UK” is not 1 to 3 digits (for "
                                       "example 44 or +1).")


async def test_the_catalog_lists_the_builtin_scripts(api: Api) -> None:  # noqa: F811
    for m in ("contacts", "crew_calls", "lighting_cues"):
        await api.ok("POST", "/modules/adopt", {"id": m})
    listed = {s["id"]: s for s in (await api.ok("GET", "/scripts/list"))["scripts"]}
    assert set(listed) == {"contacts.normalize_phones", "crew_calls.generate_calls",
                           "crew_calls.publish_calls", "crew_calls.flag_changed_calls",
                           "lighting_cues.renumber_cues"}
    gen = listed["crew_calls.generate_calls"]
    assert (gen["label"], gen["module"], gen["trigger"]) == ("Generate calls", "crew_calls",
                                                             "manual")
    # args in the manifest's order: the UI's form follows it
    assert list(gen["args"].items()) == [("day", "date"), ("call_time", "datetime"),
                                         ("location", "text")]
    assert list(listed["lighting_cues.renumber_cues"]["args"]) == ["cue_list", "start", "step"]
    flag = listed["crew_calls.flag_changed_calls"]
    assert flag["trigger"] == "on_change" and flag["trigger_enabled"] is False
    assert flag["writes"] == ["crew_calls.Calls.changed_after_publish"]
    assert all(s["capabilities"] == [] for s in listed.values())
