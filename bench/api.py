"""API benchmark: latency of POST /records/update and edit-to-event latency over WebSocket.

Starts a real engine process (`python -m actors.cli serve --port 0 --data <tempdir>`), creates a
table with a few fields and one record per client through the HTTP API, then measures with trio:

  update_1_client    one client on one keep-alive HTTP/1.1 connection updates its own record in
                     a loop (500 requests at --scale 1): p50/p99/mean/max latency (ms) and
                     throughput (requests/s over the whole loop).
  update_20_clients  20 clients, each on its own connection, each updating its own record
                     (100 requests per client at --scale 1), all at once: same figures; latency
                     is per request, throughput is all requests / wall time.
  edit_to_event      client A sends an update over HTTP while client B listens on WebSocket
                     /events; the latency is from just before A sends the request to B receiving
                     the `records_changed` event naming that table and record (300 edits, one at
                     a time, at --scale 1). Targets: p50 < 20 ms, p99 < 100 ms.

The update phases also report the CPU seconds used by the engine (from /proc, Linux only) and
by this client during the timed loop. Each phase is preceded by a few untimed warm-up requests.
The engine is stopped with SIGTERM at the end and its exit code is reported. Prints ONE JSON
object on stdout (progress on stderr).

Usage: python bench/api.py [--scale 1.0] [--clients 20] [--dir DIR]
                           [--profile FILE.prof]   (run the engine under cProfile; event-loop
                                                    thread only, worker threads are not seen)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[1]
URL_RE = re.compile(r"open (http://127\.0\.0\.1:(\d+))/\?token=(\S+)")
START_TIMEOUT_S = 60
PHASE_TIMEOUT_S = 600
WARMUP = 20
TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0

FIELDS: list[dict[str, Any]] = [
    {"label": "Name", "type": "text"},
    {"label": "Qty", "type": "integer"},
    {"label": "Status", "type": "enum", "options": {"choices": ["todo", "doing", "done"]}},
    {"label": "Notes", "type": "text"},
]
STATUSES = ("todo", "doing", "done")


def log(msg: str) -> None:
    print(f"[bench/api] {msg}", file=sys.stderr, flush=True)


# --- engine process ---------------------------------------------------------------------------

class Engine:
    """The engine as a child process; its stdout is parsed for the URL, then drained."""

    def __init__(self, data: Path, profile: str | None) -> None:
        self.data = data
        self.log_path = data.parent / "engine.log"
        args = ["serve", "--port", "0", "--data", str(data)]
        if profile:
            code = ("import cProfile, sys; from actors.cli import main; "
                    "p = cProfile.Profile(); rc = p.runcall(main, sys.argv[1:]); "
                    f"p.dump_stats({profile!r}); sys.exit(rc)")
            cmd = [sys.executable, "-c", code, *args]
        else:
            cmd = [sys.executable, "-m", "actors.cli", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        self.lines: list[str] = []
        self.url, self.port, self.token = self._wait_url()
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_url(self) -> tuple[str, int, str]:
        assert self.proc.stdout is not None
        found: list[tuple[str, int, str]] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                m = URL_RE.search(line)
                if m:
                    found.append((m.group(1), int(m.group(2)), m.group(3)))
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(START_TIMEOUT_S)
        if not found:
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(f"the engine did not start (exit {self.proc.returncode}); "
                             f"stdout: {self.lines!r}; log: {self.log_path}")
        return found[0]

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                log("the engine did not stop within 30 s of SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


# --- a tiny keep-alive HTTP/1.1 client -----------------------------------------------------------

class HttpError(Exception):
    pass


class Http:
    """One persistent HTTP/1.1 connection; Content-Length framing (chunked is understood too)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()

    async def connect(self) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.buf.clear()

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        if self.stream is None:
            await self.connect()
        assert self.stream is not None
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\n"
                "Accept: application/json\r\n"
                "Connection: keep-alive\r\n")
        if method != "GET" or data:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        await self.stream.send_all(head.encode() + b"\r\n" + data)
        status, headers = await self._read_head()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._read_chunked()
        elif "content-length" in headers:
            payload = await self._read_exact(int(headers["content-length"]))
        else:
            raise HttpError(f"{method} {path}: response without Content-Length: {headers}")
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        out = json.loads(payload) if payload else None
        if status != 200:
            raise HttpError(f"{method} {path} -> {status}: {out}")
        return out

    async def _fill(self) -> None:
        assert self.stream is not None
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise HttpError("the server closed the connection")
        self.buf += chunk

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        raw = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end + 4]
        status_line, *lines = raw.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    async def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def _read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            await self._fill()
        out = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return out

    async def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int((await self._read_line()).split(b";")[0], 16)
            if size == 0:
                while await self._read_line():
                    pass
                return bytes(out)
            out += await self._read_exact(size)
            await self._read_line()


