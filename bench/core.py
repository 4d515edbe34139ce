"""Core engine benchmark: local writes, remote ingest, full replay, peak memory.

Prints ONE JSON object on stdout (progress goes to stderr):

  local_ops_per_s   bulk import of 10 000 records x 8 fields, one bundle per record
                    (Workspace.create_records: many bundles per transaction), fresh workspace;
                    signing + append + projection; ops = every op appended (CreateEntity,
                    AttachFacet, 8 SetField = 10 per record).
  ingest_ops_per_s  Workspace.ingest (verify + append + project) of those ~100 000 ops, made
                    by another identity, into a fresh replica, 500 bundles per call. Collecting
                    them with ops_since({}) is not timed.
  replay_ops_per_s  StateProjection.rebuild() over 1 000 000 ops (100 000 records x 8 fields),
                    in a child process so that its peak RSS is the replay's own. The oplog is
                    built first (not timed) by sealing the same import bundles as
                    create_records and appending them with SqliteStorage.append, without
                    projecting them (only the rebuild projects them).
  peak_rss_mb       peak RSS (VmHWM) of the replay child (imports + open + 1 M-op rebuild);
                    replay_rss_before_mb is its RSS just before the rebuild; main_peak_rss_mb
                    is the main process's ru_maxrss (local + ingest phases) and
                    rss_after_local_mb its RSS right after the local import.

Usage: python bench/core.py [--scale 0.1] [--chunk 500] [--dir DIR]
       (--scale 0.1 runs every phase at 10 %; the default is full size.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from openprod.core.identity import Identity  # noqa: E402
from openprod.engine.state import StateProjection  # noqa: E402
from openprod.engine.workspace import OPLOG_FILE, Workspace  # noqa: E402
from openprod.storage import db  # noqa: E402

TABLE = "Items"
FIELDS: list[dict[str, Any]] = [
    {"label": "name", "name": "name", "type": "text"},
    {"label": "notes", "name": "notes", "type": "text"},
    {"label": "code", "name": "code", "type": "text"},
    {"label": "qty", "name": "qty", "type": "integer"},
    {"label": "price", "name": "price", "type": "float"},
    {"label": "done", "name": "done", "type": "boolean"},
    {"label": "due", "name": "due", "type": "date"},
    {"label": "status", "name": "status", "type": "enum",
     "options": {"choices": ["todo", "doing", "done"]}},
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "name": f"item {i}",
            "notes": "lorem ipsum " * rng.randrange(1, 6),
            "code": f"C-{rng.randrange(10**6):06d}",
            "qty": rng.randrange(1000),
            "price": round(rng.random() * 100, 2),
            "done": rng.random() < 0.5,
            "due": f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            "status": rng.choice(["todo", "doing", "done"]),
        }
        for i in range(n)
    ]


def _status_mb(key: str) -> float:
    """A memory line of /proc/self/status (Linux), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def rss_mb() -> float:
    """Current resident set size, MiB."""
    return _status_mb("VmRSS")


def hwm_mb() -> float:
    """Peak RSS of this process image, MiB. Unlike ru_maxrss, which a child inherits from its
    parent across fork + exec, VmHWM starts afresh at exec."""
    return _status_mb("VmHWM")


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def new_workspace(path: Path, seed: int) -> Workspace:
    ws = Workspace.create(path, Identity.from_seed(bytes([seed]) * 32), "bench")
    ws.create_table(TABLE, FIELDS)
    return ws


# --- phases ------------------------------------------------------------------------------------
def phase_local(base: Path, n_records: int) -> tuple[dict[str, Any], Workspace]:
    ws = new_workspace(base / "local", 1)
    data = rows(n_records, 1)
    head0 = ws.storage.head_seq()
    c0, t0 = time.process_time(), time.perf_counter()
    ws.create_records(TABLE, data)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_ops = ws.storage.head_seq() - head0
    assert ws.proj.checkpoint == ws.storage.head_seq()
    return {"local_records": n_records, "local_n_ops": n_ops, "local_s": round(dt, 3),
            "local_cpu_s": round(cpu, 3), "local_ops_per_s": round(n_ops / dt)}, ws


