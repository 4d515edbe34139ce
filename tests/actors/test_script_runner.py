"""The ScriptRunner on a real in-process Node (spec 04 §7, scenarios §8.17-20 and a few hostile
ones of §8.21-23): manual and on-change runs through the API, their overlays and bundles,
capability decisions, await/cancel/time limits against the real host process, write scope,
rules inside a script's overlay, the fs and ui capabilities, and the FIFO queue.

The host is a real subprocess, so these tests use the real clock; every wait is an awaited event
from the node's hub, bounded by `trio.fail_after`. The test module is a temp folder installed with
`POST /modules/install` and adopted.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.events import Subscription
from openprod.core import ids
from openprod.core import ops as O
from openprod.core.ops import open_bundle
from openprod.core.values import from_user
from openprod.scripts import triggers as trigmod
from tests.actors.script_helpers import END, events, install_module, next_event, runner
from tests.api import conftest as api_conftest
from tests.api.conftest import Api, error_of

api = api_conftest.api  # the in-process API fixture `sc` builds on

TOML = '''manifest_version = 1
[module]
id = "sc"
version = "1.0.0"
name = "Script checks"
capabilities = ["ui.notify", "fs.read:imports/*.csv", "data.write:contacts"]

[tables.Calls.fields]
label = { type = "text", required = true }
flag = { type = "boolean" }
status = { type = "text" }
n = { type = "integer" }
note = { type = "text" }

[scripts.gen]
file = "scripts/gen.lua"
args = { count = "integer" }

[scripts.boom]
file = "scripts/boom.lua"

[scripts.safe]
file = "scripts/safe.lua"

[scripts.flagged]
file = "scripts/flagged.lua"
trigger = "on_change"
watch = { table = "sc.Calls", fields = ["flag"] }
writes = ["sc.Calls.status"]
capabilities = ["ui.notify"]

[scripts.chained]
file = "scripts/chained.lua"
trigger = "on_change"
watch = { table = "sc.Calls", fields = ["status"] }
writes = ["sc.Calls.n"]

[scripts.sneaky]
file = "scripts/sneaky.lua"
trigger = "on_change"
watch = { table = "sc.Calls", fields = ["note"] }
writes = ["sc.Calls.status"]

[scripts.nap]
file = "scripts/nap.lua"
args = { ms = "integer" }
limits = { timeout_s = 1 }

[scripts.hold]
file = "scripts/hold.lua"
limits = { timeout_s = 10 }
capabilities = ["ui.notify"]

[scripts.busy_nap]
file = "scripts/busy_nap.lua"
limits = { timeout_s = 10 }

[scripts.noargs]
file = "scripts/noargs.lua"

[scripts.bomb]
file = "scripts/bomb.lua"
limits = { timeout_s = 1 }

[scripts.spin]
file = "scripts/spin.lua"
limits = { max_instructions = 100000 }

[scripts.hog]
file = "scripts/hog.lua"

[scripts.escape]
file = "scripts/escape.lua"

[scripts.notify]
file = "scripts/notify.lua"
capabilities = ["ui.notify"]

[scripts.people]
file = "scripts/people.lua"

[scripts.people_ok]
file = "scripts/people.lua"
capabilities = ["data.write:contacts"]

[scripts.fsread]
file = "scripts/fsread.lua"
args = { path = "text" }
capabilities = ["fs.read:imports/*.csv"]

[scripts.nofs]
file = "scripts/nofs.lua"

[scripts.mkflag]
file = "scripts/mkflag.lua"
'''

MISSING = "0190a000-0000-7000-8000-000000000000"
SCRIPTS = {
    "gen": '''for i = 1, args.count do
  core.create_entity("sc.Calls", { label = "call " .. i, n = i })
end
print("made", args.count)
''',
    "boom": '''for i = 1, 10 do
  core.create_entity("sc.Calls", { label = "c" .. i })
end
error("ten is enough")
''',
    "safe": f'''local ok, err = pcall(core.get_field, "{MISSING}", "sc.Calls", "label")
assert(not ok and err.code == "NotFound", tostring(err))
core.log("info", "caught " .. err.code)
''',
    "flagged": '''local ctx = core.context()
core.log("info", "changes " .. #ctx.changes)
for _, c in ipairs(ctx.changes) do
  core.set_field(c.entity_id, "sc.Calls", "status", c.new and "flagged" or "clear")
end
ui.notify(#ctx.changes .. " calls changed")
''',
    "chained": '''for _, c in ipairs(core.context().changes) do
  core.set_field(c.entity_id, "sc.Calls", "n", 2)
end
''',
    "sneaky": '''for _, c in ipairs(core.context().changes) do
  core.set_field(c.entity_id, "sc.Calls", "n", 99)
end
''',
    "nap": "core.await(core.sleep(args.ms))\n",
    "hold": '''core.create_entity("sc.Calls", { label = "before the nap" })
core.await(core.sleep(60000))
''',
    "busy_nap": "for i = 1, 3e7 do end\ncore.await(core.sleep(60000))\n",
    "noargs": "local x = core.get_field()\n",
    "bomb": 'local x = ("a"):rep(150):find(".-.-.-.-b")\n',
    "spin": "while true do end\n",
    "hog": 'local s = "x"\nwhile true do s = s .. s end\n',
    "escape": 'os.execute("true")\n',
    "notify": 'ui.notify("hello from a script", "warn")\n',
    "people": 'core.create_entity("contacts.People", { full_name = "Zed" })\n',
    "fsread": 'core.log("info", core.await(fs.read(args.path)))\n',
    "nofs": 'core.log("info", core.await(fs.read("imports/x.csv")))\n',
    "mkflag": 'core.create_entity("sc.Calls", { label = "flagged one", flag = true })\n',
}

@pytest.fixture
async def sc(api: Api, tmp_path: Path) -> AsyncIterator[Api]:
    """The api fixture with module `sc` installed and adopted (contacts adopted too)."""
    await install_module(api, tmp_path, "sc", TOML, SCRIPTS)
    await api.ok("POST", "/modules/adopt", {"id": "contacts"})
    yield api


async def run(a: Api, sub: Subscription, script: str, timeout: float = 10,
              **body: Any) -> dict[str, Any]:
    """Start a manual run and return its end event."""
    r = await a.ok("POST", "/scripts/run", {"script": script, **body})
    assert r["status"] == "queued"
    return await next_event(sub, r["run_id"], timeout=timeout)


async def run_json(a: Api, run_id: str) -> dict[str, Any]:
    got: dict[str, Any] = (await a.ok("GET", f"/scripts/runs?run_id={run_id}"))["run"]
    return got


async def overlays(a: Api) -> list[dict[str, Any]]:
    return list((await a.ok("GET", "/overlays/list"))["overlays"])


async def records(a: Api, table: str = "sc.Calls") -> list[dict[str, Any]]:
    return list((await a.ok("GET", f"/records/list?table={table}"))["records"])


async def bundles(a: Api) -> list[Any]:
    def read(ws: Any) -> list[Any]:
        return [open_bundle(r, ws.ws, verify_sig=False) for r in ws.storage.bundles_since({})]
    return list(await a.node.current.writer.call(read))


async def publish_calls(a: Api, n: int) -> list[str]:
    """n canonical sc.Calls records in one import (imports fire no triggers)."""
    rows = [{"label": f"call {i}", "flag": False} for i in range(n)]
    res = await a.node.current.writer.call(lambda ws: ws.create_records("sc.Calls", rows))
    return [ids.to_text(e) for e in res.created]


async def enable(a: Api, script: str, always: tuple[str, ...] = ()) -> None:
    """Decide the script's capabilities (always), then switch its trigger on."""
    for cap in always:
        await a.ok("POST", "/scripts/capabilities", {"script": script, "capability": cap,
                                                     "decision": "always"})
    await a.ok("POST", "/scripts/triggers", {"script": script, "enabled": True})


