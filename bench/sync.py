"""LAN sync benchmark (issue 5): catch-up, partitioned merge, edit-to-event latency over loopback.

Prints ONE JSON object on stdout (progress goes to stderr):

  catchup_ops_per_s   node A (a child process) holds 10 000 records x 8 fields (~100 000 ops,
                      one bundle per record); empty node B (this process) dials A's peer port on
                      127.0.0.1 and catches up over the real protocol: pages read on A, checked
                      in B's worker threads (2 verification slots), admitted by B's OplogWriter,
                      projected by B's StateDeriver and ConflictManager. Timed from the dial
                      until B's vector clock equals A's and both of B's projections applied
                      everything. Target >= 12 000 ops/s.
  merge_s             A and B share 1 000 records, then, partitioned, each makes 50 000 field
                      sets (100 per bundle) on the same fields of the same records, so most
                      become conflicts; timed from the dial until both nodes hold the merged
                      vector clock with both projections (state and conflicts) caught up.
                      Target < 10 s.
  edit_to_event_ms    A and B linked (two sessions in this process, real TCP on loopback); A
                      updates a field through its OplogWriter; timed until B's EventHub publishes
                      records_changed for that record (live push → verify → admit → project →
                      event). p50 / p99 over 300 edits. Targets p50 < 20 ms, p99 < 100 ms.

Usage: python bench/sync.py [--scale 1.0] [--dir DIR] [--only catchup|merge|latency]
                            [--verify-threads]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.events import EventHub
from actors.node import Session
from openprod.core import vclock as vcmod
from openprod.core.identity import Identity
from openprod.engine.workspace import Workspace

TABLE = "Items"
FIELDS = [{"label": n, "type": t} for n, t in [
    ("name", "text"), ("notes", "text"), ("code", "text"), ("qty", "integer"),
    ("price", "float"), ("done", "boolean"), ("due", "date"), ("status", "text")]]
A_SEED, B_SEED = 11, 12
VERIFY_PROCESSES = True  # --verify-threads: check ops messages in threads instead of processes


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ident(seed: int) -> Identity:
    return Identity.from_seed(bytes([seed]) * 32)


def rows(n: int) -> list[dict[str, Any]]:
    return [{"name": f"item {i}", "notes": "lorem ipsum " * (1 + i % 5), "code": f"C-{i:06d}",
             "qty": i % 1000, "price": (i % 97) / 3, "done": i % 2 == 0,
             "due": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}", "status": "todo"}
            for i in range(n)]


def vc_hex(vc: dict[bytes, bytes]) -> dict[str, str]:
    return {a.hex(): h.hex() for a, h in vc.items()}


def vc_from_hex(d: dict[str, str]) -> dict[bytes, bytes]:
    return {bytes.fromhex(a): bytes.fromhex(h) for a, h in d.items()}


# --- the serving child -------------------------------------------------------------------------

async def child_main(path: Path, seed: int, target: dict[bytes, bytes] | None) -> None:
    """Serve a workspace on a loopback peer port; print the port, then (with a target VC)
    print the time at which this node held it with both projections caught up."""
    hub = EventHub()
    s = Session(path, ident(seed), hub)
    s.sync.config.verify_processes = VERIFY_PROCESSES
    async with trio.open_nursery() as n:
        await n.start(s.run)
        port = await n.start(s.sync.listen, "127.0.0.1", 0)
        print(json.dumps({"port": port}), flush=True)
        if target is not None:
            await _until_holds(s, target)
            print(json.dumps({"done_at": time.time()}), flush=True)
        await trio.sleep_forever()


async def _until_holds(s: Session, target: dict[bytes, bytes]) -> None:
    while True:
        if vcmod.covers(s.ws.storage.vclock(), target):
            head = s.writer.appended
            await s.deriver.wait_applied(head)
            await s.conflicts.wait_applied(head)
            return
        await trio.sleep(0.005)


class Child:
    def __init__(self, path: Path, seed: int, target: dict[bytes, bytes] | None = None) -> None:
        args = [sys.executable, __file__, "--child", str(path), "--seed", str(seed)]
        if not VERIFY_PROCESSES:
            args.append("--verify-threads")
        if target is not None:
            args += ["--target", json.dumps(vc_hex(target))]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def done_at(self) -> float:
        assert self.proc.stdout is not None
        return float(json.loads(self.proc.stdout.readline())["done_at"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def dial_and_wait(path: Path, seed: int, port: int,
                        target: dict[bytes, bytes]) -> tuple[float, float]:
    """Open this side's session, dial the child, return (t_dial, t_done) in time.time()."""
    s = Session(path, ident(seed), EventHub())
    s.sync.config.verify_processes = VERIFY_PROCESSES
    async with trio.open_nursery() as n:
        await n.start(s.run)
        t0 = time.time()
        n.start_soon(s.sync.dial, "127.0.0.1", port)
        await _until_holds(s, target)
        t1 = time.time()
        n.cancel_scope.cancel()
    return t0, t1


# --- phases ------------------------------------------------------------------------------------

