"""Workspace scripts (spec 04 §7.1, spec 05 J14 "module scripts (read-only) and workspace
scripts"): put, list, run, edit, delete over the HTTP API, with a real sandbox host.

A workspace script is workspace config (`PutConfig("script", id)`), so it syncs and any member
may edit it; it writes `workspace.*` tables; its capability decisions are keyed to its id and
source hash, so changing the source asks again.
"""

from __future__ import annotations

from typing import Any

from tests.actors.script_helpers import next_event
from tests.api.conftest import Api, error_of
from tests.api.test_scripts_api import _run, _sub

MAKE = '''for i = 1, args.count do
  core.create_entity("%s", { %s = args.prefix .. i })
end
print("made", args.count)
'''


async def _cast(api: Api) -> tuple[str, str]:
    """A table made here (write scope `workspace.*`): (table id, its name field)."""
    made = await api.ok("POST", "/tables/create", {"label": "Cast",
                                                   "fields": [{"label": "Name"}]})
    tid = made["table"]
    (t,) = [t for t in (await api.ok("GET", f"/tables/list?after={made['seq']}"))["tables"]
            if t["id"] == tid]
    return tid, t["fields"][0]["name"]


async def _listed(api: Api) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in (await api.ok("GET", "/scripts/list"))["scripts"]
            if s["source_kind"] == "workspace"}


async def test_put_list_run_commit(api: Api) -> None:
    table, name = await _cast(api)
    head = await api.head()
    sub = _sub(api)
    make = MAKE % (table, name)
    put = await api.ok("POST", "/scripts/put", {
        "label": "Make cast", "source": make, "args": {"count": "integer", "prefix": "text"}})
    assert put["seq"] > head  # workspace config: it syncs like any change
    # other tabs (and, for a synced put, peers' UIs) learn of it
    ev = await next_event(sub, types=("scripts_changed",))
    assert ev["seq"] >= put["seq"]
    sid = put["id"]
    s = (await _listed(api))[sid]
    assert (s["label"], s["trigger"], s["source"], s["module"]) == (
        "Make cast", "manual", make, "workspace")
    assert s["args"] == {"count": "integer", "prefix": "text"} and s["capabilities"] == []
    r, done = await _run(api, {"script": sid, "args": {"count": 2, "prefix": "Actor "}})
    assert done["type"] == "script_completed" and done["op_count"] > 0
    await api.ok("POST", "/overlays/commit", {"id": done["overlay_id"]})
    names = sorted(x["values"][name] for x in (
        await api.ok("GET", f"/records/list?table={table}"))["records"])
    assert names == ["Actor 1", "Actor 2"]
    # the bundle names the script by id and source hash (spec 04 §7.1 step 4)
    run = (await api.ok("GET", f"/scripts/runs?run_id={r['run_id']}"))["run"]
    assert run["status"] == "completed"


async def test_edit_replaces_and_delete_removes(api: Api) -> None:
    sid = (await api.ok("POST", "/scripts/put", {"label": "One", "source": "print(1)\n"}))["id"]
    await api.ok("POST", "/scripts/put", {"id": sid, "label": "One more",
                                          "source": "print(2)\n"})
    got = (await _listed(api))[sid]
    assert (got["label"], got["source"]) == ("One more", "print(2)\n")
    await api.ok("POST", "/scripts/delete", {"id": sid})
    assert sid not in await _listed(api)
    await error_of(await api.post("/scripts/delete", {"id": sid}), 404, "not_found")
    await error_of(await api.post("/scripts/run", {"script": sid}), 404, "script_not_found")


async def test_changed_source_asks_for_capabilities_again(api: Api) -> None:
    sid = (await api.ok("POST", "/scripts/put", {
        "label": "Hello", "source": 'ui.notify("hi")\n', "capabilities": ["ui.notify"]}))["id"]
    err = await error_of(await api.post("/scripts/run", {"script": sid}), 409,
                         "capability_required")
    assert err["details"]["capabilities"] == ["ui.notify"]
    _, done = await _run(api, {"script": sid, "grants": {"ui.notify": "always"}})
    assert done["type"] == "script_completed"
    _, done = await _run(api, {"script": sid})  # remembered for this source
    assert done["type"] == "script_completed"
    await api.ok("POST", "/scripts/put", {"id": sid, "label": "Hello",
                                          "source": 'ui.notify("hello")\n',
                                          "capabilities": ["ui.notify"]})
    await error_of(await api.post("/scripts/run", {"script": sid}), 409, "capability_required")


async def test_workspace_script_cannot_write_module_tables(api: Api) -> None:
    await api.ok("POST", "/modules/adopt", {"id": "contacts"})
    sid = (await api.ok("POST", "/scripts/put", {
        "label": "Sneaky",
        "source": 'core.create_entity("contacts.People", { name = "x" })\n'}))["id"]
    _, done = await _run(api, {"script": sid})
    assert done["type"] == "script_failed"
    assert "data.write:contacts" in done["message"]


async def test_bad_documents_are_refused(api: Api) -> None:
    head = await api.head()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"label": "", "source": "print(1)"}, "label"),
        ({"label": "x" * 81, "source": "print(1)"}, "label"),
        ({"label": "A", "source": "   "}, "source"),
        ({"label": "A", "source": "x" * (256 * 1024 + 1)}, "source"),
        ({"label": "A", "source": "print(1)", "trigger": "sometimes"}, "trigger"),
        ({"label": "A", "source": "print(1)", "args": {"Bad Name": "text"}}, "args.Bad Name"),
        ({"label": "A", "source": "print(1)", "args": {"n": "enum"}}, "args.n"),
        ({"label": "A", "source": "print(1)", "capabilities": ["net.http"]}, "capabilities"),
        ({"label": "A", "source": "print(1)", "capabilities": ["ui.notify", "ui.notify"]},
         "capabilities"),
        ({"label": "A", "source": "print(1)", "limits": {"timeout_s": 999}}, "limits.timeout_s"),
        ({"label": "A", "source": "print(1)", "limits": {"cpu": 1}}, "limits.cpu"),
        ({"id": "tst.make", "label": "A", "source": "print(1)"}, "id"),
    ]
    for body, field in bad:
        err = await error_of(await api.post("/scripts/put", body), 400, "invalid")
        assert err["details"]["field"] == field, (body, err)
    err = await error_of(await api.post("/scripts/put", {
        "label": "A", "source": "print(1)", "trigger": "on_change"}), 400, "unsupported_in_v1")
    assert "on-change" in err["message"]
    assert await api.head() == head
