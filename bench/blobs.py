"""Blob benchmark (issue 8): upload, peer-to-peer fetch and thumbnail against real engines.

Prints ONE JSON object on stdout (progress goes to stderr). Every figure runs against real
`openprod serve` processes on loopback (HTTP and the WebSocket sync protocol over TCP); the
client is this process and shares the machine's cores with the engines.

  upload_mb_s      a 256 MiB file POSTed raw to `/blobs/upload` on engine A (streamed by the
                   client 1 MiB at a time, never whole in the server's memory), timed from the
                   request to the JSON answer (hashed, fsynced, moved into place). Each run
                   uploads different bytes (no dedupe) and the file is deleted after the run.
                   Best and median of `--repeat` runs. Target >= 300 MB/s. Also: the engine's
                   CPU seconds per upload, and the disk's own pace writing and fsyncing the
                   same bytes from this process just before each run.
  fetch_mb_s       A attaches a 256 MiB file to a record; engine B (joined to A's workspace as
                   a manual peer at A's sync port) receives the record, then `GET /blobs/<hash>`
                   answers 202 {state: fetching} and B pulls the file from A over the sync
                   link's blob lane (8 x 256 KiB requests in flight, hashed in order, verified,
                   fsynced, renamed). Timed from the GET to the first `GET /blobs/<hash>/info`
                   that reads `present` (polled every 10 ms). Target >= 100 MB/s.
                   Each run also reports the CPU seconds both engines used (robust to other
                   load on the machine, unlike the rate).
  thumbnail_ms     a 12-megapixel JPEG (4000 x 3000, made with Pillow) uploaded to A; the first
                   `GET /blobs/<hash>/thumbnail` makes the 256 px PNG (HTTP included), the next
                   one is the cached file. `thumbnail_render_ms` is the rendering alone
                   (`openprod.engine.thumbnails.render`, in this process, median of 5).

Usage: python bench/blobs.py [--scale 1.0] [--repeat 3] [--dir DIR]
                             [--only upload|fetch|thumbnail]
--scale shrinks the file sizes (e.g. --scale 0.1: 25.6 MiB files) for a quick run.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 1024 * 1024
BLOCK = MIB
RUNNING = re.compile(r"openprod is running — open http://127\.0\.0\.1:(\d+)/\?token=(\S+)\n")
SYNC_LINE = re.compile(r"sync port (\d+) on ")
READY = "Ctrl+C stops"
START_TIMEOUT_S = 60
POLL_S = 0.01


def engine_cmd(name: str) -> list[str]:
    """How an engine is started (a profiling run may wrap it, e.g. in cProfile)."""
    return [sys.executable, "-m", "actors.cli"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Engine:
    """One `openprod serve` process on loopback (HTTP port and sync port picked by the OS)."""

    def __init__(self, data: Path, name: str) -> None:
        self.data = data
        self.name = name
        self.err = open(data.parent / f"{name}.stderr", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*engine_cmd(name), "serve", "--port", "0", "--data", str(data),
             "--name", name, "--sync-port", "0", "--sync-host", "127.0.0.1", "--no-discovery"],
            stdout=subprocess.PIPE, stderr=self.err, cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out = ""
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc.stdout is not None
        while READY not in out:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"engine {name} did not start:\n{out}")
            out += line.decode(errors="replace")
        m = RUNNING.search(out)
        s = SYNC_LINE.search(out)
        assert m is not None and s is not None, out
        self.port, self.token, self.sync_port = int(m[1]), m[2], int(s[1])
        self._conn: http.client.HTTPConnection | None = None

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()

    def cpu_s(self) -> float:
        """CPU seconds (user + system, every thread) the engine process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def blob_files(self, h: str) -> list[Path]:
        return list((self.data / "workspaces").glob(f"*/blobs/{h[:2]}/{h}"))

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A JSON request on one kept-alive connection: (status, decoded body)."""
        if self._conn is None:
            self._conn = self.conn()
        h = {"Authorization": f"Bearer {self.token}"}
        raw = None
        if body is not None:
            raw = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        try:
            self._conn.request(method, path, raw, h)
            r = self._conn.getresponse()
        except (http.client.HTTPException, OSError):
            self._conn.close()
            self._conn = self.conn()
            self._conn.request(method, path, raw, h)
            r = self._conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, data

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out = self.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{self.name} {method} {path}: {status} {out!r}")
        return out

    def upload(self, blocks: Iterator[bytes], total: int, name: str, mime: str) -> dict[str, Any]:
        c = self.conn()
        try:
            c.request("POST", f"/blobs/upload?name={name}", body=blocks, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": mime,
                "Content-Length": str(total)})
            r = c.getresponse()
            data = r.read()
        finally:
            c.close()
        if r.status != 200:
            raise RuntimeError(f"upload: {r.status} {data!r}")
        return dict(json.loads(data))

    def get_raw(self, path: str) -> tuple[int, bytes]:
        c = self.conn()
        try:
            c.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def until(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (out := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    return out


def blocks_of(buf: bytearray, tag: int) -> Iterator[bytes]:
    """The buffer with an 8-byte tag in front of every MiB (new bytes for each upload), as
    1 MiB memoryviews: the client never copies the file."""
    for off in range(0, len(buf), BLOCK):
        buf[off:off + 8] = tag.to_bytes(8, "big")
    view = memoryview(buf)
    for off in range(0, len(buf), BLOCK):
        yield view[off:off + BLOCK]  # type: ignore[misc]


def mb_s(n: int, s: float) -> float:
    return round(n / s / 1e6, 1)


def file_size(scale: float) -> int:
    return max(BLOCK, int(256 * MIB * scale) // BLOCK * BLOCK)


def disk_write(base: Path, buf: bytearray) -> float:
    """The disk's own pace for the same work: write the buffer 1 MiB at a time, fsync (MB/s)."""
    path = base / "disk-probe.bin"
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for off in range(0, len(buf), BLOCK):
            f.write(view[off:off + BLOCK])
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return mb_s(len(buf), dt)


