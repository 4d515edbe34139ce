"""The conflict and overlay routes (issue 4 contract) in-process: every route's success and each
error case of the contract, each error checked to change nothing; the events they publish.

Concurrent writes come from a second replica (another identity) whose bundles are ingested
through the node's writer (tests/api/co_helpers.py).
"""

from __future__ import annotations

from typing import Any

from openprod.core import ids
from tests.api.co_helpers import (
    Other,
    delete_conflict,
    drifted,
    field_conflict,
    field_name,
    next_event,
    overlay,
    staged,
)
from tests.api.conftest import Api, error_of

UNKNOWN = "01a1fce2-b723-7598-a020-7eaa5335d77f"


async def _conflicts(api: Api, status: str = "open") -> dict[str, Any]:
    return dict(await api.ok("GET", f"/conflicts/list?status={status}"))


async def _overlays(api: Api) -> dict[str, Any]:
    return dict(await api.ok("GET", "/overlays/list"))


# --- conflicts ----------------------------------------------------------------------------------

async def test_conflict_list_shows_a_concurrent_edit(api: Api) -> None:
    fc = await field_conflict(api, named=True)
    c = fc["conflict"]
    name = await field_name(api, fc["table"], "Name")
    assert c["kind"] == "field" and c["status"] == "open" and c["reopened"] is False
    assert (c["table"], c["field_name"], c["field_label"]) == (fc["table"], name, "Name")
    assert c["field"] == f"{fc['table']}.{name}"
    assert c["display_value"] in ("mine", "theirs")
    tips = {t["value"]: t for t in c["tips"]}
    assert set(tips) == {"mine", "theirs"}
    assert tips["mine"]["actor"] == api.node.ident.actor.hex()
    assert tips["mine"]["actor_name"] == "Tester"
    assert tips["theirs"]["actor_name"] == "Other"
    for t in c["tips"]:
        assert isinstance(t["at_ms"], int) and t["at_ms"] > 1_600_000_000_000
        assert t["is_resolution"] is False and ids.from_text(t["op_id"])
    assert c["resolutions"] == [] and c["rejected_resolutions"] == []
    data = await _conflicts(api)
    assert data["count_open"] == 1 and data["seq"] >= fc["seq"]
    cur = await api.ok("GET", "/workspace/current")
    assert cur["conflicts_open"] == 1
    rec = await api.ok("GET", f"/records/{fc['id']}")
    assert rec["conflicts"] == [name]


async def test_unnamed_actor_falls_back_to_hex(api: Api) -> None:
    c = (await field_conflict(api))["conflict"]
    (theirs,) = [t for t in c["tips"] if t["value"] == "theirs"]
    assert theirs["actor_name"] == theirs["actor"][:8]


async def test_resolve_field_conflict(api: Api) -> None:
    fc = await field_conflict(api)
    c = fc["conflict"]
    sub, _ = api.node.hub.subscribe()
    head = await api.head()
    r = await api.ok("POST", "/conflicts/resolve", {
        "conflict_id": c["conflict_id"], "value": "agreed",
        "expected_tips": [t["op_id"] for t in c["tips"]]})
    assert r["seq"] > head and ids.from_text(r["bundle_id"])
    ev = await next_event(sub, "conflict_resolved")
    assert (ev["conflict_id"], ev["entity_id"], ev["field"]) == (c["conflict_id"], fc["id"],
                                                                 c["field"])
    assert ev["seq"] >= r["seq"]
    assert (await _conflicts(api))["conflicts"] == []
    (done,) = (await _conflicts(api, "all"))["conflicts"]
    assert done["status"] == "resolved" and done["display_value"] == "agreed"
    assert done["resolutions"][0]["actor_name"] == "Tester"
    assert (await api.values(fc["id"]))["Name"] == "agreed"
    assert (await api.ok("GET", "/workspace/current"))["conflicts_open"] == 0
    # resolving again: 409, nothing written
    head = await api.head()
    err = await error_of(await api.post("/conflicts/resolve", {
        "conflict_id": c["conflict_id"], "value": "again"}), 409, "conflict_resolved")
    assert err["details"]["conflict_id"] == c["conflict_id"]
    assert await api.head() == head
    sub.close()


