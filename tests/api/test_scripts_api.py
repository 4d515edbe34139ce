"""Script routes (spec 05 §5 "Scripts", spec 04 §7, J14) in-process, with a real sandbox host.

Every script here comes from a temporary module package installed with `/modules/install`
(never the built-in modules' scripts). Each route's success and each of its error codes:
`script_not_found`, `invalid_args`, `capability_required` (then resubmitted with once /
always), `capability_denied`, `run_not_found`, `run_queue_full`, `cycle_detected`; decisions
and trigger switches as stored in `<home>/scripts.json`; `fs.read` inside `<home>/exchange`.
Generic body checks run in tests/api/test_api.py through `BODIES`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from actors.events import Subscription
from actors.script_runner import QUEUE
from tests.api.conftest import Api, error_of

TOML = '''manifest_version = 1
[module]
id = "tst"
version = "1.0.0"
name = "Script tests"
capabilities = ["ui.notify", "fs.read:*.txt"]

[tables.Items]
label = "Items"
[tables.Items.fields]
name = { type = "text", required = true }
n = { type = "integer" }
flag = { type = "boolean" }

[tables.Others.fields]
name = { type = "text" }

[scripts.make]
file = "scripts/make.lua"
label = "Make items"
args = { count = "integer", prefix = "text" }

[scripts.nothing]
file = "scripts/nothing.lua"

[scripts.boom]
file = "scripts/boom.lua"

[scripts.wait]
file = "scripts/wait.lua"
args = { ms = "integer" }

[scripts.notify]
file = "scripts/notify.lua"
capabilities = ["ui.notify"]

[scripts.two]
file = "scripts/nothing.lua"
capabilities = ["ui.notify", "fs.read:*.txt"]

[scripts.read]
file = "scripts/read.lua"
args = { file = "text" }
capabilities = ["fs.read:*.txt"]

[scripts.flagger]
file = "scripts/flagger.lua"
trigger = "on_change"
watch = { table = "tst.Items", fields = ["n"] }
writes = ["tst.Items.flag"]

[scripts.noisy]
file = "scripts/notify.lua"
trigger = "on_change"
watch = { table = "tst.Others" }
writes = []
capabilities = ["ui.notify"]

[scripts.looper]
file = "scripts/flagger.lua"
trigger = "on_change"
watch = { table = "tst.Others", events = ["record_added"] }
writes = ["tst.Items.flag"]
'''
SCRIPTS = {
    "make.lua": '''for i = 1, args.count do
  core.create_entity("tst.Items", { name = args.prefix .. i, n = i })
end
print("made", args.count)
''',
    "nothing.lua": 'core.log("info", "nothing to do")\n',
    "boom.lua": '''core.create_entity("tst.Items", { name = "x" })
error("nope")
''',
    "wait.lua": '''core.create_entity("tst.Items", { name = "before" })
core.await(core.sleep(args.ms))
core.create_entity("tst.Items", { name = "after" })
''',
    "notify.lua": 'ui.notify("hello from Lua", "warn")\n',
    "read.lua": 'core.create_entity("tst.Items", { name = core.await(fs.read(args.file)) })\n',
    "flagger.lua": '''for _, c in ipairs(core.context().changes) do
  if c.table == "tst.Items" then core.set_field(c.entity_id, "tst.Items", "flag", true) end
end
''',
}
END = ("script_completed", "script_failed")


def _package(api: Api, name: str = "tst") -> Path:
    root = api.home.path.parent / "script-sources" / name
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    (root / "module.toml").write_text(TOML)
    for file, src in SCRIPTS.items():
        (root / "scripts" / file).write_text(src)
    return root


async def _install(api: Api) -> None:
    await api.ok("POST", "/modules/install", {"path": str(_package(api))})
    await api.ok("POST", "/modules/adopt", {"id": "tst"})


async def _until(sub: Subscription, run_id: str, types: tuple[str, ...] = END,
                 ) -> dict[str, Any]:
    """The next event of one of `types` about `run_id` (bounded)."""
    with trio.fail_after(20):
        while True:
            ev: dict[str, Any] = await sub.recv.receive()
            if ev.get("run_id") == run_id and ev["type"] in types:
                return ev


def _sub(api: Api) -> Subscription:
    sub, _ = api.node.hub.subscribe(None)
    return sub


async def _run(api: Api, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit a run and wait for how it ended: (answer, end event)."""
    sub = _sub(api)
    try:
        r = await api.ok("POST", "/scripts/run", body)
        return r, await _until(sub, r["run_id"])
    finally:
        sub.close()


