"""Scripts benchmark (issue 7): run latency, ops/s inside a script overlay, overlay commit time.

One in-process engine (a `Node` with an open workspace, as tests/api/conftest.py builds it; no
Hypercorn), its real ScriptRunner and sandbox host process, and a module package made here
(`bench`, table `bench.Items` with fields name, n) installed and adopted through the in-process
HTTP client. Then, measured with trio:

  first_op          a warm host (one untimed run first), then --runs runs (20) of a script whose
                    first statement is `core.create_entity`: the time from calling
                    `ScriptRunner.submit` to the runner publishing `script_progress` (which it
                    does right after the first staged op is answered to the host). Median, p90,
                    min, max in ms (target: median < 50 ms). Each run's overlay is discarded
                    after it completes (untimed). `submit_ms_median`: submit() alone (catalog
                    refresh, arg and capability checks, enqueue).
  call_floor        a script calling `core.exists` 10 000 times with one op staged: calls/s of
                    the round trip every `core.*` call pays (host -> pipe -> writer worker
                    thread -> back; consecutive calls are answered in bursts inside one writer
                    command, the first of each through the runner and the writer's queue),
                    without a growing overlay; pipe_only_us_per_call: the same number of
                    `core.await(core.sleep(0))`, answered one by one by the runner in trio
                    without the writer (host <-> runner <-> trio).
  update_10k        10 000 records are imported first (not timed); a script queries them and
                    sets one integer field on each (`core.set_field`, 10 000 staged ops, each a
                    round trip host -> writer thread, in bursts). ops_per_s = staged ops / time
                    from `script_started` to the end event (target >= 10 000); also the time
                    from submit, the run's op_count, and the CPU time of the engine process and
                    of the host process (host_cpu_s, from /proc; null elsewhere). The script
                    has the largest timeout a manifest allows (120 s): a run stopped by it is
                    reported as such (`completed: false`, `failed`), op_count then being the
                    last `script_progress`.
  commit            POST /overlays/commit of that run's overlay (one `script` bundle of
                    10 000 ops): time to the answer and until the state projection applied it.
                    If update_10k did not complete, the same 10 000 SetField ops are staged
                    into a script overlay in one writer call instead (`overlay: staged
                    directly`) and that overlay is committed.
  session_profile   (--profile FILE only) the engine side of update_all without the host: up to
                    1 000 `RunSession.call("set_field")` calls on a fresh script overlay (a
                    running run's, as the runner makes it) inside one writer call, their staged
                    rows written every BURST calls as the runner's bursts do, under cProfile
                    (stats written to FILE, top 15 to stderr); mean µs per call over the first
                    and the last 10 % of the calls.

Prints ONE JSON object on stdout (progress on stderr).

Usage: python bench/scripts.py [--scale 1.0] [--runs 20] [--dir DIR] [--profile FILE.prof]
       (--scale 0.1 runs the floor, update and commit phases on 1 000 records.)
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actors.api import create_app  # noqa: E402
from actors.home import Home  # noqa: E402
from actors.node import Node  # noqa: E402
from actors.script_runner import ScriptRunner  # noqa: E402
from openprod.core import ids  # noqa: E402

TARGET_FIRST_OP_MS = 50.0
TARGET_OPS_PER_S = 10_000
BURST = 50  # session_profile: calls per deferred write (a burst answers about this many)
HOST = "127.0.0.1:0"

TOML = '''manifest_version = 1
[module]
id = "bench"
version = "1.0.0"
name = "Bench"
[tables.Items.fields]
name = { type = "text", required = true }
n = { type = "integer" }
[scripts.one]
file = "scripts/one.lua"
[scripts.update_all]
file = "scripts/update_all.lua"
limits = { timeout_s = 120 }
[scripts.exists_loop]
file = "scripts/exists_loop.lua"
args = { count = "integer" }
[scripts.await_loop]
file = "scripts/await_loop.lua"
args = { count = "integer" }
'''
ONE = 'core.create_entity("bench.Items", { name = "x", n = 1 })\n'
UPDATE_ALL = '''local ids = core.query({ table = "bench.Items" })
for i, id in ipairs(ids) do
  core.set_field(id, "bench.Items", "n", i)
end
print("updated", #ids)
'''
AWAIT_LOOP = '''for i = 1, args.count do
  core.await(core.sleep(0))
end
'''
EXISTS_LOOP = '''local id = core.create_entity("bench.Items", { name = "probe" })
for i = 1, args.count do
  core.exists(id)
end
'''


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _cpu_of(pid: int) -> float | None:
    """CPU seconds (user + system) of a process so far, from /proc (None where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def package(base: Path) -> Path:
    root = base / "bench-module"
    (root / "scripts").mkdir(parents=True)
    (root / "module.toml").write_text(TOML)
    (root / "scripts" / "one.lua").write_text(ONE)
    (root / "scripts" / "update_all.lua").write_text(UPDATE_ALL)
    (root / "scripts" / "exists_loop.lua").write_text(EXISTS_LOOP)
    (root / "scripts" / "await_loop.lua").write_text(AWAIT_LOOP)
    return root


class Bench:
    def __init__(self, node: Node, client: Any, token: str) -> None:
        self.node = node
        self.client = client
        self.headers = {"Host": HOST, "Authorization": f"Bearer {token}"}
        self.last_progress = 0

    @property
    def runner(self) -> ScriptRunner:
        r = self.node.current.scripts
        assert r is not None
        return r

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self.client.open(path, method="POST", headers=self.headers, json=body)
        data: dict[str, Any] = await resp.get_json()
        if resp.status_code != 200:
            raise RuntimeError(f"{path}: {resp.status_code} {data}")
        return data

    async def run_once(self, script: str, *, args: dict[str, Any] | None = None,
                       until: str | None = None, check: bool = True,
                       ) -> tuple[dict[str, float], dict[str, Any]]:
        """Submit a run; the times (s, trio clock) of submit, submit returned, `until` (an event
        type, first seen), script_started and the end event; and the end event."""
        sub, _ = self.node.hub.subscribe(None)
        try:
            t: dict[str, float] = {"submit": trio.current_time()}
            run = await self.runner.submit(script, args)
            t["submitted"] = trio.current_time()
            with trio.fail_after(600):
                while True:
                    ev: dict[str, Any] = await sub.recv.receive()
                    if ev.get("run_id") != run.run_id:
                        continue
                    now = trio.current_time()
                    t.setdefault(ev["type"], now)
                    if ev["type"] == "script_progress":
                        self.last_progress = int(ev["op_count"])
                    if ev["type"] in ("script_completed", "script_failed"):
                        break
        finally:
            sub.close()
        if check and ev["type"] != "script_completed":
            raise RuntimeError(f"{script} failed: {ev}")
        if until is not None and until not in t:
            raise RuntimeError(f"{script}: no {until} event")
        return t, ev

    async def discard(self, overlay_id: str | None) -> None:
        if overlay_id is not None:
            await self.post("/overlays/discard", {"id": overlay_id})


async def phase_first_op(b: Bench, runs: int) -> dict[str, Any]:
    log("warming the host")
    _, ev = await b.run_once("bench.one")
    await b.discard(ev["overlay_id"])
    lat: list[float] = []
    submit: list[float] = []
    for _ in range(runs):
        t, ev = await b.run_once("bench.one", until="script_progress")
        lat.append((t["script_progress"] - t["submit"]) * 1000)
        submit.append((t["submitted"] - t["submit"]) * 1000)
        await b.discard(ev["overlay_id"])
    log(f"first op: median {statistics.median(lat):.1f} ms over {runs} runs")
    med = statistics.median(lat)
    return {"runs": runs, "median_ms": round(med, 2), "p90_ms": round(pct(lat, 90), 2),
            "min_ms": round(min(lat), 2), "max_ms": round(max(lat), 2),
            "submit_ms_median": round(statistics.median(submit), 2),
            "target_ms": TARGET_FIRST_OP_MS, "met": med < TARGET_FIRST_OP_MS}


async def phase_floor(b: Bench, n: int) -> dict[str, Any]:
    """Calls/s of a read (`core.exists`) with nothing staged: the round trip host -> runner ->
    writer -> host that every `core.*` call pays, without the overlay's cost."""
    t, ev = await b.run_once("bench.exists_loop", args={"count": n})
    run_s = t["script_completed"] - t["script_started"]
    await b.discard(ev["overlay_id"])
    log(f"floor: {n} core.exists in {run_s:.2f} s = {n / run_s:.0f} calls/s")
    t, ev = await b.run_once("bench.await_loop", args={"count": n})
    pipe_s = t["script_completed"] - t["script_started"]
    log(f"floor: {n} core.await(core.sleep(0)) in {pipe_s:.2f} s = {n / pipe_s:.0f} calls/s")
    return {"calls": n, "run_s": round(run_s, 3), "calls_per_s": round(n / run_s),
            "us_per_call": round(run_s / n * 1e6, 1),
            "pipe_only_us_per_call": round(pipe_s / n * 1e6, 1)}


async def phase_update(b: Bench, n: int) -> tuple[dict[str, Any], str | None]:
    log(f"importing {n} records")
    rows = [{"name": f"item {i}", "n": 0} for i in range(n)]
    await b.node.current.writer.call(lambda ws: ws.create_records("bench.Items", rows))
    s = b.node.current
    await s.deriver.wait_applied(s.writer.appended)
    log(f"running update_all over {n} records (the script may run up to 120 s)")
    host = b.runner.host.proc
    host0 = _cpu_of(host.pid) if host is not None else None
    cpu0 = time.process_time()
    t, ev = await b.run_once("bench.update_all", check=False)
    cpu = time.process_time() - cpu0
    host1 = _cpu_of(host.pid) if host is not None and b.runner.host.proc is host else None
    run_s = t[ev["type"]] - t["script_started"]
    ok = ev["type"] == "script_completed"
    ops = int(ev["op_count"]) if ok else b.last_progress
    out: dict[str, Any] = {
        "records": n, "completed": ok, "op_count": ops, "run_s": round(run_s, 3),
        "from_submit_s": round(t[ev["type"]] - t["submit"], 3),
        "ops_per_s": round(ops / run_s), "engine_cpu_s": round(cpu, 3),
        "host_cpu_s": round(host1 - host0, 3) if host0 is not None and host1 is not None
        else None,
        "target_ops_per_s": TARGET_OPS_PER_S, "met": ok and ops / run_s >= TARGET_OPS_PER_S}
    if not ok:
        out["failed"] = {"code": ev.get("code"), "message": ev.get("message")}
        out["note"] = "op_count is the last script_progress before the run was stopped"
    log(f"update: {ev['type']}, {ops} ops in {run_s:.2f} s = {ops / run_s:.0f} ops/s")
    return out, ev.get("overlay_id") if ok else None


async def stage_directly(b: Bench, n: int) -> str:
    """A script overlay holding n SetField ops, staged in one writer call (not timed): what
    update_all would have left had it finished."""
    def stage(ws: Any) -> bytes:
        ids_ = ws.query({"table": "bench.Items"})[:n]
        meta = {"script": {"source": "module", "id": "bench.update_all", "version": "1.0.0",
                           "run_id": "direct", "trigger": "manual"}, "depth": 0}
        oid: bytes = ws.overlays.create("update_all (staged directly)",
                                        ("script", "bench.update_all"), active=False, meta=meta)
        with ws.staging_into(oid):
            ws.update_records([(e, {"n": -i - 1}, "bench.Items") for i, e in enumerate(ids_)])
        return oid
    oid = await b.node.current.writer.call(stage)
    return ids.to_text(oid)


async def phase_profile(b: Bench, n: int, path: Path) -> dict[str, Any]:
    """The engine side of update_all alone: n `RunSession.call("set_field")` calls on a fresh
    script overlay, in ONE writer call (no host, no pipe, no thread hop per call) under
    cProfile; stats to `path`, the top 15 by cumulative time to stderr. Reports the mean cost
    of the first and the last 10 % of the calls (how it grows with the staged ops)."""
    from openprod.scripts.session import RunSession, RunSpec

    def work(ws: Any) -> dict[str, Any]:
        oid = ws.overlays.create("profile", ("script", "bench.update_all"), active=False,
                                 meta={"script": {}, "depth": 0, "running": True})
        sess = RunSession(ws, oid, RunSpec("profile", "bench.update_all", "bench"))
        ok, rows = sess.call("query", [{"table": "bench.Items"}])
        assert ok, rows
        rows = rows[:n]
        times: list[float] = []
        prof = cProfile.Profile()
        prof.enable()
        for i0 in range(0, len(rows), BURST):
            with ws.overlays.deferred():  # as in a burst: one transaction for its rows
                for i, e in enumerate(rows[i0:i0 + BURST], i0):
                    t0 = time.perf_counter()
                    ok, err = sess.call("set_field", [e, "bench.Items", "n", 10 * n + i])
                    times.append(time.perf_counter() - t0)
                    assert ok, err
                t0 = time.perf_counter()
            times[-1] += time.perf_counter() - t0  # the flush, counted with the last call
        prof.disable()
        prof.dump_stats(str(path))
        ws.discard_overlay(oid)
        k = max(1, len(times) // 10)
        return {"calls": len(times), "total_s": round(sum(times), 3),
                "first_10pct_us": round(statistics.mean(times[:k]) * 1e6),
                "last_10pct_us": round(statistics.mean(times[-k:]) * 1e6)}
    out: dict[str, Any] = await b.node.current.writer.call(work)
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("cumulative").print_stats(15)
    log(f"profile written to {path}: {out}")
    return out


async def phase_commit(b: Bench, overlay_id: str) -> dict[str, Any]:
    s = b.node.current
    t0 = trio.current_time()
    r = await b.post("/overlays/commit", {"id": overlay_id})
    t1 = trio.current_time()
    await s.deriver.wait_applied(int(r["seq"]))
    t2 = trio.current_time()
    log(f"commit: {(t1 - t0) * 1000:.0f} ms (+ projection {(t2 - t1) * 1000:.0f} ms)")
    return {"answer_ms": round((t1 - t0) * 1000, 1),
            "applied_ms": round((t2 - t0) * 1000, 1), "bundle_id": r["bundle_id"]}


async def main_async(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    home = Home(base / "home")
    home.ensure()
    ident = home.identity("Bench")
    token = home.new_token()
    ws = home.create_workspace(ident, "Bench show")
    ws_id = ids.to_text(ws.ws)
    ws.close()
    node = Node(home, ident, token)
    out: dict[str, Any] = {}
    async with trio.open_nursery() as n:
        node.attach(n)
        await node.open_workspace(ws_id)
        app = create_app(node)
        b = Bench(node, app.test_client(), token)
        await b.post("/modules/install", {"path": str(package(base))})
        await b.post("/modules/adopt", {"id": "bench"})
        out["first_op"] = await phase_first_op(b, args.runs)
        size = max(10, round(10_000 * args.scale))
        out["call_floor"] = await phase_floor(b, size)
        upd, oid = await phase_update(b, size)
        out["update_10k"] = upd
        direct = oid is None
        if oid is None:
            log(f"staging {size} ops directly for the commit phase")
            oid = await stage_directly(b, size)
        out["commit"] = await phase_commit(b, oid)
        out["commit"]["ops"] = size
        out["commit"]["overlay"] = "staged directly" if direct else "update_all's"
        if args.profile is not None:
            out["session_profile"] = await phase_profile(b, min(size, 1000), args.profile)
        node.shutdown.set()
        if node.session is not None:
            await node.session.stop()
        n.cancel_scope.cancel()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=20, help="timed runs for first_op")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="also profile RunSession set_field calls (engine side) to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="openprod-bench-") as d:
        out: dict[str, Any] = {"python": platform.python_version(), "scale": args.scale,
                               "cpus": os.cpu_count(),
                               "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
        out.update(trio.run(main_async, args, Path(d)))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