async def test_resolve_with_null_clears(api: Api) -> None:
    fc = await field_conflict(api)
    await api.ok("POST", "/conflicts/resolve", {"conflict_id": fc["conflict"]["conflict_id"],
                                                "value": None})
    assert (await api.values(fc["id"]))["Name"] is None


async def test_resolve_errors_change_nothing(api: Api) -> None:
    fc = await field_conflict(api)
    cid = fc["conflict"]["conflict_id"]
    head = await api.head()
    await error_of(await api.post("/conflicts/resolve", {"conflict_id": UNKNOWN, "value": "x"}),
                   404, "conflict_not_found")
    err = await error_of(await api.post("/conflicts/resolve", {
        "conflict_id": cid, "value": "x", "expected_tips": [UNKNOWN]}), 409,
        "stale_conflict_state")
    assert sorted(err["details"]["tips"]) == sorted(t["op_id"] for t in fc["conflict"]["tips"])
    for bad in ({"conflict_id": "nope"}, {"conflict_id": cid, "choice": "maybe"},
                {"conflict_id": cid, "choice": "restore"},
                {"conflict_id": cid, "expected_tips": [1]},
                {"conflict_id": cid, "expected_tips": ["nope"]}):
        await error_of(await api.post("/conflicts/resolve", bad), 400, "invalid")
    assert await api.head() == head
    assert (await _conflicts(api))["count_open"] == 1
    await error_of(await api.get("/conflicts/list?status=bogus"), 400, "invalid")


async def test_grid_edit_of_a_conflicted_field_resolves_it(api: Api) -> None:
    fc = await field_conflict(api)
    await api.ok("POST", "/records/update", {"id": fc["id"], "values": {"Name": "typed"}})
    assert (await _conflicts(api))["count_open"] == 0
    (done,) = (await _conflicts(api, "all"))["conflicts"]
    assert done["status"] == "resolved" and done["display_value"] == "typed"


async def test_delete_conflict_restore_and_keep(api: Api) -> None:
    dc = await delete_conflict(api)
    c = dc["conflict"]
    assert c["kind"] == "delete" and c["field"] == "$entity" and c["table"] == dc["table"]
    assert c["field_name"] is None
    head = await api.head()
    await error_of(await api.post("/conflicts/resolve", {"conflict_id": c["conflict_id"]}),
                   400, "invalid")  # a delete conflict needs a choice
    assert await api.head() == head
    await api.ok("POST", "/conflicts/resolve", {"conflict_id": c["conflict_id"],
                                                "choice": "restore"})
    assert (await api.values(dc["id"]))["Name"] == "edited"
    dc2 = await delete_conflict(api, dc["table"])
    await api.ok("POST", "/conflicts/resolve", {"conflict_id": dc2["conflict"]["conflict_id"],
                                                "choice": "keep_deleted"})
    await error_of(await api.get(f"/records/{dc2['id']}"), 404, "not_found")
    assert (await _conflicts(api))["count_open"] == 0


async def test_conflict_events_reach_the_websocket(api: Api) -> None:
    table = await api.table()
    rec = await api.record(table, Name="orig")
    other = Other(api)
    sub, _ = api.node.hub.subscribe()
    try:
        await other.pull()
        await api.ok("POST", "/records/update", {"id": rec, "values": {"Name": "mine"}})
        other.ws.update_record(rec, {"Name": "theirs"})
        seq = await other.push()
        ev = await next_event(sub, "conflict_opened")
    finally:
        other.close()
        sub.close()
    assert ev["entity_id"] == rec and ev["reopened"] is False and ev["seq"] >= seq
    # the event came after the commit: the conflict is listed at that seq
    data = await api.ok("GET", f"/conflicts/list?after={ev['seq']}")
    assert [c["conflict_id"] for c in data["conflicts"]] == [ev["conflict_id"]]