async def assert_failed_cleanly(a: Api, ev: dict[str, Any], code: str,
                                message_prefix: str = "") -> None:
    """A failed run: the code, no overlay left, no op written, the engine still answering."""
    assert ev["type"] == "script_failed", ev
    assert ev["code"] == code, ev
    assert ev["message"].startswith(message_prefix), ev
    run_ = await run_json(a, ev["run_id"])
    assert run_["status"] == "failed" and run_["overlay_id"] is None
    assert await overlays(a) == []
    assert await records(a) == []


# --- 17, 18: manual runs, their overlay and bundle ------------------------------------------------

async def test_manual_run_stages_then_commits_one_script_bundle(sc: Api) -> None:
    sub = events(sc)
    head = sc.node.current.writer.appended
    ev = await run(sc, sub, "sc.gen", args={"count": 7})
    assert ev["type"] == "script_completed", ev
    assert ev["op_count"] > 0 and ev["overlay_id"]
    run_ = await run_json(sc, ev["run_id"])
    assert (run_["status"], run_["op_count"], run_["overlay_id"]) == (
        "completed", ev["op_count"], ev["overlay_id"])
    assert run_["log"] == [{"level": "info", "msg": "made\t7"}]  # print -> core.log
    # pending overlay, stashed (the user's active overlay is untouched); canonical unchanged
    [ov] = await overlays(sc)
    assert ov["id"] == ev["overlay_id"] and ov["status"] == "stashed"
    assert sc.node.current.writer.appended == head
    assert await records(sc) == []
    r = await sc.ok("POST", "/overlays/commit", {"id": ev["overlay_id"]})
    assert sorted(x["values"]["n"] for x in await records(sc)) == list(range(1, 8))
    new = [b for b in await bundles(sc) if b.kind == "script"]
    assert len(new) == 1 and ids.to_text(new[0].bundle_id) == r["bundle_id"]
    assert new[0].meta["script"] == {"source": "module", "id": "sc.gen", "version": "1.0.0",
                                     "run_id": ev["run_id"], "trigger": "manual"}
    assert await overlays(sc) == []


