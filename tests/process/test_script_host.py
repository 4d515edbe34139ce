"""The sandbox host as a real child process, driven over its pipes (spec 04 §7.2, scenario 25).

Each test plays the ScriptRunner: it starts `python -m openprod.scripts.host`, writes frames to its
stdin and reads frames from its stdout with a bounded `select`. Every process a test starts is
killed at teardown.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from openprod.scripts.frames import HEADER, FrameReader, encode_frame
from openprod.scripts.host import EXIT_PROTOCOL, command

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 15.0  # generous bound for a frame that must come
Answer = Callable[[str, list[Any]], tuple[bool, Any]]


class HostProc:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(command(), cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.reader = FrameReader()
        self.queue: list[dict[str, Any]] = []

    def send_bytes(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, msg: dict[str, Any]) -> None:
        self.send_bytes(encode_frame(msg))

    def recv(self, timeout: float = WAIT_S) -> dict[str, Any] | None:
        """The next frame, or None if none arrives within `timeout` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not self.queue:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            data = os.read(fd, 65536)
            if not data:
                raise EOFError("the host closed its stdout")
            self.queue.extend(self.reader.feed(data))
        return self.queue.pop(0)

    def start_run(self, source: str, *, run_id: str = "run-1", args: dict[str, Any] | None = None,
                  limits: dict[str, Any] | None = None, grants: list[str] | None = None) -> None:
        self.send({"t": "run", "run_id": run_id, "source": source, "chunk": "<script>",
                   "args": args or {}, "context": {"now": 1_700_000_000_000, "run_id": run_id},
                   "limits": limits or {}, "grants": grants or []})

    def run(self, source: str, answer: Answer | None = None, **kw: Any
            ) -> tuple[dict[str, Any], list[tuple[str, list[Any]]], list[tuple[str, str]]]:
        """A whole run: answers calls with `answer`, returns (done, calls, logs)."""
        self.start_run(source, **kw)
        calls: list[tuple[str, list[Any]]] = []
        logs: list[tuple[str, str]] = []
        while True:
            msg = self.recv()
            assert msg is not None, "the host went quiet"
            if msg["t"] == "done":
                return msg, calls, logs
            if msg["t"] == "log":
                logs.append((msg["level"], msg["msg"]))
            elif msg["t"] == "call":
                calls.append((msg["fn"], msg["args"]))
                ok, value = answer(msg["fn"], msg["args"]) if answer else (True, None)
                reply: dict[str, Any] = {"t": "reply", "id": msg["id"], "ok": ok}
                reply["value" if ok else "error"] = value
                self.send(reply)
            else:
                raise AssertionError(f"unexpected frame {msg}")

    def exit_code(self) -> int:
        return self.proc.wait(timeout=WAIT_S)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


@pytest.fixture
def start_host() -> Iterator[Callable[[], HostProc]]:
    started: list[HostProc] = []

    def start() -> HostProc:
        host = HostProc()
        started.append(host)
        return host

    yield start
    for host in started:
        if host.proc.poll() is None:
            host.proc.kill()
        host.proc.wait(timeout=WAIT_S)
        for f in (host.proc.stdin, host.proc.stdout, host.proc.stderr):
            if f is not None:
                f.close()


def test_ping_and_runs_with_call_round_trips(start_host: Callable[[], HostProc]) -> None:
    host = start_host()
    host.send({"t": "ping"})
    assert host.recv() == {"t": "pong"}

    new_id = "0190a0b0-0000-7000-8000-000000000001"

    def answer(fn: str, args: list[Any]) -> tuple[bool, Any]:
        if fn == "create_entity":
            return True, new_id
        return False, {"code": "NotFound", "message": f"{args[0]} not found"}

    done, calls, logs = host.run(
        """
        local id = core.create_entity("m.T", {name = args.name, n = 3})
        local ok, e = pcall(core.get_field, "nope", "m.T", "name")
        print(id, ok, e.code, e.message)
        core.log("warn", "finished")
        """,
        answer, args={"name": "Ann"},
    )
    assert calls == [("create_entity", ["m.T", {"name": "Ann", "n": 3}]),
                     ("get_field", ["nope", "m.T", "name"])]
    assert logs == [("info", f"{new_id}\tfalse\tNotFound\tnope not found"),
                    ("warn", "finished")]
    assert done == {"t": "done", "run_id": "run-1", "ok": True, "log_truncated": False}

    # the same host serves the next run, in a fresh runtime
    done, _, _ = host.run("assert(rawget(_G, 'leftover') == nil)\nleftover = 1\nerror('x')",
                          run_id="run-2")
    assert done["run_id"] == "run-2"
    assert (done["ok"], done["code"], done["line"]) == (False, "ScriptError", 3)
    assert "<script>:3:" in done["traceback"]

    done, _, _ = host.run('local s = "x" while true do s = s .. s end', run_id="run-3",
                          limits={"memory_mib": 4})
    assert (done["ok"], done["code"]) == (False, "MemoryLimit")
    host.send({"t": "ping"})
    assert host.recv() == {"t": "pong"}


def test_pattern_bomb_is_stopped_by_killing_the_host(start_host: Callable[[], HostProc]) -> None:
    host = start_host()
    host.start_run('local r = ("a"):rep(150):find(".-.-.-.-b")', limits={"timeout_s": 1})
    # time inside string.find never reaches the hook: no answer until the runner kills the host
    assert host.recv(timeout=3.0) is None
    host.proc.kill()
    assert host.exit_code() != 0

    fresh = start_host()
    done, _, logs = fresh.run('print("fresh")', run_id="run-2")
    assert done["ok"] is True
    assert logs == [("info", "fresh")]


def test_eof_between_runs_is_a_clean_exit(start_host: Callable[[], HostProc]) -> None:
    host = start_host()
    host.send({"t": "ping"})
    assert host.recv() == {"t": "pong"}
    assert host.proc.stdin is not None
    host.proc.stdin.close()
    assert host.exit_code() == 0


@pytest.mark.parametrize("garbage", [
    HEADER.pack(5) + b"hello",
    HEADER.pack(2**31) + b"\x00",
    HEADER.pack(0),
    HEADER.pack(3) + cbor2.dumps([1, 2]),
    encode_frame({"t": "dance"}),
    encode_frame({"t": "reply", "id": 1, "ok": True}),
    encode_frame({"t": "run", "run_id": "r"}),
    encode_frame({"t": "run", "run_id": "r", "source": "", "chunk": "c", "args": {},
                  "context": {}, "limits": {"timeout_s": 500}, "grants": []}),
    b"\x00\x00\x00",
])
def test_garbage_on_stdin_ends_the_host(start_host: Callable[[], HostProc],
                                        garbage: bytes) -> None:
    host = start_host()
    host.send_bytes(garbage)
    assert host.proc.stdin is not None
    host.proc.stdin.close()
    assert host.exit_code() == EXIT_PROTOCOL
    assert "protocol error" in host.stderr()


def test_a_wrong_reply_is_a_protocol_error(start_host: Callable[[], HostProc]) -> None:
    host = start_host()
    host.start_run("core.exists('x')")
    call = host.recv()
    assert call is not None and call["t"] == "call" and call["fn"] == "exists"
    host.send({"t": "reply", "id": call["id"] + 1, "ok": True, "value": True})
    assert host.exit_code() == EXIT_PROTOCOL
    assert "expected the reply to call" in host.stderr()