def phase_upload(a: Engine, buf: bytearray, repeat: int, base: Path) -> dict[str, Any]:
    rates, disk, cpu = [], [], []
    for i in range(repeat):
        disk.append(disk_write(base, buf))
        c0 = a.cpu_s()
        t0 = time.perf_counter()
        up = a.upload(blocks_of(buf, 1000 + i), len(buf), f"take-{i}.mov", "video/quicktime")
        dt = time.perf_counter() - t0
        cpu.append(a.cpu_s() - c0)
        assert up["size"] == len(buf) and not up["deduped"], up
        rates.append(mb_s(len(buf), dt))
        log(f"upload {i + 1}/{repeat}: {len(buf) / MIB:.0f} MiB in {dt:.2f} s = {rates[-1]} MB/s"
            f" (engine CPU {cpu[-1]:.2f} s; the disk alone: {disk[-1]} MB/s)")
        for p in a.blob_files(up["hash"]):
            p.unlink()  # keep the disk use of repeated runs flat
    return {"upload_mib": len(buf) // MIB, "upload_mb_s": max(rates),
            "upload_mb_s_median": round(statistics.median(rates), 1), "upload_runs": rates,
            "upload_engine_cpu_s_median": round(statistics.median(cpu), 2),
            "disk_write_fsync_mb_s_median": round(statistics.median(disk), 1)}


def link(a: Engine, b: Engine) -> tuple[str, str]:
    """B joins A's workspace with A's sync port as a manual peer (what `openprod connect`
    does); returns (workspace id, the Docs table id) once B holds A's table."""
    ws = a.ok("GET", "/workspace/current")["id"]
    table = a.ok("POST", "/tables/create", {"label": "Docs", "fields": [
        {"label": "Title"}, {"label": "File", "type": "blob_ref"}]})["table"]
    b.ok("POST", "/workspace/join", {"id": ws, "host": "127.0.0.1", "port": a.sync_port})

    def joined() -> bool:
        st = b.ok("GET", "/sync/status")
        return bool(st["workspace_id"] == ws and not st["joining"] and st["connected"] >= 1)

    until("B to join A's workspace", joined)
    until("B to receive the Docs table",
          lambda: any(t["id"] == table for t in b.ok("GET", "/tables/list")["tables"]))
    return ws, table