# --- overlays -----------------------------------------------------------------------------------

async def test_overlay_create_list_current(api: Api) -> None:
    sub, _ = api.node.hub.subscribe()
    head = await api.head()
    r = await api.ok("POST", "/overlays/create", {"name": "Plan B"})
    assert r["seq"] == head
    oid = r["overlay_id"]
    ev = await next_event(sub, "overlays_changed")
    assert ev["active"] == oid and ev["seq"] == head
    data = await _overlays(api)
    assert data["active"] == oid
    (o,) = data["overlays"]
    assert (o["id"], o["name"], o["source"], o["status"], o["changes"], o["drifted"]) == (
        oid, "Plan B", ["user"], "active", 0, 0)
    assert isinstance(o["created_at"], int)
    cur = await api.ok("GET", "/workspace/current")
    assert cur["active_overlay"] == {"id": oid, "name": "Plan B", "changes": 0,
                                     "can_undo": False, "can_redo": False,
                                     "undo_label": None, "redo_label": None}
    await error_of(await api.post("/overlays/create", {"name": "  "}), 400, "invalid")
    assert len((await _overlays(api))["overlays"]) == 1
    sub.close()


async def test_staged_edit_reads_and_canonical_view(api: Api) -> None:
    s = await staged(api)
    name = s["field"]
    rec = await api.ok("GET", f"/records/{s['id']}")
    assert rec["values"][name] == "staged"
    assert rec["staged"] == [name] and rec["drifted"] == []
    canon = await api.ok("GET", f"/records/{s['id']}?canonical=1")
    assert canon["values"][name] == "orig" and "staged" not in canon
    rows = (await api.ok("GET", f"/records/list?table={s['table']}"))["records"]
    assert [(r["values"][name], r["staged"]) for r in rows] == [("staged", [name])]
    rows = (await api.ok("GET", f"/records/list?table={s['table']}&canonical=1"))["records"]
    assert [r["values"][name] for r in rows] == ["orig"]
    # a staged create shows only in the overlay view
    created = await api.ok("POST", "/records/create", {"table": s["table"],
                                                       "values": {"Name": "new"}})
    assert created["staged"] is True
    rows = (await api.ok("GET", f"/records/list?table={s['table']}"))["records"]
    assert len(rows) == 2
    changes = (await api.ok("GET", f"/overlays/{s['overlay']}/changes"))
    first = changes["changes"][0]
    assert (first["op"], first["entity_id"], first["table"], first["field_name"],
            first["field_label"], first["old_value"], first["new_value"], first["drifted"]) == (
        "SetField", s["id"], s["table"], name, "Name", "orig", "staged", False)
    assert changes["drift"] == []
    assert {c["op"] for c in changes["changes"]} >= {"CreateEntity", "SetField"}
    cur = await api.ok("GET", "/workspace/current")
    assert cur["active_overlay"]["changes"] == len(changes["changes"])


async def test_commit_writes_one_change(api: Api) -> None:
    s = await staged(api)
    sub, _ = api.node.hub.subscribe()
    head = await api.head()
    r = await api.ok("POST", "/overlays/commit", {"id": s["overlay"]})
    assert r["seq"] > head and ids.from_text(r["bundle_id"])
    ev = await next_event(sub, "overlays_changed")
    assert ev["active"] is None
    assert (await api.values(s["id"]))["Name"] == "staged"
    assert await _overlays(api) == {"overlays": [], "active": None}
    assert (await api.ok("GET", "/workspace/current"))["active_overlay"] is None
    # an empty overlay commits nothing
    oid = await overlay(api, "empty")
    head = await api.head()
    r = await api.ok("POST", "/overlays/commit", {"id": oid})
    assert r == {"seq": head, "bundle_id": None}
    sub.close()


