"""SyncService: the open workspace's LAN sync (spec 03 §4–§6), one per Session.

Owns the links (one `SyncPeer` per authenticated peer; duplicates resolved by "the lower
actor's dial wins", 4005), the fan-out of our own new bundles to every link (live push), the
debounced announce (our clock to the other peers 250 ms after new bundles arrived from one)
and the anti-entropy clock (one random peer every 30 s). Links come from three places: the
WebSocket listener on the peer port, dialers (manual `host:port` peers, redialed with backoff
until removed; discovered peers of our workspace, the lower actor dials), and the test harness,
which hands in in-memory streams (`accept_stream` / `dial_stream`).

A joining replica (no genesis yet) becomes active when catch-up delivers a genesis whose hash
matches what the peer advertised, and emits `workspace_joined`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio_websocket
from trio_websocket import WebSocketConnection, WebSocketRequest

from actors import blocking
from actors.blob_fetcher import BlobFetcher
from actors.follower import Follower
from actors.sync_peer import MISBEHAVIOUR, SyncPeer, VerifyPool, check_split
from openprod.core import ids
from openprod.core import vclock as vcmod
from openprod.engine import lifecycle as lcmod
from openprod.engine.workspace import OPLOG_FILE
from openprod.storage import db
from openprod.sync import catchup
from openprod.sync import messages as m
from openprod.sync.handshake import Handshake, Role
from openprod.sync.receipt import Checked

if TYPE_CHECKING:
    from actors.events import EventHub
    from actors.node import Session

log = logging.getLogger("openprod.sync")
RESOURCE = "/openprod/sync"
# bytes asked of the socket per read (trio-websocket's default is 4 KiB: a 256 KiB blob chunk
# then took 64 trips through its reader task and wsproto)
RECEIVE_BYTES = 1024 * 1024


@attrs.define
class SyncConfig:
    """Limits and timers of spec 03 §5 (seconds unless named otherwise)."""

    max_message: int = m.MAX_MESSAGE_SIZE
    page_bundles: int = catchup.PAGE_BUNDLES
    page_bytes: int = catchup.PAGE_BYTES
    alone_bytes: int = catchup.ALONE_BYTES  # bundles over this are split over messages
    part_bytes: int = catchup.ALONE_BYTES  # op bodies per split part
    max_unacked: int = 4
    control_lane: int = 64
    data_lane: int = 8
    handshake_s: float = 10.0
    ping_s: float = 15.0
    dead_s: float = 45.0
    ack_timeout_s: float = 60.0
    anti_entropy_s: float = 30.0
    announce_s: float = 0.25
    quiet_s: float = 2.0
    state_every_s: float = 60.0
    skew_warn_ms: int = 60_000
    connect_timeout_s: float = 5.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    backoff_healthy_s: float = 30.0
    penalty_min_s: float = 60.0
    penalty_max_s: float = 1800.0
    late_dial_s: float = 15.0
    proof_failures: int = 5  # wrong access-code proofs per IP before a lockout
    lockout_s: float = 60.0  # first lockout; doubles on each further one
    verify_processes: bool = True  # check big ops messages in two worker processes


class Backoff:
    """1 s doubling to 60 s, ±20 % jitter, reset after 30 s healthy; misbehaviour closes
    (4002/4007/4008/1009) start at 60 s doubling to 30 min (spec 03 §4 Dialing)."""

    def __init__(self, cfg: SyncConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        self.delay = 0.0
        self.penalty = 0.0

    def next(self, code: int, healthy_for: float) -> float:
        cfg = self.cfg
        if code in MISBEHAVIOUR:
            self.penalty = min(cfg.penalty_max_s, max(cfg.penalty_min_s, self.penalty * 2))
            base = self.penalty
        else:
            if healthy_for >= cfg.backoff_healthy_s:
                self.delay = 0.0
            self.delay = min(cfg.backoff_max_s, max(cfg.backoff_min_s, self.delay * 2))
            base = self.delay
        return base * self.rng.uniform(0.8, 1.2)


class SyncService:
    def __init__(self, session: Session, hub: EventHub, *, config: SyncConfig | None = None,
                 now_ms: Callable[[], int] | None = None,
                 on_joined: Callable[[], None] | None = None,
                 manual_peers: list[str] | None = None,
                 save_peers: Callable[[list[str]], None] | None = None,
                 expected_genesis: str | None = None,
                 access_code: str | None = None) -> None:
        self.session = session
        self.hub = hub
        self.config = config or SyncConfig()
        ws = session.ws
        self.ws: bytes = ws.ws
        self.ident = ws.ident
        self.actor = ws.actor
        self.path: Path = session.path
        self.writer = session.writer
        self.deriver = session.deriver
        self.now_ms = now_ms or ws.clock.now
        self.genesis: bytes | None = ws.genesis_hash()
        self.expected_genesis = expected_genesis  # `gh` (16 hex) when joining from an advert
        self.on_joined = on_joined
        self.links: dict[bytes, SyncPeer] = {}
        self.pending: set[SyncPeer] = set()  # handshaking
        self.verify_limiter = trio.CapacityLimiter(2)
        self.verify_pool = VerifyPool(2)
        self.access_code: str | None = access_code  # a joiner's code for key-mode workspaces
        self._lc_conn: Any = None
        self.advert_changed = trio.Event()  # set when what mDNS advertises must change
        self.penalties: dict[str, tuple[float, float, int]] = {}  # key → (until, span, code)
        self.lockouts: dict[str, tuple[int, float, float]] = {}  # ip → (fails, until, span)
        self.rng = random.Random()
        self.manual_peers: list[str] = list(manual_peers or [])
        self._save_peers = save_peers
        self.dialers: dict[str, dict[str, Any]] = {}  # key → {cancel, state, retry_at, ...}
        self.discovered: dict[bytes, dict[str, Any]] = {}
        self.last_seen: dict[str, dict[str, Any]] = {}
        self.port: int | None = None
        self.changed = trio.lowlevel.ParkingLot()  # unparked on any link change (harness)
        self._appended = Follower(self.writer.appended)
        self.writer.listeners.append(self._appended.notify)
        self._sources: set[SyncPeer] = set()
        self._new = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.blobs = BlobFetcher(self, hub)  # blobs over these links, both ways

    # --- state shared with the links ---------------------------------------------------------

    def open_reader(self) -> Any:
        """A connection for reading the oplog (sessions, snapshots); the caller closes it."""
        return db.connect(self.path / OPLOG_FILE, synchronous="NORMAL")

    def local_vc(self) -> vcmod.VClock:
        return self.session.ws.storage.vclock()

    async def check(self, records: list[list[Any]]) -> list[Checked]:
        clock = self.session.ws.clock
        return await check_split(records, self.ws, clock.check_drift, self.verify_limiter,
                                 self.verify_pool if self.config.verify_processes else None,
                                 clock.now(), clock.max_drift_ms)

    def _publish(self, event: dict[str, Any]) -> None:
        self.hub.publish(event)
        self.changed.unpark_all()

    def caught_up(self, event: dict[str, Any], start: int, end: int,
                  authors: dict[bytes, int]) -> None:
        """Publish `sync_caught_up` with what the catch-up brought (spec 05 J15: "12 changes
        from Alex and Jordan · 2 conflicts"): `changes` (bundles applied), `authors` [{actor_id,
        name, changes}] (most first) and `conflicts`, the open conflicts one of whose values
        arrived in it (our seqs start < s <= end). The conflicts projection lags the writer, so
        the event goes out once it has applied `end` (bounded; `conflicts` is then null)."""
        event = {**event, "changes": sum(authors.values()),
                 "authors": [{"actor_id": a.hex(), "name": None, "changes": n}
                             for a, n in sorted(authors.items(), key=lambda x: (-x[1], x[0]))],
                 "conflicts": 0}
        if not authors or self._nursery is None:
            self._publish(event)
            return
        self._nursery.start_soon(self._summarize, event, start, end)

    async def _summarize(self, event: dict[str, Any], start: int, end: int) -> None:
        session = self.session
        links = {p.peer_id: p.peer_name for p in self.links.values() if p.peer_name}

        def read(c: Any) -> tuple[int, dict[str, str]]:
            seqs: dict[str, int | None] = {}

            def first_seq(bundle: str) -> int | None:
                if bundle not in seqs:
                    row = c.proj.conn.execute("SELECT first_seq FROM bundles WHERE bundle_id = ?",
                                              (ids.from_text(bundle),)).fetchone()
                    seqs[bundle] = int(row[0]) if row else None
                return seqs[bundle]

            n = 0
            for rec in c.proj.list_conflicts("open"):
                if any(start < (first_seq(t["bundle_id"]) or 0) <= end for t in rec["tips"]):
                    n += 1
            return n, c.actor_names()

        with trio.move_on_after(30) as scope:
            await session.conflicts.wait_applied(end)
            n, names = await session.conflict_reader.read(read)
        if scope.cancelled_caught:
            event["conflicts"] = None
            names = {}
        else:
            event["conflicts"] = n
        for a in event["authors"]:
            a["name"] = names.get(a["actor_id"]) or links.get(a["actor_id"])
        self._publish(event)

    async def directory(self) -> m.Directory:
        """The answer to `list`: our workspace, unless it is still arriving here."""
        if self.genesis is None:
            return m.Directory(workspaces=[])
        join = (await self.lifecycle()).join_mode
        return m.Directory(workspaces=[{"ws": self.ws, "name": self.workspace_name(),
                                        "join": join, "gh": self.genesis.hex()[:16]}])

    def workspace_name(self) -> str:
        for (v,) in self.session.ws.storage.conn.execute(
                "SELECT body FROM ops WHERE t = 'CreateWorkspace' ORDER BY hlc LIMIT 1"):
            from openprod.core import codec

            body = codec.decode(bytes(v))
            name = body.get("p", {}).get("name") if isinstance(body, dict) else None
            return str(name)[: m.MAX_TEXT] if name else "Workspace"
        return "Workspace"

    def _register(self, peer: SyncPeer) -> None:
        """Admit an authenticated link; of two links to one peer keep the lower actor's dial."""
        assert peer.peer_actor is not None
        other = self.links.get(peer.peer_actor)
        if other is not None:
            low_dials = min(self.actor, peer.peer_actor) == (
                self.actor if peer.role == "dialer" else peer.peer_actor)
            other_low = min(self.actor, peer.peer_actor) == (
                self.actor if other.role == "dialer" else peer.peer_actor)
            if other_low and not low_dials:
                raise m.ProtocolError(m.CLOSE_DUPLICATE, "already linked to this peer")
            other.fail(m.CLOSE_DUPLICATE, "replaced by a newer link")
        self.pending.discard(peer)
        self.links[peer.peer_actor] = peer
        self.blobs.peer_connected()
        self.changed.unpark_all()

    # --- the join gate and misbehaviour penalties (spec 03 §2 Join modes, §4 Dialing) ------

    def join_proof(self, hello: m.Hello) -> bytes | None:
        """Our proof of the access code for this peer (its nonce is the one it checks)."""
        if not self.access_code:
            return None
        try:
            return lcmod.join_proof(self.ws, self.actor, hello.nonce, self.access_code)
        except ValueError:
            return None

    async def lifecycle(self) -> lcmod.Lifecycle:
        if self._lc_conn is None:
            self._lc_conn = self.open_reader()
        conn = self._lc_conn
        return await blocking.run_sync(lcmod.read, conn, self.ws)

    async def _gate(self, peer: SyncPeer, hs: Handshake) -> None:
        """After both auths verify, before anything else: refuse a peer serving a penalty,
        and in access-key mode a non-member without a valid proof (4004). A valid proof is
        recorded as an `admit` entry before our clock goes out."""
        actor = peer.peer_actor
        assert actor is not None
        ip = peer.addr.rsplit(":", 1)[0]
        now = trio.current_time()
        for key in (actor.hex(), ip):
            pen = self.penalties.get(key)
            if pen is not None and pen[0] > now:
                raise m.ProtocolError(pen[2], "still in misbehaviour backoff",
                                      retry_in_s=round(pen[0] - now))
        lc = await self.lifecycle()
        if lc.join_mode != "key" or self._is_member(lc, actor):
            return
        lock = self.lockouts.get(ip)
        if lock is not None and lock[1] > now:
            raise m.ProtocolError(m.CLOSE_JOIN_REFUSED, "too many wrong access codes; wait")
        if hs.peer_join is not None:
            kid = lcmod.match_key(lc, self.ws, actor, hs.nonce, hs.peer_join, self.now_ms())
            if kid is not None:
                await self.writer.call(lambda ws: ws.admit_joiner(actor, kid))
                self.lockouts.pop(ip, None)
                return
            fails, until, span = self.lockouts.get(ip, (0, 0.0, 0.0))
            fails += 1
            if fails >= self.config.proof_failures:
                span = self.config.lockout_s if span == 0 else span * 2
                until, fails = now + span, 0
            self.lockouts[ip] = (fails, until, span)
            raise m.ProtocolError(m.CLOSE_JOIN_REFUSED, "wrong or expired access code")
        raise m.ProtocolError(m.CLOSE_JOIN_REFUSED, "this workspace needs an access code")

    def _is_member(self, lc: lcmod.Lifecycle, actor: bytes) -> bool:
        """Owner, admitted, or an author of something we hold (joined while it was open)."""
        return actor == lc.owner or actor in lc.admitted or actor in self.local_vc()

    def _penalize(self, peer: SyncPeer, code: int) -> None:
        """Misbehaviour closes back off accepting as well as dialing: 60 s doubling to 30 min."""
        now = trio.current_time()
        for key in (peer.peer_id, peer.addr.rsplit(":", 1)[0]):
            if not key or key == "memory":
                continue
            prev = self.penalties.get(key)
            span = self.config.penalty_min_s if prev is None else min(
                self.config.penalty_max_s, prev[1] * 2)
            self.penalties[key] = (now + span, span, code)

    def _unregister(self, peer: SyncPeer, code: int, reason: str) -> None:
        self.pending.discard(peer)
        if code in MISBEHAVIOUR and peer.failure is not None and (
                peer.failure.code == code and not peer.failure.remote):
            self._penalize(peer, code)
        if peer.peer_actor is not None and self.links.get(peer.peer_actor) is peer:
            del self.links[peer.peer_actor]
            self.blobs.lost(peer.peer_actor)
            self.last_seen[peer.peer_id] = {"peer_id": peer.peer_id, "name": peer.peer_name,
                                            "addr": peer.addr, "code": code,
                                            "at_ms": self.now_ms()}
        if peer.dialer is not None and peer.peer_actor is not None:
            peer.dialer["actor"] = peer.peer_actor  # a dialer never doubles an inbound link
        if peer.connected_at is not None or (peer.peer_actor is not None and code != 1000):
            # also a link refused after hello (e.g. 4004: the join needs an access code)
            event = {"type": "sync_peer_disconnected", "peer_id": peer.peer_id, "code": code,
                     "reason": reason, "connected": peer.connected_at is not None,
                     "retry_in_s": None}
            if peer.dialer is not None:
                peer.dialer["closed_event"] = event  # published with the backoff it chose
            else:
                self._publish(event)
        self.changed.unpark_all()

    def _new_bundles(self, source: SyncPeer) -> None:
        self._sources.add(source)
        self._new.set()

    async def _after_ingest(self) -> None:
        """A joining replica turns active once the genesis arrived (and matches the advert)."""
        if self.genesis is not None:
            return
        gh = await self.writer.call(lambda ws: ws.genesis_hash())
        if gh is None:
            return
        if self.expected_genesis and gh.hex()[:16] != self.expected_genesis:
            self._publish({"type": "sync_workspace_collision", "ws": ids.to_text(self.ws),
                           "expected": self.expected_genesis, "got": gh.hex()[:16]})
            return
        self.genesis = gh
        if self.on_joined is not None:
            self.on_joined()
        self._publish({"type": "workspace_joined", "workspace_id": ids.to_text(self.ws)})

    # --- links -------------------------------------------------------------------------------

    async def run_link(self, conn: WebSocketConnection, role: Role, addr: str,
                       via: str, dialer: dict[str, Any] | None = None) -> int:
        peer = SyncPeer(self, conn, role, addr, via)
        peer.dialer = dialer
        self.pending.add(peer)
        try:
            return await peer.run()
        finally:
            self.pending.discard(peer)

    async def accept_stream(self, stream: trio.abc.Stream, addr: str = "memory",
                            via: str = "harness") -> int:
        """Serve one link over a byte stream (the harness's in-memory streams)."""
        async with trio.open_nursery() as n:
            req = await trio_websocket.wrap_server_stream(
                n, stream, message_queue_size=1, max_message_size=self.config.max_message,
                receive_buffer_size=RECEIVE_BYTES)
            conn = await req.accept(subprotocol=m.SUBPROTOCOL)
            code = await self.run_link(conn, "acceptor", addr, via)
            n.cancel_scope.cancel()
        return code

    async def dial_stream(self, stream: trio.abc.Stream, addr: str = "memory",
                          via: str = "harness") -> int:
        async with trio.open_nursery() as n:
            conn = await trio_websocket.wrap_client_stream(
                n, stream,  # type: ignore[arg-type]  # any trio Stream works
                "peer", RESOURCE, subprotocols=[m.SUBPROTOCOL],
                message_queue_size=1, max_message_size=self.config.max_message,
                receive_buffer_size=RECEIVE_BYTES)
            code = await self.run_link(conn, "dialer", addr, via)
            n.cancel_scope.cancel()
        return code

    async def _handle_request(self, request: WebSocketRequest) -> None:
        if request.path != RESOURCE or m.SUBPROTOCOL not in request.proposed_subprotocols:
            await request.reject(404)
            return
        remote = request.remote
        addr = (str(remote) if isinstance(remote, str)
                else f"{remote.address}:{remote.port}")
        conn = await request.accept(subprotocol=m.SUBPROTOCOL)
        await self.run_link(conn, "acceptor", addr, "lan")

    async def listen(self, host: str, port: int, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """The peer port: WebSocket `ws://host:port/openprod/sync` (spec 03 §0)."""
        async with trio.open_nursery() as n:
            server = await n.start(lambda task_status: trio_websocket.serve_websocket(
                self._handle_request, host, port, ssl_context=None, handler_nursery=None,
                message_queue_size=1, max_message_size=self.config.max_message,
                receive_buffer_size=RECEIVE_BYTES, task_status=task_status))
            self.port = server.port
            task_status.started(server.port)

    async def dial(self, host: str, port: int, via: str = "manual",
                   dialer: dict[str, Any] | None = None) -> int:
        """One dial of `ws://host:port/openprod/sync`; returns the link's close code."""
        url = f"ws://{host}:{port}{RESOURCE}"
        try:
            async with trio_websocket.open_websocket_url(
                    url, subprotocols=[m.SUBPROTOCOL], message_queue_size=1,
                    max_message_size=self.config.max_message, receive_buffer_size=RECEIVE_BYTES,
                    connect_timeout=self.config.connect_timeout_s,
                    disconnect_timeout=2) as conn:
                return await self.run_link(conn, "dialer", f"{host}:{port}", via, dialer)
        except (OSError, trio_websocket.HandshakeError, trio.TooSlowError,
                trio_websocket.ConnectionClosed) as exc:
            log.info("dial %s failed: %s", url, exc)
            return 1006

    # --- dialers (manual and discovered peers) ---------------------------------------------------

    def _start_dialer(self, key: str, host: str, port: int, via: str,
                      delay: float = 0.0, actor: bytes | None = None) -> None:
        old = self.dialers.get(key)
        # a dialer still closing after its removal does not stand for a re-added peer
        if (old is not None and not old["cancel"].cancel_called) or self._nursery is None:
            return
        cs = trio.CancelScope()
        info: dict[str, Any] = {"key": key, "host": host, "port": port, "via": via,
                                "state": "connecting", "cancel": cs, "retry_at": None,
                                "actor": actor}
        self.dialers[key] = info
        self._nursery.start_soon(self._dialer, info, delay)

    async def _dialer(self, info: dict[str, Any], delay: float) -> None:
        backoff = Backoff(self.config, self.rng)
        try:
            with info["cancel"]:
                if delay:
                    info["state"] = "waiting"
                    await trio.sleep(delay)
                while True:
                    actor = info.get("actor")
                    if actor is not None and actor in self.links:
                        info["state"] = "linked_inbound"
                        await self._wait_unlinked(actor)
                        continue
                    info["state"] = "connecting"
                    started = trio.current_time()
                    code = await self.dial(info["host"], info["port"], info["via"], info)
                    wait = backoff.next(code, trio.current_time() - started)
                    info["state"] = "backoff"
                    info["last_code"] = code
                    info["retry_at_ms"] = self.now_ms() + int(wait * 1000)
                    event = info.pop("closed_event", None)
                    if event is not None:
                        self._publish({**event, "retry_in_s": round(wait, 1)})
                    self.changed.unpark_all()
                    await trio.sleep(wait)
        finally:
            if self.dialers.get(info["key"]) is info:  # not its replacement (re-added)
                del self.dialers[info["key"]]
            event = info.pop("closed_event", None)
            if event is not None:  # removed (or shutting down): no retry
                self._publish(event)

    async def _wait_unlinked(self, actor: bytes) -> None:
        while actor in self.links:
            await self.changed.park()

    def add_manual_peer(self, host: str, port: int) -> str:
        key = f"{host}:{port}"
        if key not in self.manual_peers:
            self.manual_peers.append(key)
            if self._save_peers is not None:
                self._save_peers(list(self.manual_peers))
        self._start_dialer(key, host, port, "manual")
        return key

    def remove_manual_peer(self, host: str, port: int) -> bool:
        key = f"{host}:{port}"
        if key not in self.manual_peers:
            return False
        self.manual_peers.remove(key)
        if self._save_peers is not None:
            self._save_peers(list(self.manual_peers))
        d = self.dialers.get(key)
        if d is not None:
            d["cancel"].cancel()
        return True

    def on_discovered(self, actor: bytes, addresses: list[str], port: int, name: str) -> None:
        """A dialable advert (our workspace, not us): the lower actor dials now, the other
        side after 15 s if nothing has arrived by then."""
        self.discovered[actor] = {"peer_id": actor.hex(), "name": name,
                                  "addresses": addresses, "port": port}
        self._publish({"type": "peer_discovered", "peer_id": actor.hex(), "name": name,
                       "addresses": addresses, "port": port})
        if not addresses:
            return
        # A joining replica does not advertise (spec 03 §2), so the peer cannot dial it: it
        # dials at once whatever the actor order.
        delay = 0.0 if self.actor < actor or self.genesis is None else self.config.late_dial_s
        self._start_dialer(f"mdns:{actor.hex()}", addresses[0], port, "mdns", delay, actor)

    def on_lost(self, actor: bytes) -> None:
        self.discovered.pop(actor, None)
        self._publish({"type": "peer_lost", "peer_id": actor.hex()})
        d = self.dialers.get(f"mdns:{actor.hex()}")
        if d is not None and actor not in self.links:
            d["cancel"].cancel()

    # --- background tasks --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        try:
            await self._run(task_status)
        finally:
            self.verify_pool.close()
            if self._lc_conn is not None:
                self._lc_conn.close()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as n:
            self._nursery = n
            await n.start(self.blobs.run)
            n.start_soon(self._fanout)
            n.start_soon(self._announcer)
            n.start_soon(self._anti_entropy)
            for key in list(self.manual_peers):
                host, _, port = key.rpartition(":")
                if host and port.isdigit():
                    self._start_dialer(key, host, int(port), "manual")
            task_status.started()
            await trio.sleep_forever()

    async def _fanout(self) -> None:
        """Push our own new bundles live to every link (authors push their own, §0)."""
        conn = db.connect(self.path / OPLOG_FILE, synchronous="NORMAL")
        try:
            seq = self._appended.done
            while True:
                head = await self._appended.next()
                while True:
                    records, prev, _, last = await blocking.run_sync(
                        catchup.own_after, conn, self.actor, seq)
                    if not records:
                        break
                    for peer in list(self.links.values()):
                        peer.push_live(records, {self.actor: prev})
                    seq = last
                seq = max(seq, head)
                self._appended.advance(head)
        finally:
            conn.close()

    async def _announcer(self) -> None:
        """250 ms after the last new bundle from a peer, send our clock to the other peers."""
        while True:
            await self._new.wait()
            while True:
                self._new = trio.Event()
                with trio.move_on_after(self.config.announce_s) as cs:
                    await self._new.wait()
                if cs.cancelled_caught:
                    break
            sources, self._sources = self._sources, set()
            vc = self.local_vc()
            for peer in list(self.links.values()):
                if any(s is not peer for s in sources):
                    self._clock_to(peer, vc)
            self.changed.unpark_all()  # idle() may hold now

    async def _anti_entropy(self) -> None:
        while True:
            await trio.sleep(self.config.anti_entropy_s)
            peers = list(self.links.values())
            if peers:
                self._clock_to(self.rng.choice(peers), self.local_vc())

    def _clock_to(self, peer: SyncPeer, vc: vcmod.VClock) -> None:
        try:
            peer.lanes.put_control(peer.link.clock(vc))
        except Exception as exc:
            peer.fail(m.CLOSE_TOO_SLOW, str(exc))

    # --- status ------------------------------------------------------------------------------

    def idle(self) -> bool:
        return not self.pending and all(p.idle for p in self.links.values()) and (
            not self._new.is_set() and not self._sources)

    def status(self) -> dict[str, Any]:
        peers = [p.info() for p in self.links.values()]
        linked = {p["peer_id"] for p in peers}
        for d in self.dialers.values():
            if d.get("actor") is not None and d["actor"].hex() in linked:
                continue
            if d["state"] in ("connecting", "backoff", "waiting"):
                peers.append({"peer_id": d["actor"].hex() if d.get("actor") else None,
                              "addr": d["key"], "via": d["via"], "state": d["state"],
                              "retry_at_ms": d.get("retry_at_ms"),
                              "last_code": d.get("last_code")})
        remaining = sum(p.get("remaining", 0) or 0 for p in peers if p["state"] == "connected")
        return {"enabled": True, "port": self.port, "actor_id": self.actor.hex(),
                "workspace_id": ids.to_text(self.ws),
                "genesis": self.genesis.hex()[:16] if self.genesis else None,
                "joining": self.genesis is None,
                "connected": len(self.links), "remaining": remaining,
                # file downloads under way (spec 05 J15 "Fetching files · 2")
                "fetching": len(self.blobs.jobs),
                "peers": peers, "manual_peers": list(self.manual_peers),
                "discovered": list(self.discovered.values()),
                "last_seen": [v for k, v in self.last_seen.items() if k not in linked]}


async def request_directory(conn: WebSocketConnection,
                            timeout: float = 5.0) -> list[dict[str, Any]]:
    """Ask a peer which workspaces it serves (`list` → `directory`, spec 03 §4 Manual). The
    peer opens with its `hello` (both sides of a link do): skip it."""
    with trio.fail_after(timeout):
        await conn.send_message(m.encode(m.ListWorkspaces()))
        for _ in range(2):
            frame = await conn.get_message()
            if not isinstance(frame, bytes):
                raise m.ProtocolError(m.CLOSE_PROTOCOL, "text frames are not part of the "
                                      "protocol")
            msg = m.decode(frame, before_auth=True, pre_auth=m.PRE_AUTH | {"directory"})
            if isinstance(msg, m.Directory):
                return [{"ws": ids.to_text(w["ws"]), "name": w["name"], "join": w["join"],
                         "gh": w["gh"]} for w in msg.workspaces]
            if not isinstance(msg, m.Hello):
                break
    raise m.ProtocolError(m.CLOSE_PROTOCOL, f"expected a directory, got {msg.T}")


async def lookup(host: str, port: int, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The workspaces served at host:port (for joining by address)."""
    url = f"ws://{host}:{port}{RESOURCE}"
    async with trio_websocket.open_websocket_url(
            url, subprotocols=[m.SUBPROTOCOL], message_queue_size=1,
            max_message_size=m.MAX_PRE_AUTH_SIZE * 16, connect_timeout=timeout,
            disconnect_timeout=2) as conn:
        return await request_directory(conn, timeout)