async def _scripts(api: Api) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in (await api.ok("GET", "/scripts/list"))["scripts"]
            if s["module"] == "tst"}


async def _runs(api: Api) -> list[dict[str, Any]]:
    return list((await api.ok("GET", "/scripts/runs"))["runs"])


async def _items(api: Api) -> list[dict[str, Any]]:
    return list((await api.ok("GET", "/records/list?table=tst.Items"))["records"])


def _settings(api: Api) -> dict[str, Any]:
    path = api.home.path / "scripts.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


# --- bodies for tests/api/test_api.py's route-by-route checks ---------------------------------

async def _b_run(api: Api) -> dict[str, Any]:
    await _install(api)
    return {"script": "tst.make", "args": {"count": 2, "prefix": "r"}}


async def _b_cancel(api: Api) -> dict[str, Any]:
    await _install(api)
    r = await api.ok("POST", "/scripts/run", {"script": "tst.wait", "args": {"ms": 20_000}})
    return {"run_id": r["run_id"]}


async def _b_triggers(api: Api) -> dict[str, Any]:
    await _install(api)
    return {"script": "tst.flagger", "enabled": True}


async def _b_capabilities(api: Api) -> dict[str, Any]:
    await _install(api)
    return {"script": "tst.notify", "capability": "ui.notify", "decision": "always"}


async def _b_put(api: Api) -> dict[str, Any]:
    return {"label": "Say hi", "source": 'print("hi")\n'}


async def _b_delete(api: Api) -> dict[str, Any]:
    r = await api.ok("POST", "/scripts/put", {"label": "Gone", "source": "print(1)\n"})
    return {"id": r["id"]}


BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/scripts/run": _b_run, "/scripts/cancel": _b_cancel, "/scripts/triggers": _b_triggers,
    "/scripts/capabilities": _b_capabilities, "/scripts/put": _b_put,
    "/scripts/delete": _b_delete}
# runs stage into local overlays, decisions and trigger switches are this user's settings:
# none of the run/decision routes writes to the oplog
# (workspace script documents are the exception: they are workspace config)
NO_WRITE = frozenset(BODIES) - {"/scripts/put", "/scripts/delete"}


# --- list -----------------------------------------------------------------------------------

async def test_list_describes_each_script(api: Api) -> None:
    assert await _scripts(api) == {}  # installed nowhere yet
    await api.ok("POST", "/modules/install", {"path": str(_package(api))})
    assert await _scripts(api) == {}  # a module with tables runs once adopted
    await api.ok("POST", "/modules/adopt", {"id": "tst"})
    data = await api.ok("GET", "/scripts/list")
    assert data["queued"] == 0 and data["running"] is None
    got = await _scripts(api)
    assert set(got) == {f"tst.{n}" for n in ("make", "nothing", "boom", "wait", "notify", "two",
                                             "read", "flagger", "noisy", "looper")}
    make = got["tst.make"]
    assert (make["label"], make["trigger"], make["version"], make["name"]) == (
        "Make items", "manual", "1.0.0", "make")
    assert make["args"] == {"count": "integer", "prefix": "text"}
    assert make["capabilities"] == [] and make["capability_decisions"] == {}
    assert make["limits"] == {"timeout_s": 30.0, "memory_mib": 16,
                              "max_instructions": 200_000_000}
    assert "trigger_enabled" not in make and "watch" not in make
    assert got["tst.nothing"]["label"] == "Nothing"
    assert got["tst.two"]["capability_decisions"] == {"ui.notify": None, "fs.read:*.txt": None}
    flagger = got["tst.flagger"]
    assert (flagger["trigger"], flagger["trigger_enabled"]) == ("on_change", False)
    assert flagger["watch"] == {"table": "tst.Items", "fields": ["n"], "events": []}
    assert flagger["writes"] == ["tst.Items.flag"]


