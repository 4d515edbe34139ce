"""ScriptRunner: runs Lua scripts in the sandbox host process, one at a time (spec 04 §7).

Owns the run queue (FIFO, at most 100 waiting), the one long-lived host process
(`python -m openprod.scripts.host`, spoken to in frames over its stdin/stdout), the recent runs
and their logs, and the on-change triggers this user switched on. A run:

1. gets a fresh script overlay (created stashed, its `script` meta and trigger depth kept) and a
   `RunSession` on the OplogWriter: every `core.*` call the host forwards is answered there,
   staged into that overlay (rules fire there too). Consecutive calls share one writer command
   while the script keeps calling (`_burst`: at most BURST_S, yielding to any other queued
   command; the writer's thread reads the calls from and writes the replies to the pipes
   itself), each still one reply to one call, so an error is raised at its call site as before;
2. `core.await` work (sleep, capability-checked file I/O) is done here as trio code under the
   run's deadline; a cancel answers a pending await with `Cancelled`;
3. ends with the host's `done`: success keeps the overlay for review (`script_completed`, none
   if it staged nothing), failure deletes it (`script_failed` with code, message, line).
   Past the deadline (timeout + 2 s) or 2 s after a cancel the host is killed (time inside a C
   call never reaches the Lua hook) and the next run gets a new host.

On-change runs are queued from what the writer reports local canonical commits fired.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from actors import blocking
from actors.events import EventHub
from actors.script_settings import ScriptSettings
from openprod.core import ids
from openprod.core.errors import NotFound, OpenprodError, ValidationError
from openprod.engine import modules as modmod
from openprod.engine import rules as rulemod
from openprod.engine.manifest import capability_covers
from openprod.engine.workspace import Workspace
from openprod.scripts import catalog as catmod
from openprod.scripts import host as hostmod
from openprod.scripts import triggers as trigmod
from openprod.scripts import workspace_scripts as wsscripts
from openprod.scripts.frames import FrameError, FrameReader, encode_frame
from openprod.scripts.session import RunSession, RunSpec

if TYPE_CHECKING:
    from actors.home import Home
    from actors.node import Session

log = logging.getLogger("openprod.scripts")

QUEUE = 100
KEEP_RUNS = 50
KEEP_LOG = 1000
GRACE_S = 2.0
PROGRESS_EVERY_S = 0.25
MAX_FILE = 16 * 1024 * 1024
# A burst (ScriptRunner._burst) answers calls in one writer command for at most BURST_S, waits
# at most BURST_WAIT_S for the script's next call, and writes replies of at most BURST_DIRECT
# bytes itself (larger ones are left to the trio side).
BURST_S = 0.02
BURST_WAIT_S = 0.002
BURST_DIRECT = 32 * 1024
NOT_IN_BURST = frozenset(["await", "ui.notify"])  # calls answered on the trio side


class CapabilityRequired(OpenprodError):
    """Capabilities nobody decided yet: the UI asks Allow once / Always / Never."""

    code = "capability_required"


class CapabilityDenied(OpenprodError):
    code = "capability_denied"


class RunQueueFull(OpenprodError):
    code = "run_queue_full"


class RunNotFound(NotFound):
    code = "run_not_found"


@attrs.define
class Run:
    run_id: str
    info: catmod.ScriptInfo
    args: dict[str, Any]
    trigger: str
    grants: frozenset[str]
    changes: list[dict[str, Any]] = attrs.Factory(list)
    depth: int = 0
    status: str = "queued"  # queued | running | completed | failed
    overlay: bytes | None = None
    op_count: int = 0
    log: list[dict[str, Any]] = attrs.Factory(list)
    error: dict[str, Any] | None = None
    queued_at: int = 0
    ended_at: int | None = None
    cancel_requested: bool = False
    scope: trio.CancelScope | None = None
    await_scope: trio.CancelScope | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "script": self.info.id, "label": self.info.label,
                "trigger": self.trigger, "status": self.status, "depth": self.depth,
                "overlay_id": ids.to_text(self.overlay) if self.overlay else None,
                "op_count": self.op_count, "error": self.error, "log": list(self.log),
                "args": dict(self.args), "changes": len(self.changes),
                "queued_at": self.queued_at, "ended_at": self.ended_at}


class Pipes:
    """One host process's pipes as a burst uses them from the writer's thread: the raw fds,
    the frame reader and the decoded frames not yet handled (the same objects the trio side
    reads through, never both at once). `lock` is held around every use of the fds there, and
    `closed` set under it before the trio side closes them."""

    def __init__(self, rfd: int, wfd: int, reader: FrameReader,
                 pending: deque[dict[str, Any]]) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.reader = reader
        self.pending = pending
        self.lock = threading.Lock()
        self.closed = False


class HostProcess:
    """The sandbox host: frames in, frames out, killed when a run overruns."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.proc: trio.Process | None = None
        self.reader = FrameReader()
        self.pending: deque[dict[str, Any]] = deque()
        self.pipes: Pipes | None = None

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.reader = FrameReader()
        self.pending = deque()  # a new one: a burst still running may hold the old one
        rfd = getattr(self.proc.stdout, "fileno", None)
        wfd = getattr(self.proc.stdin, "fileno", None)
        self.pipes = Pipes(rfd(), wfd(), self.reader, self.pending) \
            if rfd is not None and wfd is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        await self.proc.stdin.send_all(encode_frame(msg))

    async def recv(self) -> dict[str, Any] | None:
        """The next frame, or None once the host is gone (EOF)."""
        assert self.proc is not None and self.proc.stdout is not None
        while not self.pending:
            data = await self.proc.stdout.receive_some(1 << 16)
            if not data:
                return None
            self.pending.extend(self.reader.feed(bytes(data)))
        return self.pending.popleft()

    async def kill(self) -> None:
        pipes, self.pipes = self.pipes, None
        if pipes is not None:
            with pipes.lock:  # held by a burst for one non-blocking read or write at most
                pipes.closed = True
        p, self.proc = self.proc, None
        if p is None:
            return
        with contextlib.suppress(OSError):
            p.kill()
        with trio.CancelScope(shield=True):
            await p.wait()
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    with contextlib.suppress(trio.ClosedResourceError, OSError):
                        await stream.aclose()