async def test_error_after_ten_creates_leaves_nothing_and_pcall_catches_not_found(
        sc: Api) -> None:
    sub = events(sc)
    head = sc.node.current.writer.appended
    ev = await run(sc, sub, "sc.boom")
    await assert_failed_cleanly(sc, ev, "ScriptError")
    assert ev["line"] == 4 and "ten is enough" in ev["message"]
    assert sc.node.current.writer.appended == head
    ev = await run(sc, sub, "sc.safe")
    assert ev["type"] == "script_completed" and ev["op_count"] == 0, ev
    assert ev["overlay_id"] is None
    assert (await run_json(sc, ev["run_id"]))["log"] == [{"level": "info",
                                                          "msg": "caught NotFound"}]
    assert await overlays(sc) == []


# --- 19: on-change triggers -----------------------------------------------------------------------

async def test_one_bundle_of_fifty_edits_fires_one_run_then_depth_two(sc: Api) -> None:
    sub = events(sc)
    calls = await publish_calls(sc, 50)
    # capabilities are decided before a trigger may be switched on
    err = await error_of(await sc.post("/scripts/triggers", {"script": "sc.flagged",
                                                             "enabled": True}),
                         409, "capability_required")
    assert err["details"]["capabilities"] == ["ui.notify"]
    await enable(sc, "sc.flagged", ("ui.notify",))
    await enable(sc, "sc.chained")
    listed = {s["id"]: s for s in (await sc.ok("GET", "/scripts/list"))["scripts"]}
    assert listed["sc.flagged"]["trigger_enabled"] is True
    assert listed["sc.sneaky"]["trigger_enabled"] is False
    await sc.ok("POST", "/records/update", {"updates": [
        {"id": e, "table": "sc.Calls", "values": {"flag": True}} for e in calls]})
    q = await next_event(sub, types=("script_queued",))
    assert (q["script"], q["trigger"]) == ("sc.flagged", "on_change")
    note = await next_event(sub, q["run_id"], ("script_notify",))
    assert note["message"] == "50 calls changed"
    ev = await next_event(sub, q["run_id"])
    assert ev["type"] == "script_completed", ev
    r = runner(sc).runs[q["run_id"]]
    assert (r.depth, len(r.changes), r.log) == (1, 50, [{"level": "info",
                                                         "msg": "changes 50"}])
    assert {c["event"] for c in r.changes} == {"field_changed"}
    assert {(c["field"], c["old"], c["new"]) for c in r.changes} == {("flag", False, True)}
    assert sorted(c["entity_id"] for c in r.changes) == sorted(calls)
    assert [x.run_id for x in runner(sc).runs.values()] == [q["run_id"]]  # exactly one run
    # committing the on-change run's overlay fires the next trigger, one level deeper
    await sc.ok("POST", "/overlays/commit", {"id": ev["overlay_id"]})
    q2 = await next_event(sub, types=("script_queued",))
    assert q2["script"] == "sc.chained"
    ev2 = await next_event(sub, q2["run_id"])
    assert ev2["type"] == "script_completed", ev2
    r2 = runner(sc).runs[q2["run_id"]]
    assert (r2.depth, len(r2.changes)) == (2, 50)
    [b] = [b for b in await bundles(sc) if b.kind == "script"]
    assert b.meta["script"]["trigger"] == "on_change"
    assert b.meta["script"]["run_id"] == q["run_id"]