async def test_activate_over_an_active_overlay(api: Api) -> None:
    first = await overlay(api, "first")
    second = await overlay(api, "second")  # creating stashes the first
    data = await _overlays(api)
    assert data["active"] == second
    assert {o["id"]: o["status"] for o in data["overlays"]} == {first: "stashed",
                                                                second: "active"}
    err = await error_of(await api.post("/overlays/activate", {"id": first}), 409,
                         "overlay_active")
    assert err["details"]["active"] == second
    assert (await _overlays(api))["active"] == second  # nothing changed
    await api.ok("POST", "/overlays/activate", {"id": second})  # already active: a no-op
    r = await api.ok("POST", "/overlays/activate", {"id": first, "stash_current": True})
    assert r["active"] == first
    assert (await _overlays(api))["active"] == first
    await error_of(await api.post("/overlays/activate", {"id": UNKNOWN, "stash_current": True}),
                   404, "overlay_not_found")
    assert (await _overlays(api))["active"] == first


async def test_stash_and_discard(api: Api) -> None:
    s = await staged(api)
    await api.ok("POST", "/overlays/stash", {"id": s["overlay"]})
    assert (await _overlays(api))["active"] is None
    assert (await api.values(s["id"]))["Name"] == "orig"  # canonical again
    # edits go canonical while nothing is active
    r = await api.ok("POST", "/records/update", {"id": s["id"], "values": {"Dur": 2.5}})
    assert "staged" not in r
    await api.ok("POST", "/overlays/discard", {"id": s["overlay"]})
    assert (await _overlays(api))["overlays"] == []
    for path, body in (("/overlays/discard", {"id": s["overlay"]}),
                       ("/overlays/stash", {"id": UNKNOWN}),
                       ("/overlays/commit", {"id": UNKNOWN})):
        head = await api.head()
        await error_of(await api.post(path, body), 404, "overlay_not_found")
        assert await api.head() == head
    await error_of(await api.get(f"/overlays/{UNKNOWN}/changes"), 404, "overlay_not_found")
    await error_of(await api.get("/overlays/nope/changes"), 400, "invalid")


async def test_drop_change(api: Api) -> None:
    s = await staged(api)
    await api.ok("POST", "/records/update", {"id": s["id"], "values": {"Dur": 1.5}})
    dur = await field_name(api, s["table"], "Dur")
    r = await api.ok("POST", "/overlays/drop-change", {"overlay_id": s["overlay"],
                                                       "local_op_id": s["local_op_id"]})
    assert r["dropped"] == [s["local_op_id"]]
    rec = await api.ok("GET", f"/records/{s['id']}")
    assert rec["staged"] == [dur]
    r = await api.ok("POST", "/overlays/drop-change", {"overlay_id": s["overlay"],
                                                       "entity_id": s["id"], "field": dur})
    assert len(r["dropped"]) == 1
    assert (await api.ok("GET", f"/overlays/{s['overlay']}/changes"))["changes"] == []
    for body, status, code in (
            ({"overlay_id": s["overlay"], "local_op_id": s["local_op_id"]}, 404, "not_found"),
            ({"overlay_id": s["overlay"], "entity_id": s["id"], "field": dur}, 404,
             "not_found"),
            ({"overlay_id": UNKNOWN, "local_op_id": s["local_op_id"]}, 404,
             "overlay_not_found"),
            ({"overlay_id": s["overlay"]}, 400, "invalid")):
        await error_of(await api.post("/overlays/drop-change", body), status, code)