class ScriptRunner:
    def __init__(self, session: Session, hub: EventHub, home: Home, *,
                 host_cmd: list[str] | None = None) -> None:
        self.session = session
        self.writer = session.writer
        self.hub = hub
        self.home = home
        self.settings = ScriptSettings(home.path)
        self.exchange = home.path / "exchange"
        self.host = HostProcess(host_cmd or hostmod.command())
        self._send, self._recv = trio.open_memory_channel[Run](QUEUE)
        self.runs: dict[str, Run] = {}
        self._order: deque[str] = deque()
        self.current: Run | None = None
        self._catalog: dict[str, catmod.ScriptInfo] | None = None
        self._triggers_lock = trio.Lock()
        self.writer.fired_listeners.append(self._on_fired)
        self.ready = trio.Event()  # triggers installed, interrupted runs' overlays gone

    # --- the catalog ---------------------------------------------------------------------------
    async def catalog(self, *, fresh: bool = False) -> dict[str, catmod.ScriptInfo]:
        """The scripts this user can run here: those of installed modules that are adopted in
        this workspace (or have no tables), at the adopted version."""
        if self._catalog is not None and not fresh:
            return self._catalog
        adopted, docs = await self.writer.call(
            lambda ws: (modmod.module_configs(ws.views), wsscripts.read_docs(ws.views)))
        infos = await blocking.run_sync(self._read_catalog, adopted)
        infos += [wsscripts.info(sid, doc) for sid, doc in docs.items()]
        self._catalog = {i.id: i for i in infos}
        return self._catalog

    def _read_catalog(self, adopted: dict[str, dict[str, Any]]) -> list[catmod.ScriptInfo]:
        store = self.home.modules
        out: list[catmod.ScriptInfo] = []
        for entry in store.installed():
            mid, version = entry["id"], entry["version"]
            want = adopted.get(mid, {}).get("version")
            try:
                pkg = store.load(mid, version)
            except OpenprodError:
                continue
            if pkg.manifest.tables and want != version:
                continue  # scripts of a module with tables run once that version is adopted
            if not pkg.manifest.tables and version != store.versions(mid)[-1]:
                continue
            root = store.version_dir(mid, version)
            sources = {}
            for sd in pkg.manifest.scripts.values():
                try:
                    sources[sd.file] = (root / sd.file).read_text("utf-8")
                except (OSError, UnicodeDecodeError):
                    sources[sd.file] = ""
            out += catmod.scripts_of(pkg, sources)
        return out

    async def get(self, script_id: str) -> catmod.ScriptInfo:
        cat = await self.catalog(fresh=True)
        info = cat.get(script_id)
        if info is None:
            raise catmod.ScriptNotFound(f"no script {script_id!r} here (is its module "
                                        "installed and adopted?)", script=script_id)
        return info

    async def list_scripts(self) -> list[dict[str, Any]]:
        cat = await self.catalog(fresh=True)
        enabled = self.settings.triggers(self.session.ws_id)
        out = []
        for info in cat.values():
            d = info.to_json()
            if info.module == wsscripts.WORKSPACE:
                d["source_kind"] = "workspace"  # editable by every member; module scripts
                d["source"] = info.source       # are read-only (spec 05 J14)
            else:
                d["source_kind"] = "module"
            decisions = self.settings.decisions(info.module, info.version)
            d["capability_decisions"] = {c: decisions.get(c) for c in info.capabilities}
            if info.trigger == "on_change":
                d["trigger_enabled"] = info.id in enabled
            out.append(d)
        return out

    # --- capabilities --------------------------------------------------------------------------
    def _grants(self, info: catmod.ScriptInfo, given: dict[str, str] | None,
                *, ask: bool = True) -> frozenset[str]:
        """Effective capabilities (declared ∩ granted) after applying the caller's decisions
        (once / always / never); refuses before the run starts (04 §7.1 step 1)."""
        given = dict(given or {})
        for cap, choice in given.items():
            if cap not in info.capabilities:
                raise ValidationError(f"{info.label} does not ask for {cap!r}", capability=cap)
            if choice not in ("once", "always", "never"):
                raise ValidationError("a decision is once, always or never", capability=cap)
            if choice in ("always", "never"):
                self.settings.decide(info.module, info.version, cap, choice)
        stored = self.settings.decisions(info.module, info.version)
        granted: set[str] = set()
        undecided: list[str] = []
        for cap in info.capabilities:
            d: str | None = given.get(cap) or stored.get(cap)
            if d == "never":
                raise CapabilityDenied(f"{info.label} needs {cap}, which you refused "
                                       "(Never)", capability=cap, script=info.id)
            if d in ("once", "always"):
                granted.add(cap)
            else:
                undecided.append(cap)
        if undecided and ask:
            raise CapabilityRequired(f"{info.label} asks for: {', '.join(undecided)}",
                                     capabilities=undecided, script=info.id)
        return frozenset(granted)

    async def decide(self, script_id: str, capability: str, decision: str | None) -> None:
        info = await self.get(script_id)
        if capability not in info.capabilities:
            raise ValidationError(f"{info.label} does not ask for {capability!r}",
                                  capability=capability)
        if decision not in ("always", "never", None):
            raise ValidationError("a stored decision is always, never or null (ask again)")
        self.settings.decide(info.module, info.version, capability, decision)
        self.hub.publish({"type": "scripts_changed"})
        if decision == "never":  # revoked: the runs holding it are cancelled (04 §7.5)
            for run in list(self.runs.values()):
                if (run.info.module, run.info.version) == (info.module, info.version) \
                        and capability in run.grants:
                    await self.cancel(run.run_id)

    # --- submitting ----------------------------------------------------------------------------
    async def submit(self, script_id: str, args: Any = None,
                     grants: dict[str, str] | None = None) -> Run:
        """A manual run: refused up front if not runnable, bad args, or a capability refused
        or undecided."""
        info = await self.get(script_id)
        if info.trigger != "manual":
            raise ValidationError(f"{info.label} runs on change, not by hand",
                                  script=script_id)
        typed = catmod.check_args(info, args)
        granted = self._grants(info, grants)
        run = Run(ids.new_id().hex(), info, typed, "manual", granted,
                  queued_at=int(time.time() * 1000))
        self._enqueue(run)
        return run

    def _enqueue(self, run: Run) -> None:
        try:
            self._send.send_nowait(run)
        except trio.WouldBlock:
            raise RunQueueFull(f"{QUEUE} runs are already waiting; try again later") from None
        self.runs[run.run_id] = run
        self._order.append(run.run_id)
        while len(self._order) > KEEP_RUNS:
            old = self.runs.get(self._order[0])
            if old is not None and old.status in ("queued", "running"):
                break
            self.runs.pop(self._order.popleft(), None)
        self.hub.publish({"type": "script_queued", "run_id": run.run_id,
                          "script": run.info.id, "trigger": run.trigger})

    def _on_fired(self, fired: list[Any]) -> None:
        """From the writer: on-change runs a local canonical commit fired (never blocks)."""
        cat = self._catalog or {}
        for script, changes, depth, _bundle in fired:
            info = cat.get(script)
            if info is None or depth > trigmod.MAX_DEPTH:
                continue
            try:
                granted = self._grants(info, None, ask=False)
            except CapabilityDenied:
                continue
            run = Run(ids.new_id().hex(), info, {}, "on_change", granted, changes, depth,
                      queued_at=int(time.time() * 1000))
            try:
                self._enqueue(run)
            except RunQueueFull:
                log.warning("run queue full: on-change run of %s dropped", script)

    async def cancel(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        if run.status not in ("queued", "running"):
            return run
        run.cancel_requested = True
        if run.status == "running":
            if run.await_scope is not None:
                run.await_scope.cancel()  # the pending await answers Cancelled
            if run.scope is not None:  # still computing 2 s from now: the host is killed
                run.scope.deadline = min(run.scope.deadline, trio.current_time() + GRACE_S)
        return run

    # --- on-change triggers --------------------------------------------------------------------
    async def set_trigger(self, script_id: str, enabled: bool) -> None:
        info = await self.get(script_id)
        if info.trigger != "on_change":
            raise ValidationError(f"{info.label} is not an on-change script", script=script_id)
        # one install at a time, each reading the switches it installs under the lock: a
        # recompile after a schema change must not put back the switches read before this one
        async with self._triggers_lock:
            if enabled:
                self._grants(info, None)  # every capability decided before it may fire
                on = self.settings.triggers(self.session.ws_id) | {script_id}
                await self._install_triggers(on, check=script_id)
            self.settings.set_trigger(self.session.ws_id, script_id, enabled)
            if not enabled:
                await self._install_triggers(self.settings.triggers(self.session.ws_id))
        self.hub.publish({"type": "scripts_changed"})

    async def _install_triggers(self, enabled: set[str], check: str | None = None) -> None:
        """Compile the enabled triggers into the writer's workspace (watches and, for the
        cycle check with rules, their automation keys); `check` must not close a cycle."""
        cat = await self.catalog(fresh=True)
        infos = [cat[s] for s in sorted(enabled) if s in cat]

        def install(ws: Workspace) -> None:
            autos: dict[str, tuple[set[str], set[str]]] = {}
            trigs: list[trigmod.Trigger] = []
            for info in infos:
                fields: list[str] = []
                if info.watch_table is not None:
                    try:
                        fields = [f.name for f in ws.views.table(info.watch_table).fields]
                    except NotFound:
                        continue
                autos[f"script:{info.id}"] = info.automation_keys(fields)
                tr = trigmod.compile_trigger(info.id, info.watch_table or "",
                                             info.watch_fields, info.watch_events, info.when,
                                             ws.views)
                if tr is not None:
                    trigs.append(tr)
            if check is not None:
                prev = ws.local_automations
                ws.local_automations = autos
                try:
                    rulemod.check_cycles(ws.rule_set().graph(), f"script:{check}")
                finally:
                    ws.local_automations = prev
            ws.local_automations = autos
            ws.triggers = trigs

        await self.writer.call(install)

    # --- the loop ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        try:
            with contextlib.suppress(OpenprodError):
                async with self._triggers_lock:
                    await self._install_triggers(self.settings.triggers(self.session.ws_id))
            with contextlib.suppress(OpenprodError):
                await self.writer.call(_discard_interrupted)
            self.ready.set()
            task_status.started()
            async with trio.open_nursery() as n, self._recv:
                n.start_soon(self._follow_schema)
                async for run in self._recv:
                    if run.cancel_requested:
                        self._failed(run, {"code": "Cancelled",
                                           "message": "cancelled before it started"})
                        continue
                    self.current = run
                    try:
                        await self._execute(run)
                    except Exception as exc:  # a bug fails the run, never the engine
                        log.exception("script run %s failed unexpectedly", run.run_id)
                        await self._abandon(run, exc)
                    finally:
                        self.current = None
                n.cancel_scope.cancel()
        finally:
            await self.host.kill()

    async def _follow_schema(self) -> None:
        """Tables changed (an adoption here or by sync): the catalog and the switched-on
        triggers are compiled again (a trigger on a table adopted later starts working)."""
        changed = trio.Event()

        def note() -> None:
            changed.set()

        self.session.deriver.schema_listeners.append(note)
        try:
            while True:
                await changed.wait()
                changed = trio.Event()
                self._catalog = None
                with contextlib.suppress(OpenprodError):
                    async with self._triggers_lock:
                        await self._install_triggers(self.settings.triggers(self.session.ws_id))
        finally:
            self.session.deriver.schema_listeners.remove(note)

    async def _abandon(self, run: Run, exc: Exception) -> None:
        """After an unexpected error: a new host next time, the overlay gone, the run failed."""
        if run.status not in ("queued", "running"):
            return
        await self.host.kill()
        oid, run.overlay, run.scope, run.await_scope = run.overlay, None, None, None
        if oid is not None:
            with contextlib.suppress(OpenprodError):
                await self.writer.call(lambda ws: ws.discard_overlay(oid))
        self._failed(run, {"code": "HostCrashed",
                           "message": f"the script runtime failed: {exc!r}"[:500]})

    async def _ensure_host(self) -> HostProcess:
        if not self.host.alive:
            await self.host.kill()
            await self.host.start()
        return self.host

    async def _execute(self, run: Run) -> None:
        info = run.info
        spec = RunSpec(run.run_id, info.id, info.module, run.trigger,
                       frozenset(info.writes) if info.writes is not None else None,
                       run.grants)
        workspace = info.module == wsscripts.WORKSPACE
        meta = {"script": {"source": "workspace" if workspace else "module", "id": info.id,
                           # spec 04 §7.1 step 4: version | hash
                           **({"hash": wsscripts.source_hash(info.source)} if workspace
                              else {"version": info.version}),
                           "run_id": run.run_id, "trigger": run.trigger},
                "depth": run.depth, "running": True}  # dropped once the run succeeded

        def start(ws: Workspace) -> tuple[bytes, RunSession]:
            oid = ws.overlays.create(f"{info.label} (script)", ("script", info.id),
                                     active=False, meta=meta)
            return oid, RunSession(ws, oid, spec)

        try:
            oid, session = await self.writer.call(start)
        except OpenprodError as exc:
            self._failed(run, {"code": "ScriptError", "message": exc.message})
            return
        run.overlay = oid
        run.status = "running"
        self.hub.publish({"type": "script_started", "run_id": run.run_id, "script": info.id})
        context = {"run_id": run.run_id, "script": info.id, "trigger": run.trigger,
                   "actor": ids.to_text(self.session.ws.actor) if len(self.session.ws.actor)
                   == 16 else self.session.ws.actor.hex(),
                   "args": run.args, "changes": run.changes, "now": int(time.time() * 1000)}
        outcome: dict[str, Any] | None = None
        deadline = trio.current_time() + info.timeout_s + GRACE_S
        with trio.CancelScope(deadline=deadline) as cs:
            run.scope = cs
            try:
                host = await self._ensure_host()
                await host.send({"t": "run", "run_id": run.run_id, "source": info.source,
                                 "chunk": info.file, "args": run.args, "context": context,
                                 "limits": info.limits_wire(), "grants": sorted(run.grants)})
                outcome = await self._converse(host, run, session,
                                               trio.current_time() + info.timeout_s)
            except (OSError, FrameError, trio.BrokenResourceError,
                    trio.ClosedResourceError) as exc:
                log.warning("script host failed: %s", exc)
                outcome = None
        run.scope = None
        if outcome is None:
            await self.host.kill()
            if run.cancel_requested:
                outcome = {"ok": False, "code": "Cancelled", "message": "the run was cancelled"}
            elif cs.cancelled_caught:
                outcome = {"ok": False, "code": "TimeLimit",
                           "message": f"the script ran longer than {info.timeout_s:g} s"}
            else:
                outcome = {"ok": False, "code": "HostCrashed",
                           "message": "the script host stopped unexpectedly"}
        await self._finish(run, outcome)

    async def _converse(self, host: HostProcess, run: Run, session: RunSession,
                        soft_deadline: float) -> dict[str, Any] | None:
        last_progress = 0.0
        last_seen = (-1, 0)  # (staged ops, log lines) at the last script_progress

        def progress() -> None:
            """script_progress (≤ 4/s) when ops were staged or lines logged since the last
            one, so the UI re-reads the run (its op count and log)."""
            nonlocal last_progress, last_seen
            now, seen = trio.current_time(), (session.staged, len(run.log))
            if seen != last_seen and now - last_progress >= PROGRESS_EVERY_S:
                last_progress, last_seen = now, seen
                self.hub.publish({"type": "script_progress", "run_id": run.run_id,
                                  "script": run.info.id, "op_count": session.staged})

        async def progress_soon() -> None:  # while an await blocks: what came before it
            await trio.sleep_until(last_progress + PROGRESS_EVERY_S)
            progress()

        while True:
            msg = await host.recv()
            if msg is None:
                return None
            t = msg.get("t")
            if t == "log":
                if len(run.log) < KEEP_LOG:
                    run.log.append({"level": msg.get("level"), "msg": msg.get("msg")})
                progress()
            elif t == "call":
                pipes = host.pipes
                if msg.get("fn") == "await":
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(progress_soon)
                        reply = await self._answer(run, session, msg, soft_deadline)
                        nursery.cancel_scope.cancel()
                elif pipes is not None and _burstable(msg) and not host.pending \
                        and not host.reader.pending and not blocking.INLINE.get():
                    burst = await self.writer.call(
                        functools.partial(self._burst, pipes=pipes, run=run, session=session,
                                          msg=msg))
                    for line in burst.logs:
                        if len(run.log) < KEEP_LOG:
                            run.log.append({"level": line.get("level"), "msg": line.get("msg")})
                    if burst.broken:
                        return None
                    if burst.reply is not None:
                        await host.send(burst.reply)
                    progress()
                    continue
                else:
                    reply = await self._answer(run, session, msg, soft_deadline)
                await host.send({"t": "reply", "id": msg.get("id"), **reply})
                progress()
            elif t == "done":
                return msg
            else:
                log.warning("script host sent %r: killing it", t)
                return None

    async def _answer(self, run: Run, session: RunSession, msg: dict[str, Any],
                      soft_deadline: float) -> dict[str, Any]:
        fn = msg.get("fn")
        args = msg.get("args")
        if not isinstance(fn, str) or not isinstance(args, list):
            return {"ok": False, "error": {"code": "BadArgument", "message": "bad call"}}
        if fn == "await":
            return await self._await(run, args, soft_deadline)
        if fn == "ui.notify":
            if "ui.notify" not in run.grants:
                return _err("CapabilityDenied", "ui.notify was not granted")
            text = str(args[0]) if args else ""
            level = str(args[1]) if len(args) > 1 and args[1] else "info"
            self.hub.publish({"type": "script_notify", "run_id": run.run_id,
                              "script": run.info.id, "message": text[:4096], "level": level})
            return {"ok": True, "value": None}
        ok, value = await self.writer.call(lambda ws: session.call(fn, args))
        return {"ok": True, "value": value} if ok else {"ok": False, "error": value}

    def _burst(self, ws: Workspace, pipes: Pipes, run: Run, session: RunSession,
               msg: dict[str, Any]) -> Burst:
        """On the writer's thread, inside one writer command: answer `msg` and then each call
        the host sends next, as long as it sends them within BURST_WAIT_S, for BURST_S at most,
        while no other command waits for the writer, nothing was appended and the run is not
        cancelled. Each reply is written to the host before its next call is read (the host
        blocks on it), so calls, replies and errors are exactly those of one command per call;
        `log` frames in between are collected. A frame it does not handle (done, await, ...)
        is left in `pipes.pending` for the trio side, as is the last reply if not yet sent."""
        with ws.overlays.deferred():  # the staged rows of all these calls: one transaction
            return self._burst_calls(ws, pipes, run, session, msg)

    def _burst_calls(self, ws: Workspace, pipes: Pipes, run: Run, session: RunSession,
                     msg: dict[str, Any]) -> Burst:
        out = Burst()
        head = ws.storage.head_seq()
        end = time.monotonic() + BURST_S
        while True:
            ok, value = session.call(msg["fn"], msg["args"])
            reply = {"t": "reply", "id": msg.get("id"), "ok": ok,
                     ("value" if ok else "error"): value}
            out.calls += 1
            if (time.monotonic() > end or self.writer.waiting() or run.cancel_requested
                    or ws.storage.head_seq() != head or ws.fired):
                out.reply = reply
                return out
            try:
                data = encode_frame(reply)
            except FrameError:
                out.reply = reply  # the trio side fails the same way
                return out
            if len(data) > BURST_DIRECT:
                out.reply = reply
                return out
            try:
                if not _write_all(pipes, data):
                    out.broken = True
                    return out
                nxt = _next_call(pipes, out.logs)
            except (OSError, FrameError):
                out.broken = True
                return out
            if nxt is None:
                return out
            msg = nxt

    async def _await(self, run: Run, args: list[Any], soft_deadline: float,
                     ) -> dict[str, Any]:
        spec = args[0] if args else None
        if not isinstance(spec, dict):
            return _err("BadArgument", "core.await takes an awaitable")
        kind = spec.get("kind")
        if run.cancel_requested:  # cancelled while still computing: answer at once
            return _err("Cancelled", "the run was cancelled")
        with trio.CancelScope(deadline=soft_deadline) as scope:
            run.await_scope = scope
            try:
                if kind == "sleep":
                    ms = spec.get("ms")
                    if not isinstance(ms, int | float) or ms < 0:
                        return _err("BadArgument", "sleep takes milliseconds >= 0")
                    await trio.sleep(ms / 1000)
                    return {"ok": True, "value": None}
                if kind in ("fs.read", "fs.write"):
                    return await self._file(run, kind, spec)
                return _err("BadArgument", f"unknown awaitable {kind!r}")
            finally:
                run.await_scope = None
        if run.cancel_requested:
            return _err("Cancelled", "the run was cancelled")
        return _err("TimeLimit", f"the script ran longer than {run.info.timeout_s:g} s")

    async def _file(self, run: Run, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        rel = spec.get("path")
        if not isinstance(rel, str):
            return _err("BadArgument", f"{kind} takes a relative path")
        if not any(capability_covers(g, f"{kind}:{rel}") for g in run.grants):
            return _err("CapabilityDenied", f"{kind}:{rel} was not granted")
        try:
            path = _inside(self.exchange, rel)
        except ValueError as exc:
            return _err("BadArgument", str(exc))
        if kind == "fs.read":
            def read() -> str:
                if path.stat().st_size > MAX_FILE:
                    raise ValueError("file larger than 16 MiB")
                return path.read_text("utf-8", errors="replace")
            try:
                return {"ok": True, "value": await trio.to_thread.run_sync(read)}
            except (OSError, ValueError) as exc:
                return _err("IOError", f"{rel}: {exc}")
        data = spec.get("data")
        if not isinstance(data, str) or len(data.encode()) > MAX_FILE:
            return _err("BadArgument", "fs.write takes a string of at most 16 MiB")

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data, "utf-8")
        try:
            await trio.to_thread.run_sync(write)
        except OSError as exc:
            return _err("IOError", f"{rel}: {exc}")
        return {"ok": True, "value": None}

    async def _finish(self, run: Run, outcome: dict[str, Any]) -> None:
        oid = run.overlay
        assert oid is not None
        if outcome.get("ok"):
            def keep(ws: Workspace) -> int:
                n = len(ws.overlays.rows(oid))
                if n == 0:
                    ws.overlays.drop(oid)  # 0 ops: no overlay
                else:
                    meta = ws.overlays.get(oid)["meta"]
                    meta.pop("running", None)
                    ws.overlays.set_meta(oid, meta)
                return n
            run.op_count = await self.writer.call(keep)
            if run.op_count == 0:
                run.overlay = None
            run.status = "completed"
            run.ended_at = int(time.time() * 1000)
            self.hub.publish({"type": "script_completed", "run_id": run.run_id,
                              "script": run.info.id, "op_count": run.op_count,
                              "overlay_id": ids.to_text(oid) if run.op_count else None})
            if run.op_count:
                self.hub.publish({"type": "overlays_changed",
                                  "active": None if self.session.active_overlay is None
                                  else ids.to_text(self.session.active_overlay),
                                  "seq": self.writer.appended})
            return
        with contextlib.suppress(OpenprodError):
            await self.writer.call(lambda ws: ws.discard_overlay(oid))
        run.overlay = None
        self._failed(run, {k: outcome.get(k) for k in ("code", "message", "line",
                                                       "traceback", "error_code")})

    def _failed(self, run: Run, error: dict[str, Any]) -> None:
        run.status = "failed"
        run.error = {"code": error.get("code") or "ScriptError",
                     "message": error.get("message") or "", "line": error.get("line"),
                     "traceback": error.get("traceback"),
                     # the core error an uncaught ScriptError came from (NotFound, ...)
                     "error_code": error.get("error_code")}
        run.ended_at = int(time.time() * 1000)
        self.hub.publish({"type": "script_failed", "run_id": run.run_id,
                          "script": run.info.id, **run.error})


@attrs.define
class Burst:
    """What a burst leaves to the trio side: the last reply if not sent yet, the host's log
    lines, how many calls it answered, and whether the pipes broke."""

    reply: dict[str, Any] | None = None
    logs: list[dict[str, Any]] = attrs.Factory(list)
    calls: int = 0
    broken: bool = False


def _burstable(msg: dict[str, Any]) -> bool:
    fn = msg.get("fn")
    return isinstance(fn, str) and fn not in NOT_IN_BURST and isinstance(msg.get("args"), list)


def _write_all(pipes: Pipes, data: bytes) -> bool:
    """Write a frame to the host from the writer's thread (the fd is non-blocking); False once
    the trio side closed the pipes. Raises OSError if the host is gone."""
    view = memoryview(data)
    while view:
        with pipes.lock:
            if pipes.closed:
                return False
            try:
                n = os.write(pipes.wfd, view)
            except BlockingIOError:
                n = 0
        view = view[n:]
        if view:
            _wait_fd(pipes.wfd, select.POLLOUT, BURST_WAIT_S)
    return True


def _wait_fd(fd: int, events: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0, int(timeout_s * 1000 + 0.999))))