# --- run: success, runs, overlay ----------------------------------------------------------------

async def test_run_stages_an_overlay_then_commit(api: Api) -> None:
    await _install(api)
    head = await api.head()
    sub = _sub(api)
    r = await api.ok("POST", "/scripts/run",
                     {"script": "tst.make", "args": {"count": 3, "prefix": "Cue "}})
    assert r["status"] == "queued" and r["script"] == "tst.make" and r["seq"] == head
    rid = r["run_id"]
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] not in END:
        seen.append(await _until(sub, rid, ("script_queued", "script_started",
                                            "script_progress", *END)))
    types = [e["type"] for e in seen]
    assert types[:2] == ["script_queued", "script_started"] and types[-1] == "script_completed"
    assert "script_progress" in types
    assert seen[0]["trigger"] == "manual" and seen[0]["script"] == "tst.make"
    done = seen[-1]
    assert done["op_count"] > 0 and done["overlay_id"]
    # one run, completed, its log and typed args
    run = (await api.ok("GET", f"/scripts/runs?run_id={rid}"))["run"]
    assert (run["status"], run["trigger"], run["script"], run["label"]) == (
        "completed", "manual", "tst.make", "Make items")
    assert run["args"] == {"count": 3, "prefix": "Cue "}
    assert run["log"] == [{"level": "info", "msg": "made\t3"}]
    assert (run["overlay_id"], run["op_count"], run["error"]) == (
        done["overlay_id"], done["op_count"], None)
    assert [x["run_id"] for x in await _runs(api)] == [rid]
    # nothing canonical yet: the overlay is stashed, reviewed with the overlay routes
    assert await _items(api) == [] and await api.head() == head
    ov = await api.ok("GET", "/overlays/list")
    (o,) = ov["overlays"]
    assert ov["active"] is None and o["id"] == done["overlay_id"] and o["status"] == "stashed"
    assert o["changes"] == done["op_count"]
    changes = (await api.ok("GET", f"/overlays/{o['id']}/changes"))["changes"]
    assert {c["new_value"] for c in changes if c.get("field_name") == "name"} == {
        "Cue 1", "Cue 2", "Cue 3"}
    c = await api.ok("POST", "/overlays/commit", {"id": o["id"]})
    assert c["seq"] > head and c["bundle_id"]
    assert sorted(x["values"]["name"] for x in await _items(api)) == ["Cue 1", "Cue 2", "Cue 3"]
    assert (await api.ok("GET", "/overlays/list"))["overlays"] == []
    # one undo takes the whole run back
    await api.ok("POST", "/undo")
    assert await _items(api) == []


async def test_run_with_nothing_to_do_has_no_overlay(api: Api) -> None:
    await _install(api)
    r, done = await _run(api, {"script": "tst.nothing"})
    assert done["type"] == "script_completed"
    assert (done["op_count"], done["overlay_id"]) == (0, None)
    run = (await api.ok("GET", f"/scripts/runs?run_id={r['run_id']}"))["run"]
    assert (run["status"], run["overlay_id"], run["op_count"]) == ("completed", None, 0)
    assert run["log"] == [{"level": "info", "msg": "nothing to do"}]
    assert (await api.ok("GET", "/overlays/list"))["overlays"] == []