def phase_catchup(base: Path, scale: float) -> dict[str, Any]:
    n = max(100, int(10_000 * scale))
    a = Workspace.create(base / "cA", ident(A_SEED), "bench")
    a.create_table(TABLE, FIELDS)
    a.create_records(TABLE, rows(n))
    ops, vc, ws_id = a.storage.op_count(), a.vclock(), a.ws
    a.close()
    Workspace.join(base / "cB", ident(B_SEED), ws_id).close()
    log(f"catch-up: {ops} ops in {n + 2} bundles")
    child = Child(base / "cA", A_SEED)
    try:
        t0, t1 = trio.run(dial_and_wait, base / "cB", B_SEED, child.port, vc)
    finally:
        child.stop()
    dt = t1 - t0
    return {"catchup_ops": ops, "catchup_bundles": n + 2, "catchup_s": round(dt, 3),
            "catchup_ops_per_s": round(ops / dt)}


def phase_merge(base: Path, scale: float) -> dict[str, Any]:
    n_sets = max(1000, int(50_000 * scale))
    a = Workspace.create(base / "mA", ident(A_SEED), "bench")
    a.create_table(TABLE, FIELDS)
    ents = list(a.create_records(TABLE, rows(1000)).created)
    b = Workspace.join(base / "mB", ident(B_SEED), a.ws)
    assert not b.ingest(a.ops_since({})).rejected
    for side, ws, tag in ((("A", a, "a")), ("B", b, "b")):
        vc0 = ws.vclock()
        for i in range(0, n_sets, 100):
            ws.update_records([(ents[(i + j) % len(ents)],
                                {"name": f"{tag}{i + j}"}, TABLE) for j in range(100)])
        log(f"merge: {side} made {ws.storage.op_count()} ops "
            f"({len(ws.ops_since(vc0))} new bundles)")
    merged = vcmod.merge(a.vclock(), b.vclock())
    total = a.storage.op_count() + b.storage.op_count()
    a.close()
    b.close()
    child = Child(base / "mA", A_SEED, merged)
    try:
        t0, t1 = trio.run(dial_and_wait, base / "mB", B_SEED, child.port, merged)
        t_child = child.done_at()
    finally:
        child.stop()
    return {"merge_field_sets": 2 * n_sets, "merge_total_ops": total,
            "merge_s": round(max(t1, t_child) - t0, 3),
            "merge_b_s": round(t1 - t0, 3), "merge_a_s": round(t_child - t0, 3)}


async def latency_run(base: Path, n: int) -> list[float]:
    a_ws = Workspace.create(base / "lA", ident(A_SEED), "bench")
    a_ws.create_table(TABLE, FIELDS)
    ent = a_ws.create_records(TABLE, rows(10)).created[0]
    ws_id = a_ws.ws
    a_ws.close()
    Workspace.join(base / "lB", ident(B_SEED), ws_id).close()
    hub_b = EventHub()
    a, b = Session(base / "lA", ident(A_SEED), EventHub()), Session(base / "lB", ident(B_SEED),
                                                                      hub_b)
    lat: list[float] = []
    async with trio.open_nursery() as nurs:
        await nurs.start(a.run)
        await nurs.start(b.run)
        port = await nurs.start(a.sync.listen, "127.0.0.1", 0)
        nurs.start_soon(b.sync.dial, "127.0.0.1", port)
        await _until_holds(b, a.ws.storage.vclock())
        sub, _ = hub_b.subscribe()
        for i in range(n + 20):
            t0 = time.perf_counter()
            await a.writer.call(lambda ws, i=i: ws.update_record(ent, {"name": f"v{i}"}, TABLE))
            while True:
                ev = await sub.recv.receive()
                if ev.get("type") == "records_changed" and ent.hex() in "".join(
                        str(x).replace("-", "") for x in ev.get("entity_ids", [])):
                    break
            if i >= 20:  # warm-up
                lat.append((time.perf_counter() - t0) * 1000)
        sub.close()
        nurs.cancel_scope.cancel()
    return lat


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(p / 100 * len(s)))], 2)


def phase_latency(base: Path, scale: float) -> dict[str, Any]:
    n = max(50, int(300 * scale))
    lat = trio.run(latency_run, base, n)
    return {"edit_to_event_n": n, "edit_to_event_p50_ms": pct(lat, 50),
            "edit_to_event_p99_ms": pct(lat, 99),
            "edit_to_event_mean_ms": round(statistics.fmean(lat), 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--dir")
    ap.add_argument("--only", choices=["catchup", "merge", "latency"])
    ap.add_argument("--child")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--target")
    ap.add_argument("--verify-threads", action="store_true")
    args = ap.parse_args()
    global VERIFY_PROCESSES
    VERIFY_PROCESSES = not args.verify_threads
    if args.child:
        target = vc_from_hex(json.loads(args.target)) if args.target else None
        trio.run(child_main, Path(args.child), args.seed, target)
        return 0
    base = Path(args.dir or tempfile.mkdtemp(prefix="openprod-bench-sync-"))
    os.environ.setdefault("OPENPROD_HOME", str(base / "home"))
    out: dict[str, Any] = {"scale": args.scale, "cpus": os.cpu_count(),
                           "verify_processes": VERIFY_PROCESSES,
                           "python": platform.python_version()}
    try:
        if args.only in (None, "catchup"):
            out.update(phase_catchup(base, args.scale))
            log(f"catch-up: {out['catchup_ops_per_s']} ops/s")
        if args.only in (None, "merge"):
            out.update(phase_merge(base, args.scale))
            log(f"merge: {out['merge_s']} s")
        if args.only in (None, "latency"):
            out.update(phase_latency(base, args.scale))
            log(f"latency: p50 {out['edit_to_event_p50_ms']} ms")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