# --- statistics ------------------------------------------------------------------------------

def pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, math.ceil(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[k]


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the engine and by this client process during a phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.engine0 = cpu_seconds(pid)
        self.client0 = time.process_time()

    def figures(self, wall_s: float) -> dict[str, Any]:
        engine1 = cpu_seconds(self.pid)
        out: dict[str, Any] = {"client_cpu_s": round(time.process_time() - self.client0, 3)}
        if self.engine0 is not None and engine1 is not None:
            out["engine_cpu_s"] = round(engine1 - self.engine0, 3)
            out["engine_cpu_util"] = round((engine1 - self.engine0) / wall_s, 2)
        return out


def summary(lat_s: list[float], wall_s: float | None = None) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in lat_s)
    out: dict[str, Any] = {
        "requests": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else None,
        "min_ms": round(ms[0], 3) if ms else None,
        "max_ms": round(ms[-1], 3) if ms else None,
    }
    if wall_s is not None:
        out["wall_s"] = round(wall_s, 3)
        out["throughput_rps"] = round(len(ms) / wall_s, 1) if wall_s > 0 else None
    return out


# --- phases ----------------------------------------------------------------------------------

def values(i: int) -> dict[str, Any]:
    return {"Name": f"item {i}", "Qty": i, "Status": STATUSES[i % 3]}


async def setup(port: int, token: str, n_records: int) -> tuple[str, list[str]]:
    http = Http(port, token)
    try:
        t = await http.request("POST", "/tables/create", {"label": "Bench", "fields": FIELDS})
        table = t["table"]
        records = []
        for i in range(n_records):
            r = await http.request("POST", "/records/create",
                                   {"table": table, "values": {**values(i), "Notes": "bench"}})
            records.append(r["id"])
        return table, records
    finally:
        await http.aclose()


async def client_loop(http: Http, table: str, record: str, n: int, lat: list[float],
                      start: int = 0) -> None:
    for i in range(start, start + n):
        t0 = time.perf_counter()
        await http.request("POST", "/records/update",
                           {"id": record, "table": table, "values": values(i)})
        lat.append(time.perf_counter() - t0)