async def test_failed_run_reports_the_line_and_keeps_nothing(api: Api) -> None:
    await _install(api)
    head = await api.head()
    r, done = await _run(api, {"script": "tst.boom"})
    assert done["type"] == "script_failed"
    assert (done["code"], done["line"]) == ("ScriptError", 2) and "nope" in done["message"]
    run = (await api.ok("GET", f"/scripts/runs?run_id={r['run_id']}"))["run"]
    assert run["status"] == "failed" and run["overlay_id"] is None
    assert set(run["error"]) == {"code", "message", "line", "traceback", "error_code"}
    assert (run["error"]["code"], run["error"]["line"]) == ("ScriptError", 2)
    assert (await api.ok("GET", "/overlays/list"))["overlays"] == []
    assert await api.head() == head and await _items(api) == []


# --- run: refusals --------------------------------------------------------------------------

async def test_unknown_or_unadopted_script_is_script_not_found(api: Api) -> None:
    err = await error_of(await api.post("/scripts/run", {"script": "nope.nothing"}), 404,
                         "script_not_found")
    assert err["details"] == {"script": "nope.nothing"}
    await api.ok("POST", "/modules/install", {"path": str(_package(api))})
    # installed, not adopted: its tables do not exist here, so neither do its scripts
    for path, body in (("/scripts/run", {"script": "tst.make"}),
                       ("/scripts/triggers", {"script": "tst.flagger", "enabled": True}),
                       ("/scripts/capabilities", {"script": "tst.notify",
                                                  "capability": "ui.notify",
                                                  "decision": "always"})):
        await error_of(await api.post(path, body), 404, "script_not_found")
    await api.ok("POST", "/modules/adopt", {"id": "tst"})
    await error_of(await api.post("/scripts/run", {"script": "tst.nope"}), 404,
                   "script_not_found")
    assert await _runs(api) == []


async def test_bad_args_are_invalid_args(api: Api) -> None:
    await _install(api)
    cases = [
        ({}, "count"),  # every arg is required
        ({"count": 2}, "prefix"),
        ({"count": None, "prefix": "a"}, "count"),
        ({"count": 2, "prefix": ""}, "prefix"),
        ({"count": "two", "prefix": "a"}, "count"),  # wrong type
        ({"count": 2.5, "prefix": "a"}, "count"),
        ({"count": 2, "prefix": "a", "colour": "red"}, "colour"),  # not an argument
    ]
    for args, arg in cases:
        err = await error_of(await api.post("/scripts/run", {"script": "tst.make",
                                                             "args": args}),
                             400, "invalid_args")
        assert err["details"] == {"script": "tst.make", "arg": arg}, (args, err)
    # a script without args takes none
    err = await error_of(await api.post("/scripts/run", {"script": "tst.nothing",
                                                         "args": {"x": 1}}), 400, "invalid_args")
    assert err["details"]["arg"] == "x"
    # args that are not an object are refused by the route's body check
    for bad in ([1], "count=2", 3):
        err = await error_of(await api.post("/scripts/run", {"script": "tst.make",
                                                             "args": bad}), 400, "invalid")
        assert err["details"] == {"field": "args"}
    assert await _runs(api) == []


async def test_on_change_script_cannot_be_run_by_hand(api: Api) -> None:
    await _install(api)
    err = await error_of(await api.post("/scripts/run", {"script": "tst.flagger"}), 400,
                         "invalid")
    assert "on change" in err["message"] and err["details"] == {"script": "tst.flagger"}
    assert await _runs(api) == []