async def test_staged_edits_fire_nothing_and_depth_guard(sc: Api) -> None:
    [call] = await publish_calls(sc, 1)
    await enable(sc, "sc.flagged", ("ui.notify",))
    # a staged (overlay) edit fires nothing; neither does the run of a manual script
    oid = (await sc.ok("POST", "/overlays/create", {"name": "draft"}))["overlay_id"]
    await sc.ok("POST", "/records/update", {"id": call, "table": "sc.Calls",
                                            "values": {"flag": True}})
    assert runner(sc).runs == {}
    await sc.ok("POST", "/overlays/discard", {"id": oid})
    assert runner(sc).runs == {}
    # nor does what a script run stages (mkflag adds a flagged call in its overlay)
    sub = events(sc)
    ev = await run(sc, sub, "sc.mkflag")
    assert ev["type"] == "script_completed", ev
    assert [r.info.id for r in runner(sc).runs.values()] == ["sc.mkflag"]
    await sc.ok("POST", "/overlays/discard", {"id": ev["overlay_id"]})
    # nothing fires past depth 1000: the runner refuses a deeper fired entry
    ch = [{"event": "field_changed", "entity_id": call, "table": "sc.Calls", "field": "flag",
           "old": False, "new": True}]
    runner(sc)._on_fired([("sc.flagged", ch, trigmod.MAX_DEPTH + 1, b"\0" * 16)])
    assert len(runner(sc).runs) == 1
    # ... and the workspace matches nothing past it either
    def deep(ws: Any) -> Any:
        p = O.SetField(ids.from_text(call), "sc.Calls", "flag", from_user("boolean", True))
        return ws._match_triggers([p], trigmod.MAX_DEPTH + 1), ws._match_triggers([p], 1)
    too_deep, ok = await sc.node.current.writer.call(deep)
    assert too_deep == {} and list(ok) == ["sc.flagged"]
    # the deepest allowed depth still runs
    runner(sc)._on_fired([("sc.flagged", ch, trigmod.MAX_DEPTH, b"\0" * 16)])
    r = list(runner(sc).runs.values())[-1]
    assert (r.info.id, r.depth) == ("sc.flagged", trigmod.MAX_DEPTH)
    ev = await next_event(sub, r.run_id)
    assert ev["type"] == "script_completed", ev
    # a capability refused after the trigger was switched on: its commits fire nothing
    await sc.ok("POST", "/scripts/capabilities", {"script": "sc.flagged",
                                                  "capability": "ui.notify",
                                                  "decision": "never"})
    n = len(runner(sc).runs)
    await sc.ok("POST", "/records/update", {"id": call, "table": "sc.Calls",
                                            "values": {"flag": True}})
    assert len(runner(sc).runs) == n


async def test_undeclared_write_fails_the_on_change_run(sc: Api) -> None:
    [call] = await publish_calls(sc, 1)
    await enable(sc, "sc.sneaky")
    sub = events(sc)
    await sc.ok("POST", "/records/update", {"id": call, "table": "sc.Calls",
                                            "values": {"note": "hi"}})
    ev = await next_event(sub)
    assert ev["type"] == "script_failed", ev
    assert ev["message"].startswith("UndeclaredWrite"), ev
    assert ev["line"] == 2
    assert await overlays(sc) == []
    assert [x["values"].get("n") for x in await records(sc)] == [None]


# --- 20: capabilities, await, cancel, time limits -------------------------------------------------