async def update_phase(pid: int, port: int, token: str, table: str, records: list[str],
                       per_client: int) -> dict[str, Any]:
    clients = [Http(port, token) for _ in records]
    try:
        for c in clients:
            await c.connect()
        async with trio.open_nursery() as n:  # warm-up, not timed
            for c, rec in zip(clients, records, strict=True):
                n.start_soon(client_loop, c, table, rec, max(1, WARMUP // len(records)), [])
        lat: list[float] = []
        cpu = CpuMeter(pid)
        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            for c, rec in zip(clients, records, strict=True):
                n.start_soon(client_loop, c, table, rec, per_client, lat, 1000)
        wall = time.perf_counter() - t0
        out = summary(lat, wall)
        out.update(cpu.figures(wall))
        out["clients"] = len(clients)
        out["requests_per_client"] = per_client
        return out
    finally:
        for c in clients:
            await c.aclose()


async def event_phase(url: str, port: int, token: str, table: str, record: str,
                      edits: int) -> dict[str, Any]:
    ws_url = url.replace("http://", "ws://") + f"/events?token={token}"
    http = Http(port, token)
    send, recv = trio.open_memory_channel[tuple[float, dict[str, Any]]](10_000)
    lat: list[float] = []
    http_lat: list[float] = []
    other_events = 0
    async with open_websocket_url(ws_url) as ws:
        hello = json.loads(await ws.get_message())
        if hello.get("type") != "hello":
            raise HttpError(f"expected hello on /events, got {hello}")

        async def reader() -> None:
            while True:
                msg = await ws.get_message()
                send.send_nowait((time.perf_counter(), json.loads(msg)))

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await http.connect()

            async def one(i: int, timed: bool) -> None:
                nonlocal other_events
                t0 = time.perf_counter()
                await http.request("POST", "/records/update",
                                   {"id": record, "table": table, "values": values(i)})
                t_http = time.perf_counter() - t0
                with trio.fail_after(30):
                    while True:
                        t_ev, ev = await recv.receive()
                        if (ev.get("type") == "records_changed" and ev.get("table") == table
                                and record in ev.get("entity_ids", [])):
                            break
                        other_events += 1
                if timed:
                    lat.append(t_ev - t0)
                    http_lat.append(t_http)

            for i in range(WARMUP):
                await one(5000 + i, False)
            for i in range(edits):
                await one(10_000 + i, True)
            n.cancel_scope.cancel()
    await http.aclose()
    out = summary(lat)
    out["edits"] = out.pop("requests")
    out["http_response"] = {k: v for k, v in summary(http_lat).items() if k != "requests"}
    out["unrelated_events_seen"] = other_events
    out["target_p50_ms"] = TARGET_P50_MS
    out["target_p99_ms"] = TARGET_P99_MS
    out["meets_target"] = bool(out["p50_ms"] < TARGET_P50_MS and out["p99_ms"] < TARGET_P99_MS)
    return out


async def run(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    port, token = engine.port, engine.token
    n1 = max(1, round(500 * args.scale))
    nper = max(1, round(100 * args.scale))
    nedits = max(1, round(300 * args.scale))
    with trio.fail_after(PHASE_TIMEOUT_S):
        log(f"engine on port {port}; creating a table and {args.clients + 1} records")
        table, records = await setup(port, token, args.clients + 1)
        log(f"1 client x {n1} updates")
        one = await update_phase(engine.proc.pid, port, token, table, records[:1], n1)
        log(f"  p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms, {one['throughput_rps']} req/s")
        log(f"{args.clients} clients x {nper} updates")
        many = await update_phase(engine.proc.pid, port, token, table,
                                  records[1:args.clients + 1], nper)
        log(f"  p50 {many['p50_ms']} ms, p99 {many['p99_ms']} ms, "
            f"{many['throughput_rps']} req/s")
        log(f"edit-to-event x {nedits}")
        ev = await event_phase(engine.url, port, token, table, records[0], nedits)
        log(f"  p50 {ev['p50_ms']} ms, p99 {ev['p99_ms']} ms")
    return {"update_1_client": one, f"update_{args.clients}_clients": many,
            "edit_to_event": ev}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the request counts (500 / 100 per client / 300 edits)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    ap.add_argument("--dir", help="work directory (kept); default a temporary one (removed)")
    ap.add_argument("--profile", metavar="FILE",
                    help="run the engine under cProfile and write its stats to FILE")
    args = ap.parse_args()

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="openprod-bench-api-"))
    base.mkdir(parents=True, exist_ok=True)
    data = base / "home"
    profile = str(Path(args.profile).resolve()) if args.profile else None
    t_start = time.perf_counter()
    engine = Engine(data, profile)
    log(f"engine pid {engine.proc.pid} started in {time.perf_counter() - t_start:.2f} s "
        f"({engine.url})")
    result: dict[str, Any] = {"bench": "api", "scale": args.scale}
    try:
        result.update(trio.run(run, engine, args))
    finally:
        rc = engine.stop()
        log(f"engine exited with {rc}")
    result["engine_exit_code"] = rc
    result["engine_stdout_tail"] = engine.lines[-2:]
    result["python"] = platform.python_version()
    result["platform"] = platform.platform()
    result["cpus"] = os.cpu_count()
    if profile:
        result["profile"] = profile
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