def phase_fetch(a: Engine, b: Engine, buf: bytearray, repeat: int) -> dict[str, Any]:
    _, table = link(a, b)
    rates, cpu_a, cpu_b = [], [], []
    for i in range(repeat):
        up = a.upload(blocks_of(buf, 2000 + i), len(buf), f"plot-{i}.bin",
                      "application/octet-stream")
        h = up["hash"]
        a.ok("POST", "/records/create", {"table": table,
                                         "values": {"Title": f"plot {i}", "File": h}})
        until("B to receive the attachment",
              lambda h=h: b.call("GET", f"/blobs/{h}/info")[0] == 200)
        ca, cb = a.cpu_s(), b.cpu_s()
        t0 = time.perf_counter()
        status, body = b.call("GET", f"/blobs/{h}")
        assert status == 202 and body["state"] == "fetching", (status, body)

        def present(h: str = h) -> bool:
            st, info = b.call("GET", f"/blobs/{h}/info")
            if st == 200 and info["state"] not in ("present", "fetching"):
                raise RuntimeError(f"fetch ended {info['state']}")
            return st == 200 and info["state"] == "present"

        until("the fetch", present, timeout=600)
        dt = time.perf_counter() - t0
        cpu_a.append(a.cpu_s() - ca)
        cpu_b.append(b.cpu_s() - cb)
        rates.append(mb_s(len(buf), dt))
        log(f"fetch {i + 1}/{repeat}: {len(buf) / MIB:.0f} MiB in {dt:.2f} s = {rates[-1]} MB/s"
            f" (CPU: provider {cpu_a[-1]:.2f} s, fetcher {cpu_b[-1]:.2f} s)")
        stored = b.blob_files(h)[0]
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open(stored, "rb") as f:
            while chunk := f.read(8 * MIB):
                hasher.update(chunk)
        assert hasher.hexdigest() == h, "B stored other bytes"
        for p in (stored, *a.blob_files(h)):
            p.unlink()  # keep the disk use of repeated runs flat
    return {"fetch_mib": len(buf) // MIB, "fetch_mb_s": max(rates),
            "fetch_mb_s_median": round(statistics.median(rates), 1), "fetch_runs": rates,
            "fetch_provider_cpu_s_median": round(statistics.median(cpu_a), 2),
            "fetch_fetcher_cpu_s_median": round(statistics.median(cpu_b), 2)}


def make_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """A 12-megapixel photo-like JPEG: smooth colour fields plus grain (~3-5 MB at q90)."""
    from PIL import Image

    small = Image.frombytes("RGB", (40, 30), os.urandom(40 * 30 * 3))
    im = small.resize((width, height), Image.Resampling.BICUBIC)
    grain = Image.effect_noise((width, height), 24).convert("RGB")
    im = Image.blend(im, grain, 0.15)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def phase_thumbnail(a: Engine, base: Path) -> dict[str, Any]:
    from openprod.engine import thumbnails

    jpeg = make_jpeg()
    up = a.upload(iter([jpeg]), len(jpeg), "stage-photo.jpg", "image/jpeg")
    h = up["hash"]
    t0 = time.perf_counter()
    status, png = a.get_raw(f"/blobs/{h}/thumbnail")
    first = (time.perf_counter() - t0) * 1000
    assert status == 200 and png.startswith(b"\x89PNG"), status
    t0 = time.perf_counter()
    status, _ = a.get_raw(f"/blobs/{h}/thumbnail")
    cached = (time.perf_counter() - t0) * 1000
    assert status == 200
    src = base / "photo.jpg"
    src.write_bytes(jpeg)
    renders = []
    for i in range(5):
        dest = base / f"thumb-{i}.png"
        t0 = time.perf_counter()
        assert thumbnails.render(src, dest)
        renders.append((time.perf_counter() - t0) * 1000)
    log(f"thumbnail: first {first:.0f} ms, cached {cached:.1f} ms")
    return {"thumbnail_jpeg_mb": round(len(jpeg) / 1e6, 2), "thumbnail_ms": round(first, 1),
            "thumbnail_cached_ms": round(cached, 1),
            "thumbnail_render_ms": round(statistics.median(renders), 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir")
    ap.add_argument("--only", choices=["upload", "fetch", "thumbnail"])
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="openprod-bench-blobs-"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENPROD_HOME", str(base / "home"))
    out: dict[str, Any] = {"scale": args.scale, "cpus": os.cpu_count(),
                           "python": platform.python_version(),
                           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    engines: list[Engine] = []
    try:
        size = file_size(args.scale)
        buf = bytearray(os.urandom(size))
        a = Engine(base / "a", "Alex")
        engines.append(a)
        if args.only in (None, "upload"):
            out.update(phase_upload(a, buf, args.repeat, base))
        if args.only in (None, "fetch"):
            b = Engine(base / "b", "Jordan")
            engines.append(b)
            out.update(phase_fetch(a, b, buf, args.repeat))
        if args.only in (None, "thumbnail"):
            out.update(phase_thumbnail(a, base))
        out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for e in engines:
            e.stop()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
