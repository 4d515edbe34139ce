"""Script calls answered in bursts (actors/script_runner.py `_burst`): consecutive `core.*` calls
share one writer command, read from and answered on the host's pipes by the writer's thread,
and a run behaves exactly as with one command per call (spec 04 §7.2-7.3): every reply answers
its own call, an error is raised at its call site and `pcall` catches it, logs keep their
order, replies too large for a burst, other writer commands, canonical changes, time limits,
cancels and a dying host all still work.

Real host process and real clock, as in test_script_runner.py: every wait is an awaited event
bounded by `trio.fail_after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors import script_runner as srmod
from actors.events import Subscription
from actors.script_runner import ScriptRunner
from openprod.core import ids
from tests.actors.script_helpers import END, events, install_module, runner
from tests.actors.script_helpers import next_event as _next_event
from tests.api import conftest as api_conftest
from tests.api.conftest import Api

api = api_conftest.api

TOML = '''manifest_version = 1
[module]
id = "bx"
version = "1.0.0"
name = "Bursts"

[tables.Items.fields]
label = { type = "text", required = true }
n = { type = "integer" }

[scripts.mixed]
file = "scripts/mixed.lua"
args = { count = "integer" }

[scripts.wait_for]
file = "scripts/wait_for.lua"
args = { id = "text" }

[scripts.forever]
file = "scripts/forever.lua"
args = { id = "text" }
limits = { timeout_s = 1 }

[scripts.long]
file = "scripts/forever.lua"
args = { id = "text" }
limits = { timeout_s = 30 }
'''

SCRIPTS = {
    # creates, then updates each record; every 25th update a pcall'd bad call, a log line and a
    # query whose reply (all ids) is too large to be written from a burst
    "mixed": '''local made = {}
for i = 1, args.count do
  made[i] = core.create_entity("bx.Items", { label = "i" .. i, n = i })
end
local caught = 0
for i = 1, args.count do
  core.set_field(made[i], "bx.Items", "n", i * 10)
  if i % 25 == 0 then
    local ok, err = pcall(core.set_field, made[i], "bx.Items", "nope", 1)
    assert(not ok and err.code == "UnknownField", tostring(err))
    caught = caught + 1
    core.log("info", "caught " .. i)
    local all = core.query({ table = "bx.Items" })
    assert(#all >= args.count, "query " .. #all)
  end
end
print("caught", caught)
''',
    # reads until a canonical edit made while it runs shows up
    "wait_for": '''core.log("info", "waiting")
local seen = 0
while core.get_field(args.id, "bx.Items", "n") == 0 do seen = seen + 1 end
core.log("info", "saw it")
''',
    "forever": '''core.log("info", "looping")
while true do core.exists(args.id) end
''',
}

@pytest.fixture
async def bx(api: Api, tmp_path: Path) -> AsyncIterator[Api]:
    await install_module(api, tmp_path, "bx", TOML, SCRIPTS)
    yield api


async def next_event(sub: Subscription, run_id: str | None = None,
                     types: tuple[str, ...] = END, timeout: float = 30) -> dict[str, Any]:
    return await _next_event(sub, run_id, types, timeout)


async def start(a: Api, script: str, **args: Any) -> str:
    r = await a.ok("POST", "/scripts/run", {"script": script, "args": args})
    return str(r["run_id"])


async def one_record(a: Api) -> str:
    res = await a.node.current.writer.call(
        lambda ws: ws.create_records("bx.Items", [{"label": "probe", "n": 0}]))
    return ids.to_text(res.created[0])


def count_bursts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of calls each burst answered, as the runner makes them."""
    seen: list[int] = []
    real = ScriptRunner._burst

    def counted(self: ScriptRunner, ws: Any, **kw: Any) -> srmod.Burst:
        out = real(self, ws, **kw)
        seen.append(out.calls)
        return out
    monkeypatch.setattr(ScriptRunner, "_burst", counted)
    return seen