async def test_capability_decisions(sc: Api) -> None:
    sub = events(sc)
    err = await error_of(await sc.post("/scripts/run", {"script": "sc.notify"}), 409,
                         "capability_required")
    assert err["details"]["capabilities"] == ["ui.notify"]
    assert runner(sc).runs == {}
    ev = await run(sc, sub, "sc.notify", grants={"ui.notify": "once"})
    assert ev["type"] == "script_completed", ev
    await error_of(await sc.post("/scripts/run", {"script": "sc.notify"}), 409,
                   "capability_required")  # "once" is not remembered
    ev = await run(sc, sub, "sc.notify", grants={"ui.notify": "always"})
    assert ev["type"] == "script_completed", ev
    ev = await run(sc, sub, "sc.notify")  # remembered
    assert ev["type"] == "script_completed", ev
    listed = {s["id"]: s for s in (await sc.ok("GET", "/scripts/list"))["scripts"]}
    assert listed["sc.notify"]["capability_decisions"] == {"ui.notify": "always"}
    n = len(runner(sc).runs)
    await sc.ok("POST", "/scripts/capabilities", {"script": "sc.notify",
                                                  "capability": "ui.notify",
                                                  "decision": "never"})
    err = await error_of(await sc.post("/scripts/run", {"script": "sc.notify"}), 403,
                         "capability_denied")
    assert err["details"]["capability"] == "ui.notify"
    assert len(runner(sc).runs) == n  # refused before start: no run
    # a decision is once, always or never
    await error_of(await sc.post("/scripts/run", {
        "script": "sc.notify", "grants": {"ui.notify": "maybe"}}), 400, "invalid")
    assert len(runner(sc).runs) == n


async def test_await_sleep_cancel_and_time_limit_keep_the_host(sc: Api) -> None:
    sub = events(sc)
    ev = await run(sc, sub, "sc.nap", args={"ms": 100})
    assert ev["type"] == "script_completed", ev
    pid = runner(sc).host.proc.pid  # type: ignore[union-attr]
    # cancel during a long sleep: Cancelled at once, the overlay gone, the same host
    r = await sc.ok("POST", "/scripts/run", {"script": "sc.hold",
                                             "grants": {"ui.notify": "once"}})
    await next_event(sub, r["run_id"], ("script_progress",))
    t0 = trio.current_time()
    c = await sc.ok("POST", "/scripts/cancel", {"run_id": r["run_id"]})
    assert c["cancel_requested"] is True
    ev = await next_event(sub, r["run_id"])
    assert ev["type"] == "script_failed" and ev["code"] == "Cancelled", ev
    assert trio.current_time() - t0 < 1.5
    assert await overlays(sc) == [] and await records(sc) == []
    # a 60 s sleep with timeout_s = 1: TimeLimit after about a second, host kept
    t0 = trio.current_time()
    ev = await run(sc, sub, "sc.nap", args={"ms": 60000})
    assert ev["type"] == "script_failed" and ev["code"] == "TimeLimit", ev
    assert 0.9 <= trio.current_time() - t0 < 4
    ev = await run(sc, sub, "sc.nap", args={"ms": 0})
    assert ev["type"] == "script_completed", ev
    assert runner(sc).host.proc.pid == pid  # type: ignore[union-attr]
    # cancelling a finished run changes nothing; an unknown one is 404
    c = await sc.ok("POST", "/scripts/cancel", {"run_id": r["run_id"]})
    assert c["status"] == "failed"
    await error_of(await sc.post("/scripts/cancel", {"run_id": "nope"}), 404, "run_not_found")


async def test_cancel_before_the_await_starts_answers_cancelled(sc: Api) -> None:
    """A cancel that lands while the run is still computing (before its await) is answered
    by the await at once, not by killing the host 2 s later."""
    sub = events(sc)
    ev = await run(sc, sub, "sc.nap", args={"ms": 0})
    pid = runner(sc).host.proc.pid  # type: ignore[union-attr]
    r = await sc.ok("POST", "/scripts/run", {"script": "sc.busy_nap"})
    await next_event(sub, r["run_id"], ("script_started",))
    await sc.ok("POST", "/scripts/cancel", {"run_id": r["run_id"]})
    run_ = runner(sc).runs[r["run_id"]]
    assert run_.await_scope is None  # still looping: the host has not asked for the sleep
    ev = await next_event(sub, r["run_id"])
    assert ev["type"] == "script_failed" and ev["code"] == "Cancelled", ev
    assert runner(sc).host.proc.pid == pid  # type: ignore[union-attr]


async def test_revoking_a_capability_cancels_the_runs_holding_it(sc: Api) -> None:
    sub = events(sc)
    r = await sc.ok("POST", "/scripts/run", {"script": "sc.hold",
                                             "grants": {"ui.notify": "always"}})
    await next_event(sub, r["run_id"], ("script_progress",))
    await sc.ok("POST", "/scripts/capabilities", {"script": "sc.hold",
                                                  "capability": "ui.notify",
                                                  "decision": "never"})
    ev = await next_event(sub, r["run_id"], timeout=1.5)
    assert ev["type"] == "script_failed" and ev["code"] == "Cancelled", ev
    assert await overlays(sc) == []


