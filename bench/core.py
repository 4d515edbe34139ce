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

  conflicts         (issue 4) replicas A and B share 5 000 records (x 8 fields), then write
                    offline: B sets "name" and "qty" on every record, one bundle per record;
                    A sets one field on every record, either "name" (conflict run: half of B's
                    incoming field writes hit a field A wrote concurrently, with another value)
                    or "code" (no-conflict run: same volume, a field B does not touch). A's
                    projections (state + conflicts) are caught up before timing; then A ingests
                    B's bundles in chunks of 500, each chunk timed as ingest(chunk) followed by
                    catch_up_conflicts() (the runtime's ConflictManager does that per batch):
      ingest_conflict_ops_per_s / ingest_noconflict_ops_per_s  B's ops / timed seconds;
      conflict_vs_noconflict    their ratio (target >= 0.8: within 20 %); *_cpu: the same on
                                process CPU time, which other load on the machine disturbs less;
      list_conflicts_10k_ms     Workspace.list_conflicts("open") with 10 000 open conflicts
                                (5 000 records x 2 fields written by both replicas), median
                                of 5 calls after a warm-up catch-up (target < 200 ms); also
                                their minimum and median CPU time.
                    B's bundles are made once and the same ones go to every run; the two runs
                    are repeated --repeat times (default 3), interleaved; medians reported.

  modules           (issue 6) validate (load_package) and adopt a module of 10 tables x 20 fields
                    into a fresh workspace (one schema bundle, projected): medians in ms.

  rules             (issue 6) 20 enabled rules (10 auto_accept, 10 proposing; each watching one
                    of 10 fields of the source table) on a 10 000-record table; 2 000 triggering
                    writes (one watched field each, flipping conditions both ways):
      rule_eval_ms_per_write    mean time inside rule evaluation per write (target < 1 ms)
      rule_eval_p99_ms          its 99th percentile
      write_ms_no_rules / write_ms_with_rules  mean update_record time, the same writes,
                                before and after the rules were enabled

Usage: python bench/core.py [--scale 0.1] [--chunk 500] [--dir DIR]
                          [--only core|conflicts|modules|rules] [--repeat 3]
       (--scale 0.1 runs every phase at 10 %; the default is full size. --only conflicts runs
       just the conflict benchmark; its figures are under the key "conflicts".)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
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


# --- conflicts (issue 4) ---------------------------------------------------------------------
A_SEED, B_SEED = 11, 12


def _open(path: Path, seed: int) -> Workspace:
    return Workspace.open(path, Identity.from_seed(bytes([seed]) * 32))


def _open_conflicts(ws: Workspace) -> int:
    return int(next(iter(ws.storage.conn.execute(
        "SELECT count(*) FROM cf_records WHERE status = 'open'")))[0])


def build_shared(base: Path, n_records: int, chunk: int) -> tuple[dict[str, Any], list[bytes]]:
    """A creates n records, B joins and catches up; both projections caught up; both closed."""
    t0 = time.perf_counter()
    a = Workspace.create(base / "A", Identity.from_seed(bytes([A_SEED]) * 32), "bench")
    a.create_table(TABLE, FIELDS)
    ents = list(a.create_records(TABLE, rows(n_records, 7)).created)
    b = Workspace.join(base / "B", Identity.from_seed(bytes([B_SEED]) * 32), a.ws)
    recs = a.ops_since({})
    for i in range(0, len(recs), chunk):
        assert not b.ingest(recs[i:i + chunk]).rejected
    for ws in (a, b):
        ws.catch_up_conflicts()
    assert a.state_hash() == b.state_hash()
    a.close()
    b.close()
    return {"shared_records": n_records, "shared_build_s": round(time.perf_counter() - t0, 3)}, ents


def _copy_open(base: Path, side: str, dest: str, seed: int) -> Workspace:
    shutil.copytree(base / side, base / dest / side)
    return _open(base / dest / side, seed)


def b_offline(base: Path, ents: list[bytes]) -> list[Any]:
    """B's offline work, made once and shipped identically to every run: "name" and "qty" on
    every shared record, one user bundle per record."""
    b = _copy_open(base, "B", "b-offline", B_SEED)
    vc_b = b.vclock()
    for j, e in enumerate(ents):
        b.update_record(e, {"name": f"B name {j}", "qty": 100_000 + j}, TABLE)
    recs = b.ops_since(vc_b)
    b.close()
    return recs


def conflict_ingest(base: Path, ents: list[bytes], b_recs: list[Any], a_field: str,
                    chunk: int, run: int) -> dict[str, Any]:
    """A writes `a_field` on every record, then times ingesting B's bundles (ingest +
    catch_up_conflicts per chunk)."""
    a = _copy_open(base, "A", f"run-{a_field}-{run}", A_SEED)
    for i in range(0, len(ents), 500):  # A's offline work (batched: not what is timed)
        a.update_records([(e, {a_field: f"A {a_field} {i + j}"}, TABLE)
                          for j, e in enumerate(ents[i:i + 500])])
    a.catch_up_conflicts()
    assert _open_conflicts(a) == 0
    head0 = a.storage.head_seq()
    t_ing = t_cf = 0.0
    c0 = time.process_time()
    applied = 0
    for i in range(0, len(b_recs), chunk):
        t0 = time.perf_counter()
        rep = a.ingest(b_recs[i:i + chunk])
        t1 = time.perf_counter()
        a.catch_up_conflicts()
        t2 = time.perf_counter()
        t_ing += t1 - t0
        t_cf += t2 - t1
        assert not rep.rejected, rep.rejected[:3]
        applied += len(rep.applied)
    cpu = time.process_time() - c0
    dt = t_ing + t_cf
    n_ops = a.storage.head_seq() - head0
    assert applied == len(b_recs) == len(ents)
    n_open = _open_conflicts(a)
    assert n_open == (len(ents) if a_field == "name" else 0), n_open
    a.close()
    shutil.rmtree(base / f"run-{a_field}-{run}")
    return {"bundles": len(b_recs), "n_ops": n_ops, "open_conflicts": n_open,
            "s": round(dt, 3), "cpu_s": round(cpu, 3), "ingest_s": round(t_ing, 3),
            "catch_up_conflicts_s": round(t_cf, 3), "ops_per_s": round(n_ops / dt),
            "cpu_ops_per_s": round(n_ops / cpu)}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (by ops/s) plus every run's rate."""
    med = sorted(runs, key=lambda r: r["ops_per_s"])[len(runs) // 2]
    return {**med, "ops_per_s_runs": [r["ops_per_s"] for r in runs],
            "cpu_ops_per_s_median": statistics.median(r["cpu_ops_per_s"] for r in runs)}


def list_conflicts_bench(base: Path, ents: list[bytes], runs: int = 5) -> dict[str, Any]:
    """2 open conflicts per shared record (name, code), then time list_conflicts("open")."""
    a, b = _copy_open(base, "A", "list", A_SEED), _copy_open(base, "B", "list", B_SEED)
    for ws, who in ((a, "A"), (b, "B")):
        for i in range(0, len(ents), 500):
            ws.update_records([(e, {"name": f"{who} n {i + j}", "code": f"{who} c {i + j}"},
                                TABLE) for j, e in enumerate(ents[i:i + 500])])
    t0 = time.perf_counter()
    assert not a.ingest(b.ops_since(a.vclock())).rejected
    a.catch_up_conflicts()
    setup_cf = time.perf_counter() - t0
    n_open = _open_conflicts(a)
    assert n_open == 2 * len(ents), n_open
    times, cpus = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        listed = a.list_conflicts("open")
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        assert len(listed) == n_open
    a.close()
    b.close()
    return {"list_conflicts_n": n_open, "list_conflicts_runs_ms": [round(t * 1e3, 1)
                                                                    for t in times],
            "list_conflicts_ms": round(statistics.median(times) * 1e3, 1),
            "list_conflicts_min_ms": round(min(times) * 1e3, 1),
            "list_conflicts_cpu_ms": round(statistics.median(cpus) * 1e3, 1),
            "list_setup_ingest_catch_up_s": round(setup_cf, 3)}


def phase_conflicts(base: Path, scale: float, chunk: int, repeat: int) -> dict[str, Any]:
    n = max(1, round(5_000 * scale))
    log(f"conflicts: shared workspace of {n} records")
    out, ents = build_shared(base / "cf", n, chunk)
    b_recs = b_offline(base / "cf", ents)
    runs: dict[str, list[dict[str, Any]]] = {"name": [], "code": []}
    for r in range(repeat):  # interleaved, so that machine noise hits both alike
        for a_field in ("name", "code"):
            log(f"conflicts: run {r + 1}/{repeat}, "
                + ("conflict ingest (50 % of B's field writes conflict)" if a_field == "name"
                   else "conflict-free ingest (same volume)"))
            runs[a_field].append(conflict_ingest(base / "cf", ents, b_recs, a_field, chunk, r))
    conf, free = _summary(runs["name"]), _summary(runs["code"])
    log(f"conflicts: list {2 * n} open conflicts")
    lst = list_conflicts_bench(base / "cf", ents)
    out.update({
        "ingest_chunk": chunk, "ingest_repeat": repeat,
        "ingest_conflict_ops_per_s": conf["ops_per_s"],
        "ingest_noconflict_ops_per_s": free["ops_per_s"],
        "conflict_vs_noconflict": round(conf["ops_per_s"] / free["ops_per_s"], 3),
        # the same ratio on CPU time (process_time), robust to other load on the machine
        "conflict_vs_noconflict_cpu": round(
            conf["cpu_ops_per_s_median"] / free["cpu_ops_per_s_median"], 3),
        "ingest_conflict": conf, "ingest_noconflict": free,
        # named for the full-size figure; at other scales list_conflicts_n says how many
        "list_conflicts_10k_ms": lst["list_conflicts_ms"],
    })
    out.update(lst)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=500, help="bundles per ingest call")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--only", choices=("core", "conflicts", "modules", "rules"), default=None,
                    help="run one part: core (local/ingest/replay), conflicts (issue 4), "
                         "modules or rules (issue 6)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="conflict / conflict-free ingest runs each (median reported)")
    ap.add_argument("--replay-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay_only is not None:
        print(json.dumps(phase_replay(args.replay_only)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="openprod-bench-") as d:
        base = Path(d)
        out: dict[str, Any] = {"python": platform.python_version(), "scale": args.scale,
                               "cpus": os.cpu_count(),
                               "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
        if args.only in (None, "core"):
            out.update(run_core(base, args))
        if args.only in (None, "conflicts"):
            out["conflicts"] = phase_conflicts(base, args.scale, args.chunk, args.repeat)
        if args.only in (None, "modules"):
            out["modules"] = phase_modules(base, args.repeat)
        if args.only in (None, "rules"):
            out["rules"] = phase_rules(base, args.scale)
    print(json.dumps(out))
    return 0


def wide_module(path: Path, tables: int = 10, fields: int = 20) -> Path:
    """A module package with `tables` tables of `fields` fields each (types cycled)."""
    types = ["text", "integer", "float", "boolean", "date", "datetime", "duration"]
    lines = ['manifest_version = 1', '[module]', 'id = "wide"', 'version = "1.0.0"',
             'name = "Wide"']
    for t in range(tables):
        lines.append(f"[tables.T{t}.fields]")
        lines += [f'f{f} = {{ type = "{types[f % len(types)]}" }}' for f in range(fields)]
    path.mkdir(parents=True)
    (path / "module.toml").write_text("\n".join(lines) + "\n")
    return path


def phase_modules(base: Path, repeat: int) -> dict[str, Any]:
    """(issue 6) Adopt a module of 10 tables x 20 fields into a fresh workspace: validation
    (load_package) and adoption (one schema bundle, projected), each timed; medians."""
    from openprod.engine.manifest import load_package

    pkg_dir = wide_module(base / "wide-module")
    load_ms, adopt_ms = [], []
    for i in range(max(1, repeat)):
        t0 = time.perf_counter()
        pkg = load_package(pkg_dir)
        load_ms.append((time.perf_counter() - t0) * 1000)
        ws = Workspace.create(base / f"modules-{i}", Identity.from_seed(bytes([40 + i]) * 32),
                              "bench")
        t0 = time.perf_counter()
        ws.adopt_module(pkg)
        adopt_ms.append((time.perf_counter() - t0) * 1000)
        assert len(ws.list_tables()) == 10
        ws.close()
    return {"module_tables": 10, "module_fields_per_table": 20,
            "validate_ms": round(statistics.median(load_ms), 1),
            "adopt_ms": round(statistics.median(adopt_ms), 1)}


def phase_rules(base: Path, scale: float, writes: int = 2000) -> dict[str, Any]:
    """(issue 6) Rule evaluation cost per triggering write: 20 rules on a 10 000-record table."""
    n = max(100, round(10_000 * scale))
    ws = Workspace.create(base / "rules", Identity.from_seed(bytes([60]) * 32), "bench")
    fields = [{"label": f"f{i}", "name": f"f{i}", "type": "boolean"} for i in range(10)]
    src = ws.create_table("Source", [{"label": "name", "name": "name", "type": "text"},
                                     *fields]).facet
    targets = [ws.create_table(f"Target{i}", [{"label": "name", "name": "name",
                                               "type": "text"}]).facet for i in range(4)]
    rnd = random.Random(61)
    ids_ = list(ws.create_records(src, [{"name": f"r{i}"} for i in range(n)]).created)
    def plan() -> list[tuple[bytes, str, bool]]:
        return [(rnd.choice(ids_), f"f{rnd.randrange(10)}", rnd.random() < 0.5)
                for _ in range(writes)]

    def run_writes(writes: list[tuple[bytes, str, bool]]) -> list[float]:
        out = []
        for e, f, v in writes:
            t0 = time.perf_counter()
            ws.update_record(e, {f: v}, src)
            out.append(time.perf_counter() - t0)
        return out

    without = run_writes(plan())
    for i in range(20):
        ws.put_rule(None, {
            "label": f"rule {i}", "source": src, "target": targets[i % 4],
            "when": {"field": f"f{i % 10}", "op": "eq", "value": i % 2 == 0},
            "set": [{"field": "name", "copy_from": "name"}],
            "auto_accept": i < 10, "on_condition_lost": "auto_detach" if i < 10 else "ignore",
            "enabled": True})
    spent: list[float] = []
    fire = ws._fire_rules

    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fire(*a, **k)
        finally:
            spent.append(time.perf_counter() - t0)

    ws._fire_rules = timed  # type: ignore[method-assign]
    with_rules = run_writes(plan())  # fresh writes: about half flip some rule's condition
    ws._fire_rules = fire  # type: ignore[method-assign]
    generated = ws.storage.conn.execute(
        "SELECT count(*) FROM ops WHERE t IN ('AttachFacet', 'DetachFacet', 'DeleteEntity')"
    ).fetchone()[0] - n  # minus the import's own AttachFacets
    proposals = len(ws.proposals.all())
    ws.close()
    spent.sort()
    return {"records": n, "rules": 20, "writes": writes,
            "rule_eval_ms_per_write": round(statistics.fmean(spent) * 1000, 3),
            "rule_eval_p99_ms": round(spent[int(len(spent) * 0.99) - 1] * 1000, 3),
            "write_ms_no_rules": round(statistics.fmean(without) * 1000, 3),
            "write_ms_with_rules": round(statistics.fmean(with_rules) * 1000, 3),
            "membership_ops": generated, "open_proposals": proposals}


def run_core(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The original figures: local import, remote ingest, 1 M-op replay, peak memory."""
    out: dict[str, Any] = {}
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
    return out


if __name__ == "__main__":
    sys.exit(main())
