"""The sandbox host process, `python -m openprod.scripts.host` (spec 04 §7.2).

Owns the host side of the ScriptRunner pipe: frames (`frames`) on stdin/stdout, one run at a time,
each in a fresh sandbox (`sandbox.run_script`). Nothing but frames is ever written to stdout:
fd 1 is moved aside at start and `print`, logging and C libraries write to stderr instead.

Runner → host:  {"t": "ping"}
                {"t": "run", "run_id", "source", "chunk", "args", "context", "limits", "grants"}
                {"t": "reply", "id", "ok", "value"? | "error"?}   (only while a call waits)
Host → runner:  {"t": "pong"}
                {"t": "call", "id", "fn", "args"}   then blocks for the matching reply
                {"t": "log", "level", "msg"}
                {"t": "done", "run_id", "ok", "code"?, "message"?, "line"?, "traceback"?,
                 "error_code"?, "log_truncated"}

Any protocol error (bad frame, unexpected frame, wrong reply id) ends the process with exit
status 2, a broken pipe with 3; a clean EOF on stdin between runs ends it with 0. Time limits are
the runner's: it kills this process when a run overruns (time inside a C call never reaches the
Lua hook). SIGINT is ignored so a terminal's Ctrl+C leaves stopping the host to the runner.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, BinaryIO

from openprod.scripts.frames import (
    FrameError,
    encode_frame,
    read_frame,
    write_encoded,
    write_frame,
)
from openprod.scripts.sandbox import Limits, run_script

ADDRESS_SPACE_LIMIT = 1 << 30
EXIT_PROTOCOL = 2
EXIT_PIPE = 3


class ProtocolError(Exception):
    """The runner broke the protocol: the host stops."""


def command() -> list[str]:
    """The argv that starts a host (for `trio.lowlevel.open_process`)."""
    return [sys.executable, "-m", "openprod.scripts.host"]


class Host:
    """Serves frames from `inp`, answers on `out` (both binary, blocking)."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self.inp = inp
        self.out = out
        self.next_id = 0

    def serve(self) -> None:
        """Until a clean EOF; raises ProtocolError/FrameError on a broken peer."""
        while True:
            msg = read_frame(self.inp)
            if msg is None:
                return
            t = msg.get("t")
            if t == "ping":
                write_frame(self.out, {"t": "pong"})
            elif t == "run":
                self._run(msg)
            else:
                raise ProtocolError(f"unexpected frame {t!r}")

    def _run(self, msg: dict[str, Any]) -> None:
        run_id = _field(msg, "run_id", str)
        source = _field(msg, "source", str)
        chunk = _field(msg, "chunk", str)
        args = _field(msg, "args", dict)
        context = _field(msg, "context", dict)
        grants = _field(msg, "grants", list)
        if not all(isinstance(g, str) for g in grants):
            raise ProtocolError("grants must be strings")
        try:
            limits = Limits.from_wire(_field(msg, "limits", dict))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad limits: {exc}") from exc
        outcome = run_script(source, chunk=chunk, args=args, context=context, limits=limits,
                             grants=set(grants), call=self._call, log=self._log)
        write_frame(self.out, {"t": "done", "run_id": run_id, **outcome.to_wire()})

    def _call(self, fn: str, args: list[Any]) -> tuple[bool, Any]:
        self.next_id += 1
        call_id = self.next_id
        try:
            frame = encode_frame({"t": "call", "id": call_id, "fn": fn, "args": args})
        except FrameError as exc:  # e.g. nested too deep for the codec once framed
            return False, {"code": "BadArgument",
                           "message": f"{fn}: arguments cannot be sent: {exc.message}"}
        write_encoded(self.out, frame)
        reply = read_frame(self.inp)
        if reply is None:
            raise ProtocolError("the runner closed the pipe during a call")
        if reply.get("t") != "reply" or reply.get("id") != call_id:
            raise ProtocolError(f"expected the reply to call {call_id}, got {reply!r:.200}")
        ok = reply.get("ok")
        if ok is True:
            return True, reply.get("value")
        if ok is False:
            error = reply.get("error")
            if isinstance(error, dict) and isinstance(error.get("code"), str):
                return False, error
        raise ProtocolError(f"malformed reply {reply!r:.200}")

    def _log(self, level: str, msg: str) -> None:
        write_frame(self.out, {"t": "log", "level": level, "msg": msg})


def _field(msg: dict[str, Any], key: str, kind: type) -> Any:
    value = msg.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"run frame: {key} must be a {kind.__name__}")
    return value


def _claim_stdout() -> BinaryIO:
    """Keep fd 1 for frames only; everything else that writes to stdout goes to stderr."""
    sys.stdout.flush()
    frames_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return open(frames_fd, "wb", buffering=0)


def _limit_address_space(limit: int = ADDRESS_SPACE_LIMIT) -> None:
    """Best effort: a runaway allocation fails here instead of swapping the machine."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft == resource.RLIM_INFINITY or soft > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = _claim_stdout()
    _limit_address_space()
    host = Host(sys.stdin.buffer, out)
    try:
        host.serve()
    except (ProtocolError, FrameError) as exc:
        print(f"openprod.scripts.host: protocol error: {exc}", file=sys.stderr)
        return EXIT_PROTOCOL
    except OSError as exc:  # the runner went away mid-conversation
        print(f"openprod.scripts.host: pipe error: {exc}", file=sys.stderr)
        return EXIT_PIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