async def test_a_run_interrupted_by_a_restart_leaves_no_overlay(sc: Api) -> None:
    sub = events(sc)
    done = await run(sc, sub, "sc.gen", args={"count": 1})  # a finished run's overlay stays
    r = await sc.ok("POST", "/scripts/run", {"script": "sc.hold",
                                             "grants": {"ui.notify": "once"}})
    await next_event(sub, r["run_id"], ("script_progress",))
    assert len(await overlays(sc)) == 2
    await sc.node.open_workspace(sc.ws_id)  # the session stops mid-run and opens again
    with trio.fail_after(10):
        await runner(sc).ready.wait()
    assert [o["id"] for o in await overlays(sc)] == [done["overlay_id"]]
    await sc.ok("POST", "/overlays/commit", {"id": done["overlay_id"]})
    assert [x["values"]["label"] for x in await records(sc)] == ["call 1"]


async def test_pattern_bomb_kills_the_host_and_the_next_run_gets_a_new_one(sc: Api) -> None:
    sub = events(sc)
    ev = await run(sc, sub, "sc.nap", args={"ms": 0})
    pid = runner(sc).host.proc.pid  # type: ignore[union-attr]
    t0 = trio.current_time()
    ev = await run(sc, sub, "sc.bomb")
    took = trio.current_time() - t0
    await assert_failed_cleanly(sc, ev, "TimeLimit")
    assert 2.5 <= took < 8, took  # deadline (1 s) + grace (2 s), then the kill
    ev = await run(sc, sub, "sc.nap", args={"ms": 0})
    assert ev["type"] == "script_completed", ev
    assert runner(sc).host.proc.pid != pid  # type: ignore[union-attr]


# --- hostile scripts through the runner ---------------------------------------------------------

@pytest.mark.parametrize(("script", "code", "prefix"), [
    ("sc.spin", "InstructionLimit", ""),
    ("sc.hog", "MemoryLimit", ""),
    ("sc.escape", "ScriptError", ""),
    ("sc.noargs", "ScriptError", "BadArgument"),  # Lua dropped the nils: no engine crash
])
async def test_hostile_scripts_end_cleanly(sc: Api, script: str, code: str,
                                           prefix: str) -> None:
    sub = events(sc)
    ev = await run(sc, sub, script)
    await assert_failed_cleanly(sc, ev, code, prefix)
    if code == "ScriptError":
        assert ev["line"] == 1, ev
    assert (await sc.ok("GET", "/workspace/current"))["id"] == sc.ws_id  # still answering
    ev = await run(sc, sub, "sc.gen", args={"count": 1})
    assert ev["type"] == "script_completed", ev