async def test_malformed_bodies_are_400_json(api: Api) -> None:
    await _install(api)
    for path in ("/scripts/run", "/scripts/cancel", "/scripts/triggers",
                 "/scripts/capabilities"):
        await error_of(await api.request("POST", path, data=b'{"script": '), 400,
                       "malformed_json")
        await error_of(await api.request("POST", path, data=b"[]"), 400, "invalid")
        await error_of(await api.post(path, {}), 400, "invalid")
    for path, body, field in (
            ("/scripts/run", {"script": 5}, "script"),
            ("/scripts/run", {"script": "tst.make", "grants": ["ui.notify"]}, "grants"),
            ("/scripts/cancel", {"run_id": 7}, "run_id"),
            ("/scripts/triggers", {"script": "tst.flagger", "enabled": "yes"}, "enabled"),
            ("/scripts/triggers", {"script": "tst.flagger"}, "enabled"),
            ("/scripts/capabilities", {"script": "tst.notify", "capability": 1}, "capability"),
            ("/scripts/capabilities", {"script": "tst.notify", "capability": "ui.notify",
                                       "decision": True}, "decision")):
        err = await error_of(await api.post(path, body), 400, "invalid")
        assert err["details"] == {"field": field}, (path, body, err)
    await error_of(await api.get("/scripts/run"), 405, "method_not_allowed")
    assert await _runs(api) == []


# --- capabilities ---------------------------------------------------------------------------

async def test_capability_required_then_allow_once(api: Api) -> None:
    await _install(api)
    err = await error_of(await api.post("/scripts/run", {"script": "tst.notify"}), 409,
                         "capability_required")
    assert err["details"] == {"capabilities": ["ui.notify"], "script": "tst.notify"}
    assert await _runs(api) == []  # refused before anything was queued
    sub = _sub(api)
    r = await api.ok("POST", "/scripts/run",
                     {"script": "tst.notify", "grants": {"ui.notify": "once"}})
    note = await _until(sub, r["run_id"], ("script_notify",))
    assert (note["message"], note["level"], note["script"]) == (
        "hello from Lua", "warn", "tst.notify")
    assert (await _until(sub, r["run_id"]))["type"] == "script_completed"
    # "Allow once" is never stored: the next run asks again
    await error_of(await api.post("/scripts/run", {"script": "tst.notify"}), 409,
                   "capability_required")
    assert (await _scripts(api))["tst.notify"]["capability_decisions"] == {"ui.notify": None}
    assert _settings(api).get("grants", {}).get("tst@1.0.0", {}) == {}


async def test_capability_required_lists_only_the_undecided(api: Api) -> None:
    await _install(api)
    err = await error_of(await api.post("/scripts/run", {"script": "tst.two"}), 409,
                         "capability_required")
    assert err["details"]["capabilities"] == ["ui.notify", "fs.read:*.txt"]
    err = await error_of(await api.post("/scripts/run", {
        "script": "tst.two", "grants": {"fs.read:*.txt": "once"}}), 409, "capability_required")
    assert err["details"]["capabilities"] == ["ui.notify"]
    _, done = await _run(api, {"script": "tst.two", "grants": {
        "fs.read:*.txt": "once", "ui.notify": "once"}})
    assert done["type"] == "script_completed"


async def test_capability_always_is_remembered_per_module_version(api: Api) -> None:
    await _install(api)
    _, done = await _run(api, {"script": "tst.notify", "grants": {"ui.notify": "always"}})
    assert done["type"] == "script_completed"
    assert _settings(api)["grants"] == {"tst@1.0.0": {"ui.notify": "always"}}
    assert (await _scripts(api))["tst.notify"]["capability_decisions"] == {
        "ui.notify": "always"}
    _, done = await _run(api, {"script": "tst.notify"})  # not asked again
    assert done["type"] == "script_completed"
    # the decision is the module's: its other script asking for it is decided too
    err = await error_of(await api.post("/scripts/run", {"script": "tst.two"}), 409,
                         "capability_required")
    assert err["details"]["capabilities"] == ["fs.read:*.txt"]