def _next_call(pipes: Pipes, logs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The host's next call if it comes within BURST_WAIT_S and a burst may answer it (log
    frames before it go to `logs`); else None, any frame read left in `pipes.pending`."""
    deadline = time.monotonic() + BURST_WAIT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not _wait_fd(pipes.rfd, select.POLLIN, left):
            return None
        with pipes.lock:
            if pipes.closed:
                return None
            try:
                data = os.read(pipes.rfd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:  # EOF: the trio side finds it too
                return None
            frames = pipes.reader.feed(data)
            while frames:
                f = frames.pop(0)
                if f.get("t") == "log":
                    logs.append(f)
                    continue
                if f.get("t") == "call" and _burstable(f) and not frames \
                        and not pipes.reader.pending:
                    return f
                pipes.pending.extend([f, *frames])
                return None
            # only logs so far, or part of a frame: the call follows


def _discard_interrupted(ws: Workspace) -> None:
    """Overlays of runs a stop or a crash interrupted: a run that did not succeed leaves no
    overlay (04 §7.1 step 3), even across a restart."""
    for o in ws.overlays.list_all():
        if list(o["source"][:1]) == ["script"] and o["meta"].get("running"):
            ws.discard_overlay(o["id"])


def _err(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _inside(root: Path, rel: str) -> Path:
    """rel inside the exchange folder: no absolute paths, `..`, or symlinks leading out."""
    from openprod.engine.manifest import relpath_problem

    problem = relpath_problem(rel)
    if problem is not None:
        raise ValueError(problem)
    root.mkdir(parents=True, exist_ok=True)
    path = root / rel
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{rel!r} leads outside the exchange folder")
    return resolved