def phase_ingest(base: Path, src: Workspace, chunk: int) -> dict[str, Any]:
    records = src.ops_since({})
    n_ops = src.storage.head_seq()
    replica = Workspace.join(base / "replica", Identity.from_seed(bytes([2]) * 32), src.ws)
    c0, t0 = time.process_time(), time.perf_counter()
    applied = 0
    for i in range(0, len(records), chunk):
        rep = replica.ingest(records[i:i + chunk])
        assert not rep.rejected, rep.rejected[:3]
        applied += len(rep.applied)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert applied == len(records)
    assert replica.oplog_digest() == src.oplog_digest()
    assert replica.state_hash() == src.state_hash()
    replica.close()
    return {"ingest_bundles": len(records), "ingest_n_ops": n_ops, "ingest_chunk": chunk,
            "ingest_s": round(dt, 3), "ingest_cpu_s": round(cpu, 3),
            "ingest_ops_per_s": round(n_ops / dt)}


def build_oplog(path: Path, n_records: int, batch: int = 500) -> dict[str, Any]:
    """The replay input: import bundles sealed and appended like create_records, unprojected."""
    ws = new_workspace(path, 3)
    t = ws.views.table(TABLE)
    t0 = time.perf_counter()
    for i in range(0, n_records, batch):
        bundles = []
        for vals in rows(min(batch, n_records - i), 10_000 + i):
            _, payloads = ws._create_payloads(t, vals)
            bundles.append(ws._seal("import", payloads))
        ws.storage.append(bundles)
    dt = time.perf_counter() - t0
    n_ops = ws.storage.head_seq()
    ws.close()
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {"replay_build_s": round(dt, 3), "replay_build_n_ops": n_ops,
            "oplog_mb": round(size / 2**20, 1)}


def phase_replay(path: Path) -> dict[str, Any]:
    """Run in a fresh process: open the oplog and time one full rebuild."""
    conn = db.connect(path / OPLOG_FILE, synchronous="NORMAL")
    proj = StateProjection(conn)
    before = rss_mb()
    c0, t0 = time.process_time(), time.perf_counter()
    seq = proj.rebuild()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_ops = next(iter(conn.execute("SELECT count(*) FROM ops")))[0]
    assert seq == n_ops
    conn.close()
    return {"replay_n_ops": n_ops, "replay_s": round(dt, 3),
            "replay_cpu_s": round(cpu, 3), "replay_ops_per_s": round(n_ops / dt),
            "replay_rss_before_mb": round(before, 1),
            "replay_peak_rss_mb": round(hwm_mb(), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=500, help="bundles per ingest call")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--replay-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay_only is not None:
        print(json.dumps(phase_replay(args.replay_only)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="openprod-bench-") as d:
        base = Path(d)
        out: dict[str, Any] = {"python": platform.python_version(), "scale": args.scale,
                               "cpus": os.cpu_count()}
        n_local = max(1, round(10_000 * args.scale))
        n_replay = max(1, round(100_000 * args.scale))
        log(f"local: {n_local} records")
        res, src = phase_local(base, n_local)
        out.update(res)
        out["rss_after_local_mb"] = round(rss_mb(), 1)
        log(f"ingest: {out['local_n_ops']} ops in chunks of {args.chunk}")
        out.update(phase_ingest(base, src, args.chunk))
        src.close()
        out["main_peak_rss_mb"] = round(maxrss_mb(), 1)  # ru_maxrss, local + ingest phases
        log(f"replay: building {n_replay} records")
        out.update(build_oplog(base / "replay", n_replay))
        log("replay: rebuild in a child process")
        child = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--replay-only",
             str(base / "replay")],
            check=True, capture_output=True, text=True,
        )
        out.update(json.loads(child.stdout))
        out["peak_rss_mb"] = out["replay_peak_rss_mb"]
        out["replay_build"] = ("import bundles sealed like create_records and appended with "
                               "SqliteStorage.append (batches of 500), not projected")
        out["db_after_replay_mb"] = round(sum(
            f.stat().st_size for f in (base / "replay").iterdir() if f.is_file()) / 2**20, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