async def test_capability_never_is_capability_denied(api: Api) -> None:
    await _install(api)
    err = await error_of(await api.post("/scripts/run", {
        "script": "tst.notify", "grants": {"ui.notify": "never"}}), 403, "capability_denied")
    assert err["details"] == {"capability": "ui.notify", "script": "tst.notify"}
    assert _settings(api)["grants"] == {"tst@1.0.0": {"ui.notify": "never"}}
    # refused before start from now on, without asking
    await error_of(await api.post("/scripts/run", {"script": "tst.notify"}), 403,
                   "capability_denied")
    await error_of(await api.post("/scripts/run", {"script": "tst.two", "grants": {
        "fs.read:*.txt": "once"}}), 403, "capability_denied")
    assert await _runs(api) == []
    # a grant in the request overrides the stored Never (the user changed their mind)
    _, done = await _run(api, {"script": "tst.notify", "grants": {"ui.notify": "always"}})
    assert done["type"] == "script_completed"


async def test_capabilities_route_decides_and_forgets(api: Api) -> None:
    await _install(api)
    body = {"script": "tst.notify", "capability": "ui.notify"}
    r = await api.ok("POST", "/scripts/capabilities", {**body, "decision": "always"})
    assert (r["script"], r["capability"], r["decision"]) == ("tst.notify", "ui.notify", "always")
    assert isinstance(r["seq"], int)
    _, done = await _run(api, {"script": "tst.notify"})
    assert done["type"] == "script_completed"
    await api.ok("POST", "/scripts/capabilities", {**body, "decision": "never"})
    await error_of(await api.post("/scripts/run", {"script": "tst.notify"}), 403,
                   "capability_denied")
    assert (await _scripts(api))["tst.notify"]["capability_decisions"] == {"ui.notify": "never"}
    r = await api.ok("POST", "/scripts/capabilities", {**body, "decision": None})  # forget
    assert r["decision"] is None
    await api.ok("POST", "/scripts/capabilities", body)  # no decision = forget too
    await error_of(await api.post("/scripts/run", {"script": "tst.notify"}), 409,
                   "capability_required")
    assert _settings(api)["grants"] == {"tst@1.0.0": {}}
    # refusals
    await error_of(await api.post("/scripts/capabilities", {
        "script": "tst.nope", "capability": "ui.notify", "decision": "always"}), 404,
        "script_not_found")
    err = await error_of(await api.post("/scripts/capabilities", {
        "script": "tst.notify", "capability": "fs.read:*.txt", "decision": "always"}), 400,
        "invalid")
    assert err["details"] == {"capability": "fs.read:*.txt"}
    for bad in ("once", "sometimes"):  # "Allow once" is an answer to a run, never stored
        await error_of(await api.post("/scripts/capabilities", {**body, "decision": bad}),
                       400, "invalid")
    assert _settings(api)["grants"] == {"tst@1.0.0": {}}


async def test_bad_grants_are_invalid(api: Api) -> None:
    await _install(api)
    for grants in ({"fs.write:*.txt": "once"}, {"ui.notify": "maybe"}, {"ui.notify": True}):
        await error_of(await api.post("/scripts/run", {"script": "tst.notify",
                                                       "grants": grants}), 400, "invalid")
    assert await _runs(api) == [] and _settings(api).get("grants", {}) == {}


async def test_fs_read_is_relative_to_the_exchange_folder(api: Api) -> None:
    await _install(api)
    exchange = api.home.path / "exchange"
    exchange.mkdir()
    (exchange / "in.txt").write_text("from a file")
    (api.home.path / "secret.txt").write_text("not yours")
    grants = {"fs.read:*.txt": "once"}
    _, done = await _run(api, {"script": "tst.read", "args": {"file": "in.txt"},
                               "grants": grants})
    assert done["type"] == "script_completed", done
    changes = (await api.ok("GET", f"/overlays/{done['overlay_id']}/changes"))["changes"]
    assert "from a file" in {c["new_value"] for c in changes}
    # outside the exchange folder or the granted pattern, or no such file: an error in the run
    for path, code in (("../secret.txt", "CapabilityDenied"), ("sub/in.txt", "CapabilityDenied"),
                       ("missing.txt", "IOError")):
        _, done = await _run(api, {"script": "tst.read", "args": {"file": path},
                                   "grants": grants})
        assert done["type"] == "script_failed", (path, done)
        assert (done["code"], done["line"]) == ("ScriptError", 1), (path, done)
        assert done["message"].startswith(code), (path, done)