async def test_bursts_answer_every_call_and_errors_stay_at_their_call_site(
        bx: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await bx.node.current.writer.call(lambda ws: ws.create_records(
        "bx.Items", [{"label": f"bulk {i}", "n": 0} for i in range(1000)]))
    bursts = count_bursts(monkeypatch)
    sub = events(bx)
    count = 100
    run_id = await start(bx, "bx.mixed", count=count)
    ev = await next_event(sub, run_id)
    assert ev["type"] == "script_completed", ev
    run_ = (await bx.ok("GET", f"/scripts/runs?run_id={run_id}"))["run"]
    caught = [f"caught {i}" for i in range(25, count + 1, 25)]
    assert [x["msg"] for x in run_["log"]] == [*caught, f"caught\t{len(caught)}"]
    # every forwarded call was answered once, most of them inside bursts of several calls;
    # each query's reply (1 100 ids) is too large for a burst: the trio side sends it and the
    # next call starts a new burst
    calls = 2 * count + 2 * len(caught)
    assert sum(bursts) == calls and max(bursts) > 1 and len(bursts) > len(caught)
    await bx.ok("POST", "/overlays/commit", {"id": ev["overlay_id"]})
    recs = (await bx.ok("GET", "/records/list?table=bx.Items"))["records"]
    assert sorted(r["values"]["n"] for r in recs if r["values"]["label"].startswith("i")) == [
        10 * i for i in range(1, count + 1)]
    assert (await bx.ok("GET", "/overlays/list"))["overlays"] == []


async def test_a_canonical_edit_gets_through_and_shows_up_in_the_next_calls(bx: Api) -> None:
    probe = await one_record(bx)
    sub = events(bx)
    run_id = await start(bx, "bx.wait_for", id=probe)
    await next_event(sub, run_id, ("script_progress",))  # it logged: it is looping now
    assert runner(bx).runs[run_id].status == "running"
    # a user's edit through the writer while the script keeps calling
    await bx.node.current.writer.call(
        lambda ws: ws.update_record(ids.from_text(probe), {"n": 1}, "bx.Items"))
    ev = await next_event(sub, run_id)
    assert ev["type"] == "script_completed", ev
    run_ = (await bx.ok("GET", f"/scripts/runs?run_id={run_id}"))["run"]
    assert [x["msg"] for x in run_["log"]] == ["waiting", "saw it"]
    assert ev["overlay_id"] is None  # it staged nothing


async def test_a_loop_of_calls_meets_its_time_limit_and_the_next_run_works(bx: Api) -> None:
    probe = await one_record(bx)
    sub = events(bx)
    run_id = await start(bx, "bx.forever", id=probe)
    ev = await next_event(sub, run_id)
    assert ev["type"] == "script_failed" and ev["code"] == "TimeLimit", ev
    run_id = await start(bx, "bx.mixed", count=3)
    ev = await next_event(sub, run_id)
    assert ev["type"] == "script_completed", ev


async def test_cancelling_a_loop_of_calls(bx: Api) -> None:
    probe = await one_record(bx)
    sub = events(bx)
    run_id = await start(bx, "bx.long", id=probe)
    await next_event(sub, run_id, ("script_progress",))
    await bx.ok("POST", "/scripts/cancel", {"run_id": run_id})
    ev = await next_event(sub, run_id)
    assert ev["type"] == "script_failed" and ev["code"] == "Cancelled", ev
    assert (await bx.ok("GET", "/overlays/list"))["overlays"] == []
    run_id = await start(bx, "bx.mixed", count=3)
    assert (await next_event(sub, run_id))["type"] == "script_completed"


async def test_the_host_dying_during_a_loop_of_calls(bx: Api) -> None:
    probe = await one_record(bx)
    sub = events(bx)
    run_id = await start(bx, "bx.long", id=probe)
    await next_event(sub, run_id, ("script_progress",))
    proc = runner(bx).host.proc
    assert proc is not None
    proc.kill()
    ev = await next_event(sub, run_id)
    assert ev["type"] == "script_failed" and ev["code"] == "HostCrashed", ev
    assert (await bx.ok("GET", "/overlays/list"))["overlays"] == []
    run_id = await start(bx, "bx.mixed", count=3)
    assert (await next_event(sub, run_id))["type"] == "script_completed"
