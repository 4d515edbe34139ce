"""SyncPeer: one WebSocket link to one peer (spec 03 §5–§6), driven by the sans-I/O machines.

After the handshake (`openprod.sync.handshake`) a link runs these tasks in its own nursery; a
failure in any closes only this link, with the close code the spec gives:

- reader: frames in, strictly decoded; control messages answered at once; `ops` go to a
  one-slot inbox, so a busy writer pushes back on the sender through TCP.
- verifier → committer: records checked in worker threads (both cores, `CapacityLimiter(2)`),
  then admitted by the OplogWriter with the message's `prev` (gap check); `ack` after commit.
- writer: the lanes, control before data; the data lane is bounded, a full one turns live
  pushes into a later session from the peer's last acked clock.
- streamer: outbound sessions, one page per short read transaction on the link's connection.
- watchdog: ping when idle, dead link (45 s), ack progress (60 s), and the convergence check
  once both sessions are done and the link has been quiet for 2 s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from actors import blocking
from openprod.core import ids
from openprod.core import ops as O
from openprod.core import vclock as vcmod
from openprod.engine.workspace import OPLOG_FILE, IngestReport, Workspace
from openprod.storage import db
from openprod.sync import catchup, convergence
from openprod.sync import messages as m
from openprod.sync.handshake import Handshake, Role
from openprod.sync.link import Link
from openprod.sync.receipt import Checked, check_records, check_records_at

if TYPE_CHECKING:
    from actors.sync_service import SyncService

log = logging.getLogger("openprod.sync")

INTEGRITY = frozenset([m.REJECT_BAD_SIGNATURE, m.REJECT_BAD_DIGEST, m.REJECT_MALFORMED])
MISBEHAVIOUR = frozenset([m.CLOSE_BAD_AUTH, m.CLOSE_PROTOCOL, m.CLOSE_INVALID_SIGNED_DATA,
                          m.CLOSE_TOO_BIG])


class LinkFailed(Exception):
    def __init__(self, code: int, reason: str, *, remote: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.remote = remote  # the peer closed with this code (we did not decide it)


class Lanes:
    """Outgoing messages: a control lane always served first, then the bounded data lane and
    the bounded blob lane taking turns, so ops and acks never wait behind blob chunks (nor
    chunks forever behind a long catch-up)."""

    def __init__(self, control: int, data: int, blob: int = 8) -> None:
        self.control: deque[m.Message] = deque()
        self.data: deque[m.Message] = deque()
        self.blob: deque[m.Message] = deque()
        self.control_cap = control
        self.data_cap = data
        self.blob_cap = blob
        self._ready = trio.Event()
        self._space = trio.lowlevel.ParkingLot()
        self._blob_space = trio.lowlevel.ParkingLot()
        self._blob_turn = False

    def put_control(self, msg: m.Message) -> None:
        if len(self.control) >= self.control_cap:
            raise LinkFailed(m.CLOSE_TOO_SLOW, "the peer does not read its control messages")
        self.control.append(msg)
        self._ready.set()

    def data_full(self) -> bool:
        return len(self.data) >= self.data_cap

    def put_data_nowait(self, msg: m.Message) -> bool:
        if self.data_full():
            return False
        self.data.append(msg)
        self._ready.set()
        return True

    async def put_data(self, msg: m.Message) -> None:
        while self.data_full():
            await self._space.park()
        self.data.append(msg)
        self._ready.set()

    async def put_blob(self, msg: m.Message) -> None:
        while len(self.blob) >= self.blob_cap:
            await self._blob_space.park()
        self.blob.append(msg)
        self._ready.set()

    async def get(self) -> m.Message:
        while not self.control and not self.data and not self.blob:
            self._ready = trio.Event()
            await self._ready.wait()
        if self.control:
            return self.control.popleft()
        self._blob_turn = not self._blob_turn
        if self.blob and (self._blob_turn or not self.data):
            msg = self.blob.popleft()
            self._blob_space.unpark_all()
            return msg
        msg = self.data.popleft()
        self._space.unpark_all()
        return msg

    @property
    def empty(self) -> bool:
        return not self.control and not self.data and not self.blob


class SyncPeer:
    def __init__(self, svc: SyncService, conn: WebSocketConnection, role: Role, addr: str,
                 via: str) -> None:
        self.svc = svc
        self.conn = conn
        self.role: Role = role
        self.addr = addr
        self.via = via
        cfg = svc.config
        self.link = Link(max_unacked=cfg.max_unacked)
        self.lanes = Lanes(cfg.control_lane, cfg.data_lane)
        self.peer_actor: bytes | None = None
        self.peer_name = ""
        self.peer_device = ""
        self.connected_at: float | None = None
        self.cancel_scope = trio.CancelScope()
        self.failure: LinkFailed | None = None
        self.close_code = m.CLOSE_NORMAL
        now = trio.current_time()
        self.last_rx = self.last_tx = self.ack_clock = now
        self._sent_seq = 0  # highest `ops` seq handed to the socket (unacked ones may be queued)
        self._poke = trio.Event()
        self._session_wake = trio.Event()
        self._window = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()
        self._ping_n = 0
        self._pings: dict[int, float] = {}
        self._skew_warned = False
        self._state_sent: tuple[vcmod.VClock, float] | None = None
        self._converged_vc: vcmod.VClock | None = None
        self._progress_at = -1.0
        self._in_remaining: int | None = None
        self.in_applied = 0
        self.in_dup = 0  # bundles received that we already held (what our acks counted as dup)
        # the catch-up under way: (our head before it, bundles it applied per author)
        self._catchup: tuple[int, dict[bytes, int]] | None = None
        self.out_remaining = 0
        self._conn: Any = None  # the link's reader connection (sessions, snapshots)
        self._partial: tuple[m.Ops, list[Any], int] | None = None
        self.dialer: dict[str, Any] | None = None  # the SyncService dialer that made this link

    # --- public view -------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self.peer_actor.hex() if self.peer_actor else ""

    def info(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "name": self.peer_name, "device": self.peer_device,
                "addr": self.addr, "via": self.via, "state": "connected",
                "role": self.role, "catching_up": not self.link.inbound_done,
                "remaining": self._in_remaining or 0, "sending": self.out_remaining,
                "idle": self.idle}

    @property
    def idle(self) -> bool:
        return self.link.quiet and self.lanes.empty

    def fail(self, code: int, reason: str, *, remote: bool = False) -> None:
        """Close this link with `code` (from any task; the first failure wins)."""
        if self.failure is None:
            self.failure = LinkFailed(code, reason, remote=remote)
        self.cancel_scope.cancel()

    # --- running -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Handshake, then serve the link until it closes; returns the close code."""
        try:
            with self.cancel_scope:
                await self._guard(self._link)
        finally:
            code = self.failure.code if self.failure else m.CLOSE_NORMAL
            reason = self.failure.reason if self.failure else ""
            self.close_code = code
            # a broken socket may fail to close in any way
            with trio.CancelScope(shield=True), trio.move_on_after(2), contextlib.suppress(
                    Exception):
                await self.conn.aclose(code=code, reason=reason[:120])
            if self._conn is not None:
                self._conn.close()
            self.svc._unregister(self, code, reason)
        return code

    async def _link(self) -> None:
        """Handshake, gate, register, then serve (a `list` request ends after the reply)."""
        hs = await self._handshake()
        if hs is None:
            return
        await self.svc._gate(self, hs)
        self.svc._register(self)
        self._conn = db.connect(self.svc.path / OPLOG_FILE, synchronous="NORMAL")
        self.connected_at = trio.current_time()
        self.svc._publish({"type": "sync_peer_connected", "peer_id": self.peer_id,
                           "name": self.peer_name, "addr": self.addr, "via": self.via})
        self._send_control(self.link.clock(self.svc.local_vc()))
        await self._serve()

    async def _handshake(self) -> Handshake | None:
        svc = self.svc
        hs = Handshake(self.role, svc.ident, svc.ws, svc.genesis,
                       name=svc.ident.display_name, device=svc.ident.device_name,
                       join=svc.join_proof if svc.access_code else None)
        with trio.move_on_after(svc.config.handshake_s) as cs:
            await self._send_now(hs.start()[0])
            while not hs.authenticated:
                msg = m.decode(await self._frame(), before_auth=True)
                if isinstance(msg, m.ListWorkspaces) and self.role == "acceptor" and (
                        hs.peer_hello is None):
                    await self._send_now(await svc.directory())
                    return None
                try:
                    out = hs.receive(msg)
                except m.ProtocolError as exc:
                    if exc.details.get("collision"):
                        svc._publish({"type": "sync_workspace_collision", "addr": self.addr,
                                      "peer_id": msg.actor.hex() if isinstance(msg, m.Hello)
                                      else ""})
                    raise
                if hs.peer_hello is not None:
                    self.peer_actor = hs.peer_hello.actor
                    self.peer_name = hs.peer_hello.name
                    self.peer_device = hs.peer_hello.device
                for reply in out:
                    if not isinstance(reply, m.ClockMsg):  # our clock goes after registration
                        await self._send_now(reply)
        if cs.cancelled_caught:
            raise LinkFailed(m.CLOSE_TOO_SLOW, "handshake deadline passed")
        return hs

    async def _frame(self) -> bytes:
        frame = await self.conn.get_message()
        self.last_rx = trio.current_time()
        self._poke.set()
        if not isinstance(frame, bytes):
            raise m.ProtocolError(m.CLOSE_PROTOCOL, "text frames are not part of the protocol")
        return frame

    async def _send_now(self, msg: m.Message) -> None:
        await self.conn.send_message(m.encode(msg))
        self.last_tx = trio.current_time()

    def _send_control(self, msg: m.Message) -> None:
        self.lanes.put_control(msg)

    def send_control(self, msg: m.Message) -> None:
        """For the blob service: a small request (blob_query, blob_get) on the control lane."""
        self.lanes.put_control(msg)

    async def send_blob(self, msg: m.Message) -> None:
        """For the blob service: a chunk or blob_err on the blob lane (waits for room)."""
        await self.lanes.put_blob(msg)

    async def _serve(self) -> None:
        inbox_send, inbox_recv = trio.open_memory_channel[m.Ops](0)
        commit_send, commit_recv = trio.open_memory_channel[tuple[m.Ops, list[Checked]]](0)
        async with trio.open_nursery() as n:
            n.start_soon(self._guard, self._reader, inbox_send)
            n.start_soon(self._guard, self._verifier, inbox_recv, commit_send)
            n.start_soon(self._guard, self._committer, commit_recv)
            n.start_soon(self._guard, self._writer)
            n.start_soon(self._guard, self._streamer)
            n.start_soon(self._guard, self._watchdog)

    async def _guard(self, fn: Any, *args: Any) -> None:
        """Run one link task; whatever ends it closes this link only (never the node)."""
        try:
            await fn(*args)
        except m.ProtocolError as exc:
            self.fail(exc.close_code, exc.message)
        except LinkFailed as exc:
            self.fail(exc.code, exc.reason)
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason is not None else 1006
            self.fail(code, "closed by the peer", remote=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            self.fail(1006, "connection lost")
        except Exception as exc:  # a bug must not take the node down with one link
            log.exception("sync link to %s failed", self.peer_id or self.addr)
            self.fail(1011, f"internal error: {exc}")

    # --- reader ------------------------------------------------------------------------------

    async def _reader(self, inbox: trio.MemorySendChannel[m.Ops]) -> None:
        async with inbox:
            while True:
                msg = m.decode(await self._frame(), before_auth=False,
                               max_size=self.svc.config.max_message)
                if isinstance(msg, m.Ops):
                    whole = self._reassemble(msg)
                    if whole is not None:
                        await inbox.send(whole)
                elif isinstance(msg, m.ClockMsg):
                    for reply in self.link.on_clock(msg, self.svc.local_vc()):
                        self._send_control(reply)
                    self._wake_streamer()
                elif isinstance(msg, m.Ack):
                    self._on_ack(msg)
                elif isinstance(msg, m.Ping):
                    self._send_control(m.Pong(n=msg.n, wall_ms=self.svc.now_ms()))
                elif isinstance(msg, m.Pong):
                    self._on_pong(msg)
                elif isinstance(msg, m.State):
                    await self._on_state(msg)
                elif isinstance(msg, m.Hello | m.Auth | m.ListWorkspaces | m.Directory):
                    raise m.ProtocolError(m.CLOSE_PROTOCOL, f"{msg.T} after the handshake")
                elif isinstance(msg, m.BlobQuery):
                    self._send_control(await self.svc.blobs.have(msg))
                elif isinstance(msg, m.BlobGet):
                    self.svc.blobs.serve(self, msg)
                elif isinstance(msg, m.BlobHave | m.BlobChunk | m.BlobErr):
                    assert self.peer_actor is not None
                    self.svc.blobs.on_reply(self.peer_actor, msg)

    def _reassemble(self, msg: m.Ops) -> m.Ops | None:
        """Large bundles (spec 03 §5): one bundle split over `more`/`cont` messages is buffered
        (at most one per link, at most 64 MiB) and passed on whole; parts are acked at once."""
        partial = self._partial
        if partial is not None:
            if msg.cont is None or msg.bundles:
                raise m.ProtocolError(m.CLOSE_PROTOCOL, "expected the rest of a split bundle")
            first, record, size = partial
            size += sum(len(b) for b in msg.cont)
            if size > O.MAX_BUNDLE:
                raise m.ProtocolError(m.CLOSE_PROTOCOL, "split bundle exceeds 64 MiB")
            record[2].extend(msg.cont)
            if msg.more:
                self._partial = (first, record, size)
                self._ack_part(msg)
                return None
            self._partial = None
            return attrs.evolve(first, seq=msg.seq, bundles=[record], more=False, cont=None)
        if msg.cont is not None:
            raise m.ProtocolError(m.CLOSE_PROTOCOL, "cont without a split bundle")
        if msg.more:
            if len(msg.bundles) != 1 or msg.done or msg.live:
                raise m.ProtocolError(m.CLOSE_PROTOCOL, "a split message carries one bundle")
            rec = msg.bundles[0]
            self._partial = (msg, [rec[0], rec[1], list(rec[2])], catchup.record_size(rec))
            self._ack_part(msg)
            return None
        return msg

    def _ack_part(self, msg: m.Ops) -> None:
        self._send_control(m.Ack(seq=msg.seq, vc=self.svc.local_vc(), applied=0, dup=0))

    def _on_ack(self, ack: m.Ack) -> None:
        verdict = self.link.on_ack(ack)
        self.ack_clock = trio.current_time()
        self._window.unpark_all()
        for bid, code in ack.rejected:
            self.svc._publish({"type": "sync_rejected", "peer_id": self.peer_id,
                               "direction": "out", "bundle_id": ids.to_text(bid),
                               "code": code})
        if verdict == "restart":
            self._wake_streamer()
        self._poke.set()
        self.svc.changed.unpark_all()  # idleness may have changed (status waiters re-check)

    def _on_pong(self, pong: m.Pong) -> None:
        sent = self._pings.pop(pong.n, None)
        if sent is None:
            return
        rtt_ms = (trio.current_time() - sent) * 1000
        skew = pong.wall_ms - self.svc.now_ms() + rtt_ms / 2
        if abs(skew) > self.svc.config.skew_warn_ms and not self._skew_warned:
            self._skew_warned = True
            self.svc._publish({"type": "sync_clock_skew", "peer_id": self.peer_id,
                               "skew_ms": int(skew)})

    # --- receiving ops -----------------------------------------------------------------------

    async def _verifier(self, inbox: trio.MemoryReceiveChannel[m.Ops],
                        out: trio.MemorySendChannel[tuple[m.Ops, list[Checked]]]) -> None:
        async with inbox, out:
            async for msg in inbox:
                await out.send((msg, await self.svc.check(msg.bundles)))

    async def _committer(self, inbox: trio.MemoryReceiveChannel[tuple[m.Ops, list[Checked]]],
                         ) -> None:
        svc = self.svc
        async with inbox:
            async for msg, checked in inbox:
                if not msg.live and self._catchup is None:
                    self._catchup = (svc.writer.appended, {})
                report = await svc.writer.call(partial(_admit, checked=checked, prev=msg.prev))
                if not msg.live and self._catchup is not None and report.applied:
                    applied, authors = set(report.applied), self._catchup[1]
                    for c in checked:
                        if c.actor is not None and c.bundle_id in applied:
                            authors[c.actor] = authors.get(c.actor, 0) + 1
                rejected = [(bid, code) for bid, code, _ in report.rejected]
                self._send_control(Link.ack_for(msg, svc.local_vc(), len(report.applied),
                                                len(report.dup), rejected))
                self.link.on_ops_received(msg)
                self.in_applied += len(report.applied)
                self.in_dup += len(report.dup)
                if report.applied:
                    svc._new_bundles(self)
                if report.stale:
                    svc._publish({"type": "stale_ops_arrived", "peer_id": self.peer_id,
                                  "bundles": len(report.stale)})
                bad = [(bid, code, why) for bid, code, why in report.rejected
                       if code != m.REJECT_GAP]
                for bid, code, why in bad:
                    svc._publish({"type": "sync_rejected", "peer_id": self.peer_id,
                                  "direction": "in", "code": code, "reason": why,
                                  "bundle_id": ids.to_text(bid) if bid else None})
                self._progress(msg)
                await svc._after_ingest()
                if any(code in INTEGRITY for _, code, _ in bad):
                    svc._publish({"type": "sync_peer_misbehaving", "peer_id": self.peer_id,
                                  "reason": "invalid signed data"})
                    await self._flush()
                    self.fail(m.CLOSE_INVALID_SIGNED_DATA, "invalid signed data")
                self._poke.set()
                svc.changed.unpark_all()

    def _progress(self, msg: m.Ops) -> None:
        """sync_progress (≤ 4/s, `remaining` never rises within a session), sync_caught_up
        (with what this catch-up brought, see SyncService.caught_up)."""
        if msg.live:
            return
        remaining = msg.remaining if msg.remaining is not None else 0
        if msg.done:
            remaining = 0
        if self._in_remaining is not None:
            remaining = min(remaining, self._in_remaining)
        self._in_remaining = remaining
        now = trio.current_time()
        if msg.done or now - self._progress_at >= 0.25:
            self._progress_at = now
            self.svc._publish({"type": "sync_progress", "peer_id": self.peer_id,
                               "direction": "in", "remaining": remaining,
                               "applied": self.in_applied})
        if msg.done:
            self._in_remaining = None
            start, authors = self._catchup or (self.svc.writer.appended, {})
            self._catchup = None
            self.svc.caught_up({"type": "sync_caught_up", "peer_id": self.peer_id,
                                "applied": self.in_applied}, start, self.svc.writer.appended,
                               authors)

    async def _flush(self) -> None:
        """Wait (briefly) until the writer has sent everything queued, e.g. a last ack."""
        with trio.move_on_after(2):
            while not self.lanes.empty:
                await self._drained.park()

    # --- writer ------------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            msg = await self.lanes.get()
            if isinstance(msg, m.Ops):
                # `link.ops` counts a message unacked when it is queued, so the ack-progress
                # timer starts here, when the first one the peer can answer goes out
                if not self._awaiting_ack:
                    self.ack_clock = trio.current_time()
                self._sent_seq = msg.seq
            await self._send_now(msg)
            if self.lanes.empty:
                self._drained.unpark_all()
                self.svc.changed.unpark_all()  # the link may have turned idle

    # --- outbound sessions and live push ---------------------------------------------------------

    def _wake_streamer(self) -> None:
        self._session_wake.set()

    def push_live(self, records: list[list[Any]], prev: dict[bytes, bytes]) -> None:
        """Our own new bundles, unless a session will carry them anyway (spec 03 §6.3)."""
        link = self.link
        if link.session_active or link.session_request is not None or link.deferred:
            return
        if self.lanes.data_full():
            # lagging: drop the push; a session from the last acked clock catches up later
            link.session_request = dict(link.peer_vc)
            self._wake_streamer()
            return
        self.lanes.put_data_nowait(link.ops(records, prev, live=True))

    async def _streamer(self) -> None:
        svc = self.svc
        cfg = svc.config
        while True:
            await self._session_wake.wait()
            self._session_wake = trio.Event()
            vc = self.link.take_session()
            if vc is None:
                continue
            session = catchup.Session(self._conn, vc)
            while True:
                if self.link.session_request is not None:
                    break  # a newer clock restarts the session
                while not self.link.window_open:
                    await self._window.park()
                page = await blocking.run_sync(session.page, cfg.page_bundles, cfg.page_bytes,
                                               cfg.alone_bytes)
                if self.link.session_request is not None:
                    break
                if not page.records:
                    if svc.writer.appended > page.head:
                        continue  # appended while we read: one more page
                    await self.lanes.put_data(self.link.ops([], {}, remaining=0, done=True))
                    self.out_remaining = 0
                    self.link.end_session()
                    self._poke.set()
                    svc.changed.unpark_all()
                    break
                self.out_remaining = page.remaining
                if len(page.records) == 1 and catchup.record_size(
                        page.records[0]) > cfg.alone_bytes:
                    await self._send_split(page)
                    continue
                await self.lanes.put_data(self.link.ops(page.records, page.prev,
                                                        remaining=page.remaining))
            if self.link.session_request is not None:
                self._session_wake.set()

    async def _send_split(self, page: catchup.Page) -> None:
        """One big bundle over consecutive messages: first `more`, then `cont` parts."""
        header, sig, _ = page.records[0]
        parts = catchup.split_record(page.records[0], self.svc.config.part_bytes)
        for i, bodies in enumerate(parts):
            while not self.link.window_open:
                await self._window.park()
            more = i < len(parts) - 1
            if i == 0:
                msg = self.link.ops([[header, sig, bodies]], page.prev,
                                    remaining=page.remaining, more=more)
            else:
                msg = self.link.ops([], {}, remaining=page.remaining, more=more, cont=bodies)
            await self.lanes.put_data(msg)

    # --- watchdog and convergence ------------------------------------------------------------

    @property
    def _awaiting_ack(self) -> bool:
        """An `ops` message we sent (not merely queued) still lacks its ack."""
        return any(seq <= self._sent_seq for seq in self.link.unacked)

    async def _watchdog(self) -> None:
        cfg = self.svc.config
        while True:
            now = trio.current_time()
            # compare with the same sums the wait below sleeps until: `now - t >= d` can be
            # False at `now == t + d` (float rounding), and the loop would spin without sleeping
            if now >= self.last_rx + cfg.dead_s:
                raise LinkFailed(m.CLOSE_TOO_SLOW, "no frame from the peer for too long")
            if self._awaiting_ack and now >= self.ack_clock + cfg.ack_timeout_s:
                raise LinkFailed(m.CLOSE_TOO_SLOW, "the peer stopped acknowledging")
            if now >= self.last_tx + cfg.ping_s:
                self._ping_n += 1
                self._pings = {self._ping_n: now}
                self._send_control(m.Ping(n=self._ping_n, wall_ms=self.svc.now_ms()))
                self.last_tx = now
            deadline = min(self.last_rx + cfg.dead_s, self.last_tx + cfg.ping_s)
            if self._awaiting_ack:
                deadline = min(deadline, self.ack_clock + cfg.ack_timeout_s)
            if self.idle:
                quiet_at = max(self.last_rx, self.last_tx) + cfg.quiet_s
                if now >= quiet_at:
                    await self._maybe_send_state()
                else:
                    deadline = min(deadline, quiet_at)
            self._poke = trio.Event()
            with trio.move_on_at(max(deadline, now)):
                await self._poke.wait()

    async def _snapshot(self) -> convergence.Snapshot:
        svc = self.svc
        while True:
            snap = await blocking.run_sync(convergence.snapshot, self._conn)
            if snap is not None:
                return snap
            await svc.deriver.wait_applied(svc.writer.appended)
            await trio.sleep(0)

    async def _maybe_send_state(self) -> None:
        vc = self.svc.local_vc()
        now = trio.current_time()
        if self._state_sent is not None:
            sent_vc, at = self._state_sent
            if sent_vc == vc and now - at < self.svc.config.state_every_s:
                return
        snap = await self._snapshot()
        self._state_sent = (snap[0], now)
        self._send_control(m.State(vc=snap[0], oplog_digest=snap[1], state_hash=snap[2]))

    async def _on_state(self, msg: m.State) -> None:
        if msg.vc != self.svc.local_vc():
            return  # still syncing; a later exchange decides
        ours = await self._snapshot()
        verdict = convergence.compare(ours, (msg.vc, msg.oplog_digest, msg.state_hash))
        if verdict == "converged":
            if self._converged_vc != ours[0]:
                self._converged_vc = ours[0]
                self.svc._publish({"type": "sync_converged", "peer_id": self.peer_id,
                                   "state_hash": ours[2].hex()})
        elif verdict == "digest_mismatch" and not self.link.full_requested:
            self.link.full_requested = True
            self._send_control(self.link.clock(ours[0], full=True))
        elif verdict in ("digest_mismatch", "divergent"):
            self.svc._publish({"type": "sync_divergence", "peer_id": self.peer_id,
                               "kind": verdict, "ours": {"oplog_digest": ours[1].hex(),
                                                         "state_hash": ours[2].hex()},
                               "theirs": {"oplog_digest": msg.oplog_digest.hex(),
                                          "state_hash": msg.state_hash.hex()}})


def _admit(ws: Workspace, *, checked: list[Checked], prev: vcmod.VClock) -> IngestReport:
    return ws.admit(checked, prev)


async def check_split(records: list[list[Any]], ws: bytes, check_drift: Any,
                      limiter: trio.CapacityLimiter, pool: VerifyPool | None = None,
                      now_ms: int = 0, max_drift_ms: int = 0) -> list[Checked]:
    """Check records in two halves at once, in worker processes when a pool is given (the
    checks are mostly Python: threads would share one core), else in threads."""
    if len(records) < 64 or blocking.INLINE.get():
        return await blocking.run_sync(check_records, records, ws, check_drift, limiter=limiter)
    half = len(records) // 2
    parts: list[list[Checked]] = [[], []]
    # while the workers start (a spawn imports the engine: ~0.3 s) threads check the first
    # messages, so a catch-up never waits for them
    use_pool = pool is not None and pool.ready()

    async def run(i: int, chunk: list[list[Any]]) -> None:
        if use_pool and pool is not None:
            parts[i] = await pool.check(chunk, ws, now_ms, max_drift_ms, limiter)
        else:
            parts[i] = await blocking.run_sync(check_records, chunk, ws, check_drift,
                                               limiter=limiter)

    async with trio.open_nursery() as n:
        n.start_soon(run, 0, records[:half])
        n.start_soon(run, 1, records[half:])
    return parts[0] + parts[1]


class VerifyPool:
    """Two worker processes for bundle checks (spec 03 §6.4: verification over both cores),
    started by the first large `ops` message and shut down with the SyncService."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._warm: list[concurrent.futures.Future[list[Checked]]] = []

    def ready(self) -> bool:
        """Are the workers up? Starts them (without waiting) the first time it is asked."""
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))
            self._warm = [self._pool.submit(check_records_at, [], b"", 0)
                          for _ in range(self.workers)]
        return all(f.done() for f in self._warm)

    async def check(self, records: list[list[Any]], ws: bytes, now_ms: int,
                    max_drift_ms: int, limiter: trio.CapacityLimiter) -> list[Checked]:
        assert self._pool is not None, "ask ready() first"
        fut = self._pool.submit(check_records_at, records, ws, now_ms, max_drift_ms)
        result: list[Checked] = await trio.to_thread.run_sync(fut.result, limiter=limiter)
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self._warm = []