# --- cancel, runs -------------------------------------------------------------------------

async def test_unknown_run_is_run_not_found(api: Api) -> None:
    await _install(api)
    err = await error_of(await api.post("/scripts/cancel", {"run_id": "f" * 32}), 404,
                         "run_not_found")
    assert err["details"] == {"run_id": "f" * 32}
    err = await error_of(await api.get("/scripts/runs?run_id=nope"), 404, "run_not_found")
    assert err["details"] == {"run_id": "nope"}
    assert (await api.ok("GET", "/scripts/runs"))["runs"] == []


async def test_cancel_a_running_and_a_queued_run(api: Api) -> None:
    await _install(api)
    sub = _sub(api)
    a = await api.ok("POST", "/scripts/run", {"script": "tst.wait", "args": {"ms": 60_000}})
    await _until(sub, a["run_id"], ("script_started",))
    b = await api.ok("POST", "/scripts/run", {"script": "tst.nothing"})
    listed = await api.ok("GET", "/scripts/list")
    assert (listed["queued"], listed["running"]) == (1, a["run_id"])
    # the queued one: it will never start
    r = await api.ok("POST", "/scripts/cancel", {"run_id": b["run_id"]})
    assert (r["run_id"], r["status"], r["cancel_requested"]) == (b["run_id"], "queued", True)
    assert isinstance(r["seq"], int)
    # the running one: its pending await answers Cancelled
    r = await api.ok("POST", "/scripts/cancel", {"run_id": a["run_id"]})
    assert (r["status"], r["cancel_requested"]) == ("running", True)
    ev = await _until(sub, a["run_id"])
    assert (ev["type"], ev["code"]) == ("script_failed", "Cancelled")
    ev = await _until(sub, b["run_id"])
    assert (ev["type"], ev["code"]) == ("script_failed", "Cancelled")
    runs = {x["run_id"]: x for x in await _runs(api)}
    assert [runs[x["run_id"]]["status"] for x in (a, b)] == ["failed", "failed"]
    assert runs[b["run_id"]]["log"] == []  # never started
    assert runs[a["run_id"]]["overlay_id"] is None
    assert (await api.ok("GET", "/overlays/list"))["overlays"] == []  # discarded
    assert await _items(api) == []
    # cancelling a finished run changes nothing
    r = await api.ok("POST", "/scripts/cancel", {"run_id": a["run_id"]})
    assert r["status"] == "failed"
    # and the runner goes on serving
    _, done = await _run(api, {"script": "tst.make", "args": {"count": 1, "prefix": "z"}})
    assert done["type"] == "script_completed"


async def test_a_full_queue_is_run_queue_full(api: Api) -> None:
    await _install(api)
    sub = _sub(api)
    first = await api.ok("POST", "/scripts/run", {"script": "tst.wait", "args": {"ms": 60_000}})
    await _until(sub, first["run_id"], ("script_started",))
    for _ in range(QUEUE):
        await api.ok("POST", "/scripts/run", {"script": "tst.nothing"})
    err = await error_of(await api.post("/scripts/run", {"script": "tst.nothing"}), 503,
                         "run_queue_full")
    assert str(QUEUE) in err["message"]
    assert (await api.ok("GET", "/scripts/list"))["queued"] == QUEUE


# --- on-change triggers -----------------------------------------------------------------------

