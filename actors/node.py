"""Node: the supervisor. One nursery tree runs the open workspace's actors and the API.

    Node
    ├── Session (one open workspace; replaced on /workspace/open)
    │   ├── StateDeriver     projection + events
    │   ├── ConflictManager  conflict projection + conflict events (wakes after the deriver)
    │   ├── OplogWriter      sole writer: commands and ingest; owns the overlay store
    │   ├── OverlayManager   drift re-check after canonical changes (wakes after conflicts)
    │   ├── SyncService      LAN sync links, dialers, live push (`session.sync`)
    │   ├── ScriptRunner     Lua runs in the sandbox host process (`session.scripts`)
    │   └── services         what the Node adds for a served engine (`NetConfig`): the sync
    │                        listener on the peer port and mDNS discovery (advertise + browse)
    └── Api                Quart-Trio on Hypercorn (HTTP, WebSocket /events, web/)

The network services live in the Session's nursery, so switching workspace (/workspace/open,
/create, /join) stops them with the old workspace and starts them for the new one. A joining
replica browses but does not advertise; once its genesis arrived (`workspace_joined`) discovery
restarts and advertises it. Every advert seen (any workspace) lands in `Node.lan`, which
`GET /workspace/discover` lists.

A crash in any actor cancels the whole tree (structured concurrency) and `serve` re-raises it
after closing the databases; SIGINT/SIGTERM shut down gracefully: WebSocket clients get 1001,
in-flight commands finish, new ones are refused, the databases close.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import ifaddr
import trio

from actors import blob_locks, blocking
from actors.conflict_manager import ConflictManager, ConflictReader
from actors.events import EventHub
from actors.home import JOINING_NAME, Home
from actors.oplog_writer import OplogWriter
from actors.overlay_manager import OverlayManager
from actors.reader import Reader
from actors.script_runner import ScriptRunner
from actors.state_deriver import StateDeriver
from actors.sync_service import SyncService
from openprod.core import hlc as hlcmod
from openprod.core import ids
from openprod.core.errors import OpenprodError
from openprod.core.identity import Identity
from openprod.engine.workspace import OPLOG_FILE, Workspace
from openprod.sync import discovery as disc

log = logging.getLogger("openprod.node")

DEFAULT_SYNC_PORT = 47820

# A service the Node runs inside a Session's nursery: `await nursery.start(service, session)`.
Service = Callable[..., Awaitable[None]]


@attrs.define
class NetConfig:
    """The network side of a served engine (`openprod serve` flags)."""

    sync_host: str = "0.0.0.0"
    sync_port: int = DEFAULT_SYNC_PORT  # 0 = any free port
    discovery: bool = True
    interfaces: list[str] | None = None  # mDNS interfaces as addresses; None = all


class SyncPortInUse(OpenprodError):
    code = "sync_port_in_use"

    def __init__(self, port: int) -> None:
        super().__init__(f"sync port {port} is already in use; choose another with "
                         "--sync-port N (or --sync-port 0 for any free port)", port=port)
        self.port = port


def lan_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses: where peers on the LAN can reach us."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback \
                    and ip.ip not in out:
                out.append(ip.ip)
    return out


class Session:
    """The actors of one open workspace."""

    def __init__(self, path: Path, ident: Identity, hub: EventHub, *,
                 now: Callable[[], int] = hlcmod.system_ms,
                 sync: dict[str, Any] | None = None,
                 services: Sequence[Service] = (), home: Home | None = None) -> None:
        self.path = path
        self.ws = Workspace.open(path, ident, now=now, derive=False)
        blob_locks.shared(self.ws.blobs)  # API worker threads share it
        self.ws_id = ids.to_text(self.ws.ws)
        self.deriver = StateDeriver(path / OPLOG_FILE, hub)
        self.conflicts = ConflictManager(path / OPLOG_FILE, hub)
        self.deriver.listeners.append(self.conflicts.notify)
        self.writer = OplogWriter(self.ws, self.deriver, self.conflicts)
        self.overlays = OverlayManager(path / OPLOG_FILE, self.writer, hub)
        self.conflicts.listeners.append(self.overlays.notify)
        self.reader = Reader(path / OPLOG_FILE)
        self.conflict_reader = ConflictReader(path / OPLOG_FILE)
        self.sync = SyncService(self, hub, now_ms=now, **(sync or {}))
        # scripts need this user's module store and settings: only a Node's sessions have them
        self.scripts: ScriptRunner | None = None
        if home is not None:
            self.scripts = ScriptRunner(self, hub, home)
        self.services = tuple(services)
        # the active overlay as of the last writer call (overlays all load stashed)
        self.active_overlay: bytes | None = self.ws.overlays.active
        self.cancel_scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        try:
            with self.cancel_scope:
                # stale temporary files and fetches cut short by the last stop (spec 03 §7)
                await blocking.run_sync(self.ws.blobs.housekeep)
                async with trio.open_nursery() as n:
                    await n.start(self.deriver.run)
                    await n.start(self.conflicts.run)
                    await n.start(self.writer.run)
                    await n.start(self.overlays.run)
                    await n.start(self.sync.run)
                    if self.scripts is not None:
                        n.start_soon(self.scripts.run)  # compiles triggers via the writer
                    # bring the projections up to the oplog head before serving reads
                    head = self.ws.storage.head_seq()
                    self.deriver.notify(head)
                    self.conflicts.notify(head)
                    await self.deriver.wait_applied(head)
                    await self.conflicts.wait_applied(head)
                    for service in self.services:
                        await n.start(service, self)
                    task_status.started()
        finally:
            self.writer.close()
            self.reader.close()
            self.conflict_reader.close()
            self.ws.close()
            self.done.set()

    async def stop(self) -> None:
        """Refuse new commands, let the in-flight one finish, then cancel the actors."""
        self.writer.close()
        self.cancel_scope.cancel()
        await self.done.wait()


class Node:
    def __init__(self, home: Home, ident: Identity, token: str, *,
                 now: Callable[[], int] = hlcmod.system_ms,
                 net: NetConfig | None = None) -> None:
        self.home = home
        self.now = now
        self.ident = ident
        self.token = token
        self.hub = EventHub()
        self.session: Session | None = None
        self.shutdown = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.url = ""
        self.port = 0
        # None: no sync listener and no discovery (in-process tests and the harness)
        self.net = net
        # every advert discovery currently reports, any workspace: instance name -> Advert
        self.lan: dict[str, disc.Advert] = {}
        # `gh` a join should expect, learnt from discovery when the join was asked for
        self.expected_gh: dict[str, str] = {}
        self._joined = trio.Event()
        self.discovery_error: str | None = None
        # cleared while open_workspace swaps sessions: API requests arriving then wait for the
        # new one instead of failing (spec 05 J1 "one workspace open at a time")
        self.settled = trio.Event()
        self.settled.set()

    def attach(self, nursery: trio.Nursery) -> None:
        """Run sessions in this nursery (tests drive the API in-process without Hypercorn)."""
        self._nursery = nursery

    @property
    def current(self) -> Session:
        if self.session is None:
            from actors.oplog_writer import ShuttingDown

            raise ShuttingDown("no workspace is open")
        return self.session

    async def open_workspace(self, ws_id: str) -> Session:
        path = self.home.workspace_path(ws_id)
        assert self._nursery is not None
        if self.settled.is_set():
            self.settled = trio.Event()
        try:
            if self.session is not None:
                old, self.session = self.session, None
                await old.stop()
            session = Session(path, self.ident, self.hub, now=self.now,
                              sync=self._sync_options(ws_id), services=self._services(),
                              home=self.home)
            await self._nursery.start(session.run)
            self.session = session
        finally:
            self.settled.set()
        self.home.set_last(ws_id)
        self.hub.publish({"type": "workspace_opened", "workspace_id": ws_id})
        return session

    async def run(self, ws_id: str, host: str, port: int, *,
                  task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from actors.api import serve_api

        async with trio.open_nursery() as n:
            self._nursery = n
            await self.open_workspace(ws_id)
            bound: list[str] = await n.start(serve_api, self, host, port)
            self.url = bound[0]
            task_status.started(self.url)
            n.start_soon(self._signals)
            await self.shutdown.wait()
            if self.session is not None:
                await self.session.stop()
            n.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for sig in sigs:
                log.info("received %s, shutting down", signal.Signals(sig).name)
                self.shutdown.set()
                return

    def info(self) -> dict[str, Any]:
        s = self.session
        return {"workspace_id": s.ws_id if s else None, "url": self.url}

    # --- sync wiring ---------------------------------------------------------------------------

    def _sync_options(self, ws_id: str) -> dict[str, Any]:
        """SyncService kwargs: the manual peers kept in workspace.toml (saved back on change)
        and, for a joining replica, turning it active once its genesis arrived."""
        meta = self.home.read_meta(ws_id)
        peers = [p for p in (meta.get("sync") or {}).get("manual_peers", [])
                 if isinstance(p, str)]
        joined = self._joined = trio.Event()

        def on_joined() -> None:
            # a replica joined by address was saved as "Joining workspace": now that the
            # genesis arrived it has its real name (spec 05 J3)
            s = self.session
            name = None
            if s is not None and s.ws_id == ws_id and self.home.read_meta(ws_id).get(
                    "name") == JOINING_NAME:
                name = s.sync.workspace_name()
            self.home.write_meta(ws_id, name=name, state="active", clear_access_code=True)
            joined.set()

        opts: dict[str, Any] = {
            "manual_peers": peers, "on_joined": on_joined,
            "save_peers": lambda ps: self.home.write_meta(ws_id, manual_peers=ps)}
        if ws_id in self.expected_gh:
            opts["expected_genesis"] = self.expected_gh[ws_id]
        code = (meta.get("sync") or {}).get("access_code")
        if isinstance(code, str):
            opts["access_code"] = code
        return opts

    def _services(self) -> list[Service]:
        if self.net is None:
            return []
        services: list[Service] = [self._listener]
        if self.net.discovery:
            services.append(self._discovery)
        return services

    async def _listener(self, session: Session, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """The peer port (`ws://host:port/openprod/sync`) for as long as the session runs."""
        assert self.net is not None
        try:
            await session.sync.listen(self.net.sync_host, self.net.sync_port,
                                      task_status=task_status)
        except* OSError as group:
            if any(isinstance(e, OSError) and e.errno == errno.EADDRINUSE
                   for e in _leaves(group)):
                raise SyncPortInUse(self.net.sync_port) from None
            raise

    async def _discovery(self, session: Session, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise the open workspace (once it has a genesis) and feed what we see to its
        SyncService and to `self.lan`. Does not wait for zeroconf's probing (1–2 s)."""
        from actors.discovery import DiscoveryEvent, ZeroconfDiscovery

        assert self.net is not None
        net, sync, joined = self.net, session.sync, self._joined
        send, recv = trio.open_memory_channel[DiscoveryEvent](64)
        try:
            async with trio.open_nursery() as n, send:
                n.start_soon(self._consume, session, recv)
                task_status.started()
                while True:
                    with trio.CancelScope() as cs:
                        advertise = sync.genesis is not None
                        if not advertise:
                            n.start_soon(_cancel_when, joined, cs)
                        # the owner changed the join mode: advertise it (TXT `join`)
                        sync.advert_changed = trio.Event()
                        n.start_soon(_cancel_when, sync.advert_changed, cs)
                        join = (await sync.lifecycle()).join_mode if advertise else "open"
                        gh = sync.genesis.hex()[:16] if sync.genesis else "0" * 16
                        zd = ZeroconfDiscovery(
                            ws=sync.ws, actor=sync.actor, port=sync.port or 0,
                            wsname=sync.workspace_name(), join=join, gh=gh,
                            interfaces=net.interfaces, advertise=advertise)
                        try:
                            await zd.run(send.clone())
                        except Exception as exc:
                            # No multicast here (or zeroconf broke): keep syncing with manual
                            # peers rather than take the engine down.
                            log.warning("mDNS discovery stopped: %r", exc)
                            self.discovery_error = repr(exc)
                            break
                    if not cs.cancelled_caught:
                        break
                    # joined, or the join mode changed: advertise anew
                n.cancel_scope.cancel()
        finally:
            self.lan.clear()

    async def _consume(self, session: Session,
                       recv: trio.MemoryReceiveChannel[Any]) -> None:
        sync = session.sync
        own = lan_addresses()
        async for ev in recv:
            if ev.kind == "discovered":
                ad: disc.Advert = ev.advert
                self.lan[ev.name] = ad
                if not disc.should_dial(ad, ws=sync.ws, actor=sync.actor):
                    continue
                if sync.genesis is None and sync.expected_genesis is None:
                    sync.expected_genesis = ad.gh  # the first member seen vouches for it
                sync.on_discovered(ad.actor, disc.order_addresses(ad.addresses, own),
                                   ad.port, ev.name)
            else:
                gone = self.lan.pop(ev.name, None)
                if gone is not None and gone.ws == sync.ws and gone.actor != sync.actor and \
                        not any(a.actor == gone.actor for a in self.lan.values()):
                    sync.on_lost(gone.actor)

    def discovered_workspaces(self) -> list[dict[str, Any]]:
        """Workspaces seen on the LAN, one entry per (ws, gh), with the peers advertising it."""
        out: dict[tuple[bytes, str], dict[str, Any]] = {}
        for ad in self.lan.values():
            w = out.setdefault((ad.ws, ad.gh), {
                "ws": ids.to_text(ad.ws), "name": ad.wsname, "gh": ad.gh, "join": ad.join,
                "peers": []})
            w["peers"].append({"peer_id": ad.actor.hex(), "addresses": list(ad.addresses),
                               "port": ad.port})
        for w in out.values():
            w["peers_online"] = len(w["peers"])
        return sorted(out.values(), key=lambda w: (w["name"].lower(), w["ws"]))


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]
