"""Real `openprod` processes on loopback: start `serve`, parse its URL, talk HTTP, stop it.

Every wait is bounded (`trio.fail_after`); any process a test leaves running is killed at teardown.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests.helpers import isolated_sync

RUNNING = re.compile(r"openprod is running — open (http://127\.0\.0\.1:(\d+))/\?token=(\S+)\n")
READY = re.compile(r"Ctrl\+C stops\n")  # the second line of the banner
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15


def cli_command() -> list[str]:
    return [sys.executable, "-m", "actors.cli"]


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run `openprod ARGS` to completion (bounded), capturing both streams."""
    with trio.fail_after(60):
        return await trio.run_process([*cli_command(), *args], capture_stdout=True,
                                      capture_stderr=True, check=False)


@attrs.define
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Server:
    proc: trio.Process
    data: Path
    stderr_path: Path
    base: str = ""
    port: int = 0
    token: str = ""
    out: bytearray = attrs.field(factory=bytearray)

    @property
    def stdout(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def _read_until(self, pattern: re.Pattern[str]) -> re.Match[str]:
        assert self.proc.stdout is not None
        while (m := pattern.search(self.stdout)) is None:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"serve exited before printing {pattern.pattern!r}:\n"
                                     f"stdout: {self.stdout}\nstderr: {self.stderr}")
            self.out += chunk
        return m

    async def started(self) -> Server:
        with trio.fail_after(START_TIMEOUT_S):
            await self._read_until(READY)
            m = RUNNING.search(self.stdout)
        assert m is not None, self.stdout
        self.base, self.port, self.token = m[1], int(m[2]), m[3]
        return self

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process, wait (bounded) for its exit code and collect the rest of stdout."""
        self.proc.send_signal(sig)
        with trio.fail_after(STOP_TIMEOUT_S):
            rc = await self.proc.wait()
            assert self.proc.stdout is not None
            while chunk := await self.proc.stdout.receive_some():
                self.out += chunk
        return rc

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, *, auth: bool = True) -> Response:
        """A blocking HTTP request (run it with trio.to_thread.run_sync)."""
        h = {"Authorization": f"Bearer {self.token}"} if auth else {}
        h.update(headers or {})
        raw = None
        if body is not None:
            raw = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, raw, h)
            r = conn.getresponse()
            return Response(r.status, r.headers, r.read())
        finally:
            conn.close()

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None, *, auth: bool = True) -> Response:
        return await trio.to_thread.run_sync(
            lambda: self.request(method, path, body, headers, auth=auth))

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        r = await self.call(method, path, body)
        assert r.status == 200, (method, path, r.status, r.body)
        return r.json()


StartServe = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[StartServe]:
    """`await serve(data_dir, *extra_args)` starts `openprod serve --port 0` and waits for its URL.

    `wait=False` returns as soon as the process is spawned (for runs expected to fail).
    """
    procs: list[trio.Process] = []

    async def start(data: Path, *extra: str, wait: bool = True) -> Server:
        err = tmp_path / f"serve-{len(procs)}.stderr"
        with err.open("wb") as err_file:
            proc = await trio.lowlevel.open_process(
                [*cli_command(), "serve", "--port", "0", "--data", str(data),
                 *isolated_sync(extra), *extra],
                stdout=subprocess.PIPE, stderr=err_file,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append(proc)
        server = Server(proc, data, err)
        return await server.started() if wait else server

    yield start
    for p in procs:
        if p.returncode is None:
            p.kill()
            with trio.move_on_after(STOP_TIMEOUT_S):
                await p.wait()
        if p.stdout is not None:
            await p.stdout.aclose()