async def test_trigger_on_fires_on_direct_edits_and_off_stops(api: Api) -> None:
    await _install(api)
    sub = _sub(api)
    rec = await api.record("tst.Items", name="a", n=1)
    assert await _runs(api) == []  # off by default
    r = await api.ok("POST", "/scripts/triggers", {"script": "tst.flagger", "enabled": True})
    assert (r["script"], r["enabled"]) == ("tst.flagger", True) and isinstance(r["seq"], int)
    with trio.fail_after(5):
        while (await sub.recv.receive())["type"] != "scripts_changed":
            pass
    assert (await _scripts(api))["tst.flagger"]["trigger_enabled"] is True
    assert _settings(api)["triggers"] == {api.ws_id: ["tst.flagger"]}
    # a watched field changes: one on-change run, its overlay to review
    await api.ok("POST", "/records/update", {"id": rec, "values": {"n": 2}})
    (run,) = await _runs(api)
    assert (run["script"], run["trigger"]) == ("tst.flagger", "on_change")
    done = await _until(sub, run["run_id"])
    assert done["type"] == "script_completed" and done["op_count"] == 1
    await api.ok("POST", "/overlays/commit", {"id": done["overlay_id"]})
    assert (await _items(api))[0]["values"]["flag"] is True
    # a field it does not watch fires nothing (nor did committing its own overlay)
    await api.ok("POST", "/records/update", {"id": rec, "values": {"name": "b"}})
    assert len(await _runs(api)) == 1
    # off: the same edit fires nothing any more
    await api.ok("POST", "/scripts/triggers", {"script": "tst.flagger", "enabled": False})
    assert (await _scripts(api))["tst.flagger"]["trigger_enabled"] is False
    assert _settings(api)["triggers"] == {api.ws_id: []}
    await api.ok("POST", "/records/update", {"id": rec, "values": {"n": 3}})
    assert len(await _runs(api)) == 1


async def test_triggers_refuse_manual_and_unknown_scripts(api: Api) -> None:
    await _install(api)
    err = await error_of(await api.post("/scripts/triggers", {"script": "tst.make",
                                                              "enabled": True}), 400, "invalid")
    assert err["details"] == {"script": "tst.make"}
    await error_of(await api.post("/scripts/triggers", {"script": "tst.gone", "enabled": True}),
                   404, "script_not_found")
    assert _settings(api).get("triggers", {}) == {}


async def test_trigger_needs_its_capabilities_decided(api: Api) -> None:
    await _install(api)
    body = {"script": "tst.noisy", "enabled": True}
    err = await error_of(await api.post("/scripts/triggers", body), 409, "capability_required")
    assert err["details"]["capabilities"] == ["ui.notify"]
    assert (await _scripts(api))["tst.noisy"]["trigger_enabled"] is False
    await api.ok("POST", "/scripts/capabilities", {"script": "tst.noisy",
                                                   "capability": "ui.notify",
                                                   "decision": "always"})
    await api.ok("POST", "/scripts/triggers", body)
    assert (await _scripts(api))["tst.noisy"]["trigger_enabled"] is True


async def test_trigger_closing_a_cycle_with_a_rule_is_refused(api: Api) -> None:
    """A rule adds flagged Items to Others; `looper` flags Items when Others gain a record."""
    await _install(api)
    await api.ok("POST", "/rules/put", {
        "label": "Flagged items to others", "source": "tst.Items", "target": "tst.Others",
        "when": {"field": "flag", "op": "eq", "value": True}, "auto_accept": True,
        "enabled": True})
    err = await error_of(await api.post("/scripts/triggers", {"script": "tst.looper",
                                                              "enabled": True}), 409,
                         "cycle_detected")
    assert "script:tst.looper" in err["details"]["path"]
    assert (await _scripts(api))["tst.looper"]["trigger_enabled"] is False
    assert _settings(api).get("triggers", {}).get(api.ws_id, []) == []
    # the other on-change script closes no loop
    await api.ok("POST", "/scripts/triggers", {"script": "tst.flagger", "enabled": True})