async def test_an_engine_bug_fails_the_run_not_the_engine(
        sc: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from openprod.scripts.session import RunSession

    def broken(self: RunSession, name: str, args: Any) -> Any:
        raise RuntimeError("a bug in the engine side")
    monkeypatch.setattr(RunSession, "call", broken)
    sub = events(sc)
    ev = await run(sc, sub, "sc.gen", args={"count": 1})
    assert ev["type"] == "script_failed" and ev["code"] == "HostCrashed", ev
    assert "a bug in the engine side" in ev["message"]
    assert await overlays(sc) == []
    monkeypatch.undo()
    ev = await run(sc, sub, "sc.gen", args={"count": 1})  # the runner still serves runs
    assert ev["type"] == "script_completed", ev


# --- write scope, rules, fs, ui ----------------------------------------------------------------

async def test_write_scope_needs_data_write(sc: Api) -> None:
    sub = events(sc)
    ev = await run(sc, sub, "sc.people")
    assert ev["type"] == "script_failed", ev
    assert ev["message"].startswith("CapabilityDenied"), ev
    assert await overlays(sc) == []
    await error_of(await sc.post("/scripts/run", {"script": "sc.people_ok"}), 409,
                   "capability_required")
    ev = await run(sc, sub, "sc.people_ok", grants={"data.write:contacts": "once"})
    assert ev["type"] == "script_completed" and ev["op_count"] > 0, ev
    await sc.ok("POST", "/overlays/commit", {"id": ev["overlay_id"]})
    assert [r["values"]["full_name"] for r in await records(sc, "contacts.People")] == ["Zed"]


async def test_rules_fire_inside_the_script_overlay(sc: Api) -> None:
    sub = events(sc)
    await sc.ok("POST", "/rules/put", {
        "label": "Flagged calls are people", "source": "sc.Calls", "target": "contacts.People",
        "when": {"field": "flag", "op": "eq", "value": True}, "auto_accept": True,
        "set": [{"field": "full_name", "copy_from": "label"}], "enabled": True})
    ev = await run(sc, sub, "sc.mkflag")  # no data.write:contacts: rule output is not bound
    assert ev["type"] == "script_completed", ev
    changes = (await sc.ok("GET", f"/overlays/{ev['overlay_id']}/changes"))["changes"]
    assert len(changes) == ev["op_count"]
    assert any(c.get("table") == "contacts.People" for c in changes), changes
    assert await records(sc, "contacts.People") == []  # canonical untouched
    await sc.ok("POST", "/overlays/commit", {"id": ev["overlay_id"]})
    [p] = await records(sc, "contacts.People")
    assert p["values"]["full_name"] == "flagged one"


async def test_fs_read_and_ui_notify(sc: Api) -> None:
    sub = events(sc)
    exchange = sc.home.path / "exchange"
    (exchange / "imports").mkdir(parents=True)
    (exchange / "imports" / "x.csv").write_text("a,b\n1,2\n")
    (sc.home.path / "secret.csv").write_text("top secret")
    os.symlink(sc.home.path / "secret.csv", exchange / "imports" / "leak.csv")
    grant = {"fs.read:imports/*.csv": "once"}
    ev = await run(sc, sub, "sc.fsread", args={"path": "imports/x.csv"}, grants=grant)
    assert ev["type"] == "script_completed", ev
    assert (await run_json(sc, ev["run_id"]))["log"] == [{"level": "info", "msg": "a,b\n1,2\n"}]
    for path, prefix in (("../x", "CapabilityDenied"), ("imports/../../secret.csv",
                                                       "CapabilityDenied"),
                         ("other/x.csv", "CapabilityDenied"),
                         ("imports/leak.csv", "BadArgument")):
        ev = await run(sc, sub, "sc.fsread", args={"path": path}, grants=grant)
        assert ev["type"] == "script_failed", (path, ev)
        assert ev["message"].startswith(prefix), (path, ev)
    # fs without the capability: there is no fs table at all
    ev = await run(sc, sub, "sc.nofs")
    assert ev["type"] == "script_failed" and ev["code"] == "ScriptError", ev
    # ui.notify publishes script_notify
    r = await sc.ok("POST", "/scripts/run", {"script": "sc.notify",
                                             "grants": {"ui.notify": "once"}})
    note = await next_event(sub, r["run_id"], ("script_notify",))
    assert (note["message"], note["level"], note["script"]) == ("hello from a script", "warn",
                                                                "sc.notify")


async def test_runs_are_serialized_fifo(sc: Api) -> None:
    sub = events(sc)
    first = await sc.ok("POST", "/scripts/run", {"script": "sc.nap", "args": {"ms": 200}})
    second = await sc.ok("POST", "/scripts/run", {"script": "sc.gen", "args": {"count": 2}})
    third = await sc.ok("POST", "/scripts/run", {"script": "sc.nap", "args": {"ms": 0}})
    fourth = await sc.ok("POST", "/scripts/run", {"script": "sc.gen", "args": {"count": 1}})
    listed = await sc.ok("GET", "/scripts/list")
    assert listed["queued"] + (listed["running"] is not None) == 4
    c = await sc.ok("POST", "/scripts/cancel", {"run_id": third["run_id"]})  # still queued
    assert (c["status"], c["cancel_requested"]) == ("queued", True)
    seen: list[tuple[str, int]] = []
    order = {x["run_id"]: i for i, x in enumerate((first, second, third, fourth), 1)}
    while len(seen) < 7:
        ev = await next_event(sub, types=("script_started", *END))
        seen.append((ev["type"].split("_")[1], order[ev["run_id"]]))
    assert seen == [("started", 1), ("completed", 1), ("started", 2), ("completed", 2),
                    ("failed", 3), ("started", 4), ("completed", 4)]
    runs = (await sc.ok("GET", "/scripts/runs"))["runs"]
    assert [r["run_id"] for r in runs] == list(order)
    assert [r["status"] for r in runs] == ["completed", "completed", "failed", "completed"]
    assert runs[2]["error"]["code"] == "Cancelled"
