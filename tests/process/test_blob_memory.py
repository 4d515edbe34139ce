"""Blobs against a real `openprod serve` (spec 03 §7, issue 8): a 1 GiB upload streamed from a
generator keeps the server's peak RSS growth under 64 MiB; `openprod blobs verify` and the
startup housekeeping work on what a served engine stored."""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import trio

from tests.process.conftest import StartServe, run_cli

GIB = 1024 ** 3
BLOCK = 1024 * 1024
MAX_GROWTH = 64 * 1024 * 1024


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """Start VmHWM afresh at the current RSS (Linux ≥ 4.0), so the startup peak does not hide
    what the upload adds."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _stream(total: int, hasher: blake3.blake3) -> Iterator[bytes]:
    """`total` bytes, 1 MiB at a time, never all in memory; each block differs."""
    seed = os.urandom(BLOCK)
    for i in range(total // BLOCK):
        block = i.to_bytes(8, "big") + seed[8:]
        hasher.update(block)
        yield block


def _upload(port: int, token: str, total: int, hasher: blake3.blake3) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/blobs/upload?name=show.mov", body=_stream(total, hasher),
                     headers={"Authorization": f"Bearer {token}",
                              "Content-Type": "video/quicktime",
                              "Content-Length": str(total)})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


async def test_one_gib_upload_keeps_memory_flat(serve: StartServe, tmp_path: Path) -> None:
    s = await serve(tmp_path / "data")
    pid = s.proc.pid
    await s.ok("GET", "/workspace/current")  # every lazy import of a first request is done
    _reset_peak(pid)
    base = _status_kib(pid, "VmRSS") * 1024
    hasher = blake3.blake3()
    t0 = time.monotonic()
    with trio.fail_after(300):
        status, body = await trio.to_thread.run_sync(_upload, s.port, s.token, GIB, hasher)
    elapsed = time.monotonic() - t0
    assert status == 200, body
    up = json.loads(body)
    assert up["size"] == GIB and up["hash"] == hasher.hexdigest()
    peak = _status_kib(pid, "VmHWM") * 1024
    growth = peak - base
    print(f"1 GiB upload: {elapsed:.1f} s ({GIB / elapsed / 1e6:.0f} MB/s), "
          f"peak RSS growth {growth / 2**20:.1f} MiB")
    assert growth < MAX_GROWTH, f"peak RSS grew by {growth / 2**20:.1f} MiB"

    # the file is in place under its hash, and the server can send it back in ranges
    h = up["hash"]
    path = tmp_path / "data" / "workspaces"
    stored = next(path.glob(f"*/blobs/{h[:2]}/{h}"))
    assert stored.stat().st_size == GIB
    r = await s.call("GET", f"/blobs/{h}", headers={"Range": f"bytes={GIB - 4}-"})
    assert r.status == 206 and r.headers["Content-Range"] == f"bytes {GIB - 4}-{GIB - 1}/{GIB}"
    stored.unlink()  # 1 GiB less on the test machine's disk


async def test_verify_and_housekeeping(serve: StartServe, tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = await serve(data)
    hashes = [await trio.to_thread.run_sync(_post_raw, s.port, s.token, content)
              for content in (b"first file " * 1000, b"second file " * 1000)]
    await s.stop()
    ws_dir = next((data / "workspaces").iterdir())
    good, bad = (ws_dir / "blobs" / h[:2] / h for h in hashes)
    raw = bytearray(bad.read_bytes())
    raw[10] ^= 1
    bad.write_bytes(bytes(raw))
    out = await run_cli("blobs", "verify", "--data", str(data))
    assert out.returncode == 1, out.stderr
    text = out.stdout.decode()
    assert "2 files checked, 1 ok, 1 corrupt, 0 missing" in text and hashes[1] in text
    assert good.exists() and not bad.exists()
    clean = await run_cli("blobs", "verify", "--data", str(data))
    assert clean.returncode == 0 and "1 files checked, 1 ok, 0 corrupt" in clean.stdout.decode()

    # a temporary file a crash left a day ago goes at the next start; a fresh one stays
    tmp = ws_dir / "blobs" / ".tmp"
    old, fresh = tmp / "upload.old.part", tmp / "upload.new.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    s2 = await serve(data)
    await s2.ok("GET", "/workspace/current")
    assert not old.exists() and fresh.exists()
    r = await s2.call("GET", f"/blobs/{hashes[0]}")
    assert r.status == 200 and r.body == b"first file " * 1000
    r = await s2.call("GET", f"/blobs/{hashes[1]}")  # known here, no longer on this device
    assert r.status == 202 and r.json()["state"] == "missing"
    r = await s2.call("GET", f"/blobs/{'0' * 64}")
    assert r.status == 404 and r.json()["error"]["code"] == "unavailable"


def _post_raw(port: int, token: str, content: bytes) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/blobs/upload?name=f.txt", body=content, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        return str(json.loads(body)["hash"])
    finally:
        conn.close()
