"""Browser UI benchmark (issue 9): first grid paint, scroll frame time, edit-to-cell across nodes.

Prints ONE JSON object on stdout (progress and a PASS/MISS table go to stderr). Every figure runs
Playwright on Debian's Chromium (/usr/bin/chromium, headless) against real `openprod serve`
processes on loopback; the browser, the engines and this process share the machine's cores.

The workspace is built before serving, as bench/core.py does: `openprod init`, then the engine
facade creates a table "Cues" (Name, Time, Page, Notes, Done) and imports N records
(`Workspace.create_records`, N = 10 000 x --scale); then `openprod serve` opens it.

  first_paint_ms   a fresh browser context opens the engine's link (the table is the one the
                   app shows first); measured from navigation start (performance.timeOrigin)
                   to the paint of the frame in which the first `table.grid tbody tr` exists:
                   a MutationObserver sees the row, a requestAnimationFrame callback then waits
                   for that frame, and a message posted from it runs after the frame is painted.
                   Median (and each run) over --repeat fresh contexts. Target < 1000 ms.
                   `first_row_ms` is when the row entered the DOM; `records_list_fetch_ms`
                   gives, per run, when the page's first GET /records/list was sent, its
                   first byte and its last byte arrived (Resource Timing, same time origin).
  scroll_frame_ms  the grid's scroll container is scrolled from top to bottom through every
                   row, one step per animation frame (--frames steps: a fling, like dragging
                   the scroll bar; ~600 px a frame at 10 000 rows); then `scroll_steady_*`:
                   the same number of frames at 120 px a frame from the top (a brisk wheel or
                   trackpad scroll, ~3 rows a frame). Per frame, the work time
                   is from the frame's start (the rAF timestamp) to a message posted from the
                   rAF callback, which runs once the frame's scroll handlers, rAF callbacks,
                   style, layout and paint are done. p50 / p95 / max of that work time; target
                   p95 < 16 ms (the 60 Hz frame budget). Also the p95 of the interval between
                   frames and the share of frame intervals longer than 1.5 vsyncs at 60 Hz
                   (dropped frames), and the main thread's time per frame in script, style,
                   layout and all tasks (CDP Performance metrics; the rest of a task is
                   mostly paint and compositing).
  edit_to_cell_ms  engine B joins A's workspace (manual peer at A's sync port) and catches up;
                   B's browser shows the same table. Each of --edits edits sets the Name of the
                   first record through A's HTTP API (`POST /records/update`); timed from just
                   before the request until a MutationObserver in B's page sees that record's
                   Name cell show the new text (wall clocks of this process and of the page:
                   the same machine clock). p50 / p95 / max; target p50 < 50 ms.

Usage: python bench/ui.py [--scale 1.0 | --quick] [--repeat 3] [--frames 600] [--edits 30]
                          [--only paint|scroll|latency] [--dir DIR]
       (--quick = --scale 0.1 --repeat 1 --frames 200 --edits 10: a smoke run in ~1 minute)
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
URL_RE = re.compile(r"open (http://127\.0\.0\.1:(\d+))/\?token=(\S+)")
START_TIMEOUT_S = 120
LINK = ["--no-discovery", "--sync-port", "0", "--sync-host", "127.0.0.1"]
TARGET_PAINT_MS = 1000.0
TARGET_FRAME_P95_MS = 16.0
TARGET_EDIT_P50_MS = 50.0
VSYNC_MS = 1000 / 60
STEADY_PX = 120  # a brisk wheel or trackpad scroll: ~3 rows a frame, 7 200 px/s
VIEWPORT = {"width": 1280, "height": 760}


def log(msg: str) -> None:
    print(f"[bench/ui] {msg}", file=sys.stderr, flush=True)


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))]


def r1(x: float) -> float:
    return round(x, 1)


# --- engines ----------------------------------------------------------------------------------

class Engine:
    """`openprod serve` as a child process; its stdout is read for the URL, then drained."""

    def __init__(self, data: Path, name: str) -> None:
        self.name = name
        self.log_path = data.parent / f"{data.name}.log"
        cmd = [sys.executable, "-m", "actors.cli", "serve", "--port", "0", "--data", str(data),
               "--name", name, *LINK]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        found: list[tuple[str, int, str]] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                m = URL_RE.search(line)
                if m and not found:
                    found.append((m.group(1), int(m.group(2)), m.group(3)))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not found and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not found:
            self.stop()
            raise SystemExit(f"{name}: the engine did not start; stdout {self.lines!r}; "
                             f"log {self.log_path}")
        base, self.port, self.token = found[0]
        self.url = f"{base}/?token={self.token}"
        self._conn: http.client.HTTPConnection | None = None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request on a kept-alive connection; anything but 200 raises."""
        h = {"Authorization": f"Bearer {self.token}"}
        raw = None
        if body is not None:
            raw = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self._conn.request(method, path, raw, h)
                r = self._conn.getresponse()
                data = r.read()
                break
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        if r.status != 200:
            raise RuntimeError(f"{self.name} {method} {path}: {r.status} {data!r}")
        return json.loads(data)

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def until(what: str, check: Any, timeout: float = 300, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while not (out := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)
    return out


def build_workspace(data: Path, n: int) -> None:
    """`openprod init` for Alex, then a table "Cues" with n records imported by the facade."""
    subprocess.run([sys.executable, "-m", "actors.cli", "init", "--data", str(data),
                    "--name", "Alex", "--workspace-name", "UI bench"],
                   cwd=ROOT, check=True, capture_output=True)
    from openprod.core import identity as idm
    from openprod.engine.workspace import OPLOG_FILE, Workspace

    (wsdir,) = [p for p in (data / "workspaces").iterdir() if (p / OPLOG_FILE).exists()]
    ws = Workspace.open(wsdir, idm.load(data / "identity.json"))
    try:
        ws.create_table("Cues", [{"label": "Name", "type": "text"},
                                 {"label": "Time", "type": "text"},
                                 {"label": "Page", "type": "integer"},
                                 {"label": "Notes", "type": "text"},
                                 {"label": "Done", "type": "boolean"}])
        (table,) = ws.list_tables()
        f = {x["label"]: x["name"] for x in table["fields"]}
        ws.create_records(table["id"], [
            {f["Name"]: f"Cue {i + 1}", f["Time"]: f"{10 + i // 3600 % 10}:{i // 60 % 60:02d}",
             f["Page"]: 1 + i // 20, f["Notes"]: "check the follow spot" if i % 7 == 0 else "",
             f["Done"]: i % 3 == 0}
            for i in range(n)])
    finally:
        ws.close()


# --- browser ----------------------------------------------------------------------------------

# Installed before the page's own scripts: the time the first grid row exists and the time the
# frame showing it has been painted (a message posted from that frame's rAF runs after paint).
PAINT_PROBE = """
(() => {
  window.__firstRow = null; window.__painted = null;
  const seen = () => {
    if (window.__firstRow !== null) return;
    if (!document.querySelector('table.grid tbody tr')) return;
    window.__firstRow = performance.now();
    obs.disconnect();
    requestAnimationFrame(() => {
      const ch = new MessageChannel();
      ch.port1.onmessage = () => { window.__painted = performance.now(); };
      ch.port2.postMessage(0);
    });
  };
  const obs = new MutationObserver(seen);
  obs.observe(document, {childList: true, subtree: true});
})();
"""

# The scroll container of the grid: the nearest ancestor of the table that scrolls vertically.
FIND_SCROLLER = """
() => {
  let el = document.querySelector('table.grid');
  while (el && el !== document.body) {
    const s = getComputedStyle(el);
    if (/(auto|scroll)/.test(s.overflowY) && el.scrollHeight > el.clientHeight + 1) {
      el.setAttribute('data-bench-scroller', '');
      return {scrollHeight: el.scrollHeight, clientHeight: el.clientHeight,
              tag: el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                   (el.className ? '.' + String(el.className).split(' ').join('.') : '')};
    }
    el = el.parentElement;
  }
  return null;
}
"""

# One scroll step per animation frame from top to bottom; per frame: its start (rAF timestamp),
# and when its work (scroll handlers, rAF callbacks, style, layout, paint) was done.
SCROLL_RUN = """
async ([frames, stepPx]) => {
  const sc = document.querySelector('[data-bench-scroller]');
  sc.scrollTop = 0;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const max = sc.scrollHeight - sc.clientHeight;
  const to = (i) => stepPx ? Math.min(max, stepPx * i) : Math.round(max * i / frames);
  const starts = [], work = [];
  await new Promise(done => {
    let i = 0;
    const step = (ts) => {
      starts.push(ts);
      const ch = new MessageChannel();
      ch.port1.onmessage = () => work.push(performance.now() - ts);
      ch.port2.postMessage(0);
      i += 1;
      if (i > frames) { setTimeout(done, 50); return; }
      sc.scrollTop = to(i);
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  });
  const rows = document.querySelectorAll('table.grid tbody tr');
  const last = rows.length ? rows[rows.length - 1].getAttribute('aria-rowindex') : null;
  return {starts, work: work.slice(1), domRows: rows.length, lastRowIndex: last,
          scrollTop: sc.scrollTop, max};
}
"""

# Resolve when the Name cell of one record shows the expected text; the time is page wall clock.
WATCH_CELL = """
([id, label, want]) => {
  window.__hit = null;
  const cellText = () => {
    const td = document.querySelector(
      `table.grid tbody tr[data-id="${id}"] td[data-label="${label}"]`);
    return td ? td.textContent.trim() : null;
  };
  const check = () => {
    if (window.__hit === null && cellText() === want) {
      window.__hit = performance.timeOrigin + performance.now();
      window.__watch.disconnect();
    }
  };
  if (window.__watch) window.__watch.disconnect();
  window.__watch = new MutationObserver(check);
  window.__watch.observe(document.body, {childList: true, subtree: true, characterData: true});
  check();
}
"""


def new_page(browser: Any, url: str, errors: list[str], probe: bool = False) -> Any:
    ctx = browser.new_context(viewport=VIEWPORT)
    if probe:
        ctx.add_init_script(PAINT_PROBE)
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.goto(url)
    return page


def phase_paint(browser: Any, url: str, n: int, repeat: int, errors: list[str]) -> dict[str, Any]:
    runs, rows = [], []
    fetches: list[list[float]] = []
    for i in range(repeat):
        page = new_page(browser, url, errors, probe=True)
        page.wait_for_function("window.__painted !== null", timeout=120_000)
        painted, first, lists = page.evaluate(
            "[window.__painted, window.__firstRow, performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('/records/list'))"
            ".map(e => [e.startTime, e.responseStart, e.responseEnd])]")
        if lists:  # the first records/list: request sent, first byte, last byte
            fetches.append(lists[0])
        runs.append(painted)
        rows.append(first)
        log(f"paint run {i + 1}: first row {first:.0f} ms, painted {painted:.0f} ms")
        page.context.close()
    med = statistics.median(runs)
    return {"first_paint_ms": r1(med), "first_paint_runs_ms": [r1(x) for x in runs],
            "first_row_ms": r1(statistics.median(rows)), "first_paint_rows": n,
            "records_list_fetch_ms": [[r1(x) for x in f] for f in fetches],
            "first_paint_target_ms": TARGET_PAINT_MS, "first_paint_met": med < TARGET_PAINT_MS}


def metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def phase_scroll(browser: Any, url: str, n: int, frames: int, errors: list[str]
                 ) -> dict[str, Any]:
    page = new_page(browser, url, errors)
    page.locator("table.grid tbody tr").first.wait_for(timeout=120_000)
    page.wait_for_function(f"document.querySelectorAll('table.grid tbody tr').length >= "
                           f"{min(n, 10)}", timeout=120_000)
    page.wait_for_function(f"({FIND_SCROLLER})() !== null", timeout=60_000)
    sc = page.evaluate(FIND_SCROLLER)
    log(f"scroll: {sc['tag']} {sc['scrollHeight']} px high, {frames} frames top to bottom, "
        f"then {frames} frames of {STEADY_PX} px")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    out = {"scroll_px": sc["scrollHeight"], "scroll_frame_target_p95_ms": TARGET_FRAME_P95_MS}
    for key, step in (("scroll", None), ("scroll_steady", STEADY_PX)):
        before = metrics(cdp)
        res = page.evaluate(SCROLL_RUN, [frames, step])
        after = metrics(cdp)
        out.update(scroll_figures(key, res, before, after, frames))
    page.context.close()
    return out


def scroll_figures(key: str, res: dict[str, Any], before: dict[str, float],
                   after: dict[str, float], frames: int) -> dict[str, Any]:
    work = res["work"]
    gaps = [b - a for a, b in itertools.pairwise(res["starts"])]
    p95 = pct(work, 95)
    # where the main thread's time went, per frame (CDP Performance metrics)
    split = {k: r1((after[m] - before[m]) * 1000 / frames) for k, m in (
        ("script", "ScriptDuration"), ("style", "RecalcStyleDuration"),
        ("layout", "LayoutDuration"), ("all_tasks", "TaskDuration"))}
    return {f"{key}_frame_ms": {"p50": r1(pct(work, 50)), "p95": r1(p95),
                                "max": r1(max(work))},
            f"{key}_interval_ms": {"p50": r1(pct(gaps, 50)), "p95": r1(pct(gaps, 95)),
                                   "max": r1(max(gaps))},
            f"{key}_main_thread_ms_per_frame": split,
            f"{key}_dropped_share": round(sum(g > 1.5 * VSYNC_MS for g in gaps) / len(gaps), 3),
            f"{key}_frames": len(work),
            f"{key}_px_per_frame": round(res["scrollTop"] / frames),
            f"{key}_dom_rows_at_end": res["domRows"],
            f"{key}_last_row_index": res["lastRowIndex"],
            f"{key}_met": p95 < TARGET_FRAME_P95_MS}


def phase_latency(browser: Any, a: Engine, base: Path, n: int, edits: int,
                  errors: list[str], stop: list[Engine]) -> dict[str, Any]:
    ws = a.ok("GET", "/workspace/current")["id"]
    port = a.ok("GET", "/sync/status")["port"]
    (table,) = a.ok("GET", "/tables/list")["tables"]
    name = {f["label"]: f["name"] for f in table["fields"]}["Name"]
    b = Engine(base / "b", "Jordan")
    stop.append(b)
    t0 = time.perf_counter()
    b.ok("POST", "/workspace/join", {"id": ws, "host": "127.0.0.1", "port": port})
    want = a.ok("GET", "/workspace/state")

    def caught_up() -> bool:
        try:
            return bool(b.ok("GET", "/workspace/state") == want)
        except RuntimeError:
            return False
    until("B to catch up with A", caught_up, every=1.0)
    catchup = time.perf_counter() - t0
    log(f"latency: B caught up with {n} records in {catchup:.1f} s")
    first = a.ok("GET", f"/records/list?table={table['id']}")["records"][0]["id"]
    page = new_page(browser, b.url, errors)
    page.locator(f'table.grid tbody tr[data-id="{first}"] td[data-label="Name"]').wait_for(
        timeout=120_000)
    page.wait_for_function("document.querySelector('#conn')?.textContent.trim() === 'Live'",
                           timeout=60_000)
    out: list[float] = []
    for i in range(edits + 1):  # the first edit warms both engines and the page up
        text = f"Cue 1 · edit {i}"
        page.evaluate(WATCH_CELL, [first, "Name", text])
        sent = time.time() * 1000
        a.ok("POST", "/records/update", {"id": first, "values": {name: text}})
        page.wait_for_function("window.__hit !== null", timeout=60_000)
        if i:
            out.append(page.evaluate("window.__hit") - sent)
        if i % 10 == 0 and i:
            log(f"latency: {i} edits, last {out[-1]:.0f} ms")
    page.context.close()
    p50 = pct(out, 50)
    return {"edit_to_cell_ms": {"p50": r1(p50), "p95": r1(pct(out, 95)), "max": r1(max(out))},
            "edit_to_cell_edits": len(out), "edit_to_cell_rows": n,
            "catchup_s": r1(catchup), "edit_to_cell_target_p50_ms": TARGET_EDIT_P50_MS,
            "edit_to_cell_met": p50 < TARGET_EDIT_P50_MS}


def table_lines(out: dict[str, Any]) -> list[str]:
    rows = []
    if "first_paint_ms" in out:
        rows.append((f"first grid paint, {out['first_paint_rows']} rows",
                     f"{out['first_paint_ms']:.0f} ms", "< 1000 ms", out["first_paint_met"]))
    if "scroll_frame_ms" in out:
        rows.append((f"scroll frame work p95, fling ({out['scroll_px_per_frame']} px/frame)",
                     f"{out['scroll_frame_ms']['p95']} ms", "< 16 ms", out["scroll_met"]))
        rows.append((f"scroll frame work p95, steady ({STEADY_PX} px/frame)",
                     f"{out['scroll_steady_frame_ms']['p95']} ms", "< 16 ms",
                     out["scroll_steady_met"]))
    if "edit_to_cell_ms" in out:
        e = out["edit_to_cell_ms"]
        rows.append(("edit on A -> cell in B's browser p50 (p95)",
                     f"{e['p50']} ms ({e['p95']} ms)", "p50 < 50 ms", out["edit_to_cell_met"]))
    w = max(len(r[0]) for r in rows) if rows else 0
    lines = [f"{'figure':<{w}}  {'measured':>18}  {'target':>11}  status"]
    for label, got, target, met in rows:
        lines.append(f"{label:<{w}}  {got:>18}  {target:>11}  {'PASS' if met else 'MISS'}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="rows = 10 000 x scale")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --scale 0.1 --repeat 1 --frames 200 --edits 10")
    ap.add_argument("--repeat", type=int, default=3, help="first-paint runs (median)")
    ap.add_argument("--frames", type=int, default=600, help="scroll steps, one per frame")
    ap.add_argument("--edits", type=int, default=30, help="timed edits A -> B")
    ap.add_argument("--only", choices=["paint", "scroll", "latency"])
    ap.add_argument("--dir", help="work directory (kept); default a temporary one (removed)")
    args = ap.parse_args()
    if args.quick:
        args.scale, args.repeat, args.frames, args.edits = 0.1, 1, 200, 10
    if not CHROMIUM.exists():
        raise SystemExit(f"Chromium is missing at {CHROMIUM} (apt-get install chromium)")
    n = max(1, round(10_000 * args.scale))
    base = Path(args.dir or tempfile.mkdtemp(prefix="openprod-bench-ui-"))
    base.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"scale": args.scale, "rows": n, "cpus": os.cpu_count(),
                           "python": platform.python_version(),
                           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    engines: list[Engine] = []
    errors: list[str] = []
    try:
        log(f"building a workspace with {n} records")
        t0 = time.perf_counter()
        build_workspace(base / "a", n)
        out["build_s"] = r1(time.perf_counter() - t0)
        a = Engine(base / "a", "Alex")
        engines.append(a)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            out["chromium"] = browser.version
            try:
                if args.only in (None, "paint"):
                    out.update(phase_paint(browser, a.url, n, args.repeat, errors))
                if args.only in (None, "scroll"):
                    out.update(phase_scroll(browser, a.url, n, args.frames, errors))
                if args.only in (None, "latency"):
                    out.update(phase_latency(browser, a, base, n, args.edits, errors, engines))
            finally:
                browser.close()
        out["page_errors"] = errors
        out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for e in engines:
            e.stop()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    for line in table_lines(out):
        print(line, file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