async def test_drift_commit_refused_then_keep_mine(api: Api) -> None:
    d = await drifted(api)
    ev = d["event"]
    assert ev["overlay_id"] == d["overlay"]
    (f,) = ev["fields"]
    assert (f["entity_id"], f["overlay_value"], f["canonical_value"], f["kind"]) == (
        d["id"], "staged", "canon", "value")
    rec = await api.ok("GET", f"/records/{d['id']}")
    assert rec["drifted"] == [d["field"]] and rec["values"][d["field"]] == "staged"
    o = (await _overlays(api))["overlays"][0]
    assert o["drifted"] == 1
    ch = await api.ok("GET", f"/overlays/{d['overlay']}/changes")
    assert ch["changes"][0]["drifted"] is True and ch["changes"][0]["drift_kind"] == "value"
    assert [x["kind"] for x in ch["drift"]] == ["value"]
    head = await api.head()
    err = await error_of(await api.post("/overlays/commit", {"id": d["overlay"]}), 409,
                         "unresolved_drift")
    assert [x["entity_id"] for x in err["details"]["fields"]] == [d["id"]]
    assert await api.head() == head
    assert (await _overlays(api))["active"] == d["overlay"]  # still there, still active
    for bad, status, code in (
            ({"choice": "maybe"}, 400, "invalid"),
            ({"overlay_id": UNKNOWN}, 404, "overlay_not_found"),
            ({"field": "Dur"}, 404, "not_found")):
        body = {"overlay_id": d["overlay"], "entity_id": d["id"], "field": d["field"],
                "choice": "keep_mine", **bad}
        await error_of(await api.post("/overlays/resolve-drift", body), status, code)
    await api.ok("POST", "/overlays/resolve-drift", {
        "overlay_id": d["overlay"], "entity_id": d["id"], "field": d["field"],
        "choice": "keep_mine"})
    r = await api.ok("POST", "/overlays/commit", {"id": d["overlay"]})
    assert r["bundle_id"] is not None
    assert (await api.values(d["id"]))["Name"] == "staged"
    assert (await _conflicts(api))["count_open"] == 0


async def test_drift_use_canonical(api: Api) -> None:
    d = await drifted(api)
    await api.ok("POST", "/overlays/resolve-drift", {
        "overlay_id": d["overlay"], "entity_id": d["id"], "field": d["field"],
        "choice": "use_canonical"})
    assert (await api.ok("GET", f"/overlays/{d['overlay']}/changes"))["changes"] == []
    assert (await api.ok("GET", f"/records/{d['id']}"))["values"][d["field"]] == "canon"


async def test_undo_redo_while_staging(api: Api) -> None:
    s = await staged(api)
    sub, _ = api.node.hub.subscribe()
    head = await api.head()
    r = await api.ok("POST", "/undo")
    assert r["status"] == "applied" and r["seq"] == head
    ev = await next_event(sub, "overlays_changed")
    assert ev["active"] == s["overlay"]
    rec = await api.ok("GET", f"/records/{s['id']}")
    assert rec["values"][s["field"]] == "orig" and rec["staged"] == []
    await api.ok("POST", "/redo")
    await next_event(sub, "overlays_changed")
    assert (await api.ok("GET", f"/records/{s['id']}"))["staged"] == [s["field"]]
    assert await api.head() == head
    sub.close()


async def test_staged_command_publishes_overlays_changed(api: Api) -> None:
    table = await api.table()
    rec = await api.record(table, Name="a")
    oid = await overlay(api)
    sub, _ = api.node.hub.subscribe()
    r = await api.ok("POST", "/records/update", {"id": rec, "values": {"Name": "b"}})
    assert r["staged"] is True
    ev = await next_event(sub, "overlays_changed")
    assert ev["active"] == oid
    sub.close()


async def test_redo_that_finds_drift_publishes_it(api: Api) -> None:
    """An overlay redo re-checks drift (the canonical change came while nothing was staged)."""
    s = await staged(api)
    other = Other(api)
    sub, _ = api.node.hub.subscribe()
    try:
        await other.pull()
        await api.ok("POST", "/undo")  # nothing staged any more: no drift check on ingest
        other.ws.update_record(s["id"], {"Name": "remote"})
        await other.push()
        assert (await api.ok("GET", f"/records/{s['id']}"))["values"][s["field"]] == "remote"
        await api.ok("POST", "/redo")
        ev = await next_event(sub, "overlay_drift")
    finally:
        other.close()
        sub.close()
    assert ev["overlay_id"] == s["overlay"]
    assert [(f["entity_id"], f["canonical_value"], f["kind"]) for f in ev["fields"]] == [
        (s["id"], "remote", "value")]
    rec = await api.ok("GET", f"/records/{s['id']}")
    assert rec["drifted"] == [s["field"]] and rec["values"][s["field"]] == "staged"
