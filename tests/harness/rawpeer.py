"""RawPeer: a hand-driven peer that crafts forged, garbage, replayed or oversized traffic
(spec 03 §9 harness).

A `RawPeer` speaks the wire protocol message by message with `openprod.sync.messages` and
`openprod.sync.handshake`, and checks nothing it sends. Its link is one end of a `fault_pair()`
(tests/harness/network.py) wrapped by `trio_websocket.wrap_client_stream`; the other end goes to
a real node's `SyncService.accept_stream`, so the node's whole receipt path (WebSocket frame
limits, strict decode, handshake, verification, admission, close codes) is what a test sees.

Memory streams buffer without bound, unlike TCP. A link opened with `window=n` lets at most `n`
bytes be sent and not yet read by the node, so a sender that outruns the node blocks, as it
would on a socket whose window is full (the "reader pauses" backpressure of spec 03 §6.9).

    raw = RawPeer(Identity.generate("mallory"), ws, genesis)
    async with raw.link(svc) as link:
        await link.handshake()
        await link.send(link.ops([forged_record], prev={}))
        ack = await link.recv(m.Ack)
        assert await link.closed() == m.CLOSE_INVALID_SIGNED_DATA
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection

from actors.sync_service import RESOURCE, SyncService
from openprod.core import codec
from openprod.core import ops as O
from openprod.core.identity import Identity
from openprod.sync import messages as m
from openprod.sync.handshake import Handshake
from tests.harness.network import FaultStream, fault_pair

__all__ = ["RawLink", "RawPeer", "Window", "replace_body", "reseal_body", "seal"]

RAW_MAX_MESSAGE = 64 * 1024 * 1024  # what the raw side accepts: it never refuses the node
# Our side queues what the node sends even when the test reads nothing, so the node's close
# frame is always seen (a full one-slot queue would leave it unread behind e.g. its `clock`).
RAW_QUEUE = 1024


class Window:
    """Bytes sent by one end and not yet read by the other, capped at `size` (a TCP window)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.received = 0
        self.waiting = 0  # senders parked on a full window right now
        self._lot = trio.lowlevel.ParkingLot()
        self._blocked = trio.Event()

    @property
    def in_flight(self) -> int:
        return self.sent - self.received

    @property
    def blocked(self) -> bool:
        return self.waiting > 0

    async def wait_blocked(self) -> None:
        """Until a sender first found the window full."""
        await self._blocked.wait()

    async def reserve(self, n: int) -> None:
        while self.in_flight + n > self.size:
            self.waiting += 1
            self._blocked.set()
            try:
                await self._lot.park()
            finally:
                self.waiting -= 1
        self.sent += n

    def consumed(self, n: int) -> None:
        self.received += n
        self._lot.unpark_all()


class _Windowed(trio.abc.HalfCloseableStream):
    """A FaultStream end whose sends (`sender`) or reads (not `sender`) go through a Window."""

    def __init__(self, inner: FaultStream, window: Window, *, sender: bool) -> None:
        self.inner = inner
        self.window = window
        self.sender = sender

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if not self.sender:
            await self.inner.send_all(data)
            return
        step = max(1, self.window.size // 2)
        for i in range(0, len(data), step):
            chunk = data[i:i + step]
            await self.window.reserve(len(chunk))
            await self.inner.send_all(chunk)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        if not self.sender:
            self.window.consumed(len(data))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class RawLink:
    """One raw connection to a node's SyncService; every send is exactly what the test asks."""

    def __init__(self, raw: RawPeer, stream: FaultStream, remote: FaultStream,
                 window: Window | None) -> None:
        self.raw = raw
        self.stream = stream  # our end: cut / stall / throttle
        self.remote = remote  # the node's end
        self.window = window
        self.conn: WebSocketConnection | None = None
        self.code: int | None = None  # the node's close code (accept_stream's return value)
        self.done = trio.Event()
        self.closed_at = float("nan")  # trio time the node finished closing
        self.received: list[m.Message] = []
        self.sent_frames = 0
        self.hello: m.Hello | None = None  # ours, as sent by `handshake`
        self.auth: m.Auth | None = None  # ours, as sent by `handshake`
        self.peer_hello: m.Hello | None = None
        self.last_sent_at: float | None = None
        self._seq = 0

    # --- sending -----------------------------------------------------------------------------
    async def send_raw(self, frame: bytes) -> None:
        """One binary frame, whatever it holds."""
        assert self.conn is not None
        await self.conn.send_message(frame)
        self.sent_frames += 1
        self.last_sent_at = trio.current_time()

    async def send(self, msg: m.Message) -> None:
        await self.send_raw(m.encode(msg))

    async def send_map(self, x: Mapping[str, Any]) -> None:
        """Any map as canonical CBOR (unknown keys, wrong types: nothing is checked)."""
        await self.send_raw(codec.encode(dict(x)))

    def ops(self, records: Sequence[list[Any]], prev: Mapping[bytes, bytes], *,
            seq: int | None = None, live: bool = True, done: bool = False) -> m.Ops:
        """An `ops` message carrying `records` as given (numbered 1, 2, … unless `seq`)."""
        if seq is None:
            self._seq += 1
            seq = self._seq
        return m.Ops(seq=seq, prev=dict(prev), bundles=[list(r) for r in records],
                     live=live, done=done)

    # --- receiving ---------------------------------------------------------------------------
    async def recv(self, *types: type[m.Message], timeout: float = 30) -> m.Message:
        """The next message (of one of `types`, skipping others), failing after `timeout`."""
        assert self.conn is not None
        with trio.fail_after(timeout):
            while True:
                frame = await self.conn.get_message()
                assert isinstance(frame, bytes), "the node sent a text frame"
                msg = m.decode(frame, before_auth=False, max_size=RAW_MAX_MESSAGE)
                self.received.append(msg)
                if not types or isinstance(msg, types):
                    return msg

    async def drain(self, on_message: Callable[[m.Message], None] | None = None) -> None:
        """Read (and record) everything until the link closes; for a background task."""
        with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError,
                                 trio.ClosedResourceError):
            while True:
                msg = await self.recv(timeout=float("inf"))
                if on_message is not None:
                    on_message(msg)

    # --- the handshake -----------------------------------------------------------------------
    async def handshake(self, *, send_clock: bool = True,
                        clock: Mapping[bytes, bytes] | None = None) -> Handshake:
        """hello/auth as a well-behaved dialer; then our clock unless `send_clock` is false."""
        raw = self.raw
        hs = Handshake("dialer", raw.ident, raw.ws, raw.genesis,
                       proto_min=raw.proto_min, proto_max=raw.proto_max,
                       clock_vc=dict(clock or {}))
        hello = hs.start()[0]
        assert isinstance(hello, m.Hello)
        self.hello = hello
        await self.send(hello)
        while not hs.authenticated:
            msg = await self.recv(m.Hello, m.Auth)
            if isinstance(msg, m.Hello):
                self.peer_hello = msg
            for out in hs.receive(msg):
                if isinstance(out, m.Auth):
                    self.auth = out
                if isinstance(out, m.ClockMsg) and not send_clock:
                    continue
                await self.send(out)
        return hs

    # --- the end -----------------------------------------------------------------------------
    async def closed(self, timeout: float = 120) -> int:
        """Wait until the node ended the link; its close code."""
        with trio.fail_after(timeout):
            await self.done.wait()
        assert self.code is not None
        return self.code

    @property
    def close_code(self) -> int | None:
        """The close code our side of the WebSocket saw (None while open)."""
        if self.conn is None or self.conn.closed is None:
            return None
        return self.conn.closed.code

    async def _serve(self, svc: SyncService, remote: trio.abc.Stream) -> None:
        try:
            self.code = await svc.accept_stream(remote, addr="raw", via="raw")
        finally:
            self.closed_at = trio.current_time()
            self.done.set()
            self.stream.cut()  # the node is gone: our reads end too


class RawPeer:
    """A peer identity with nothing behind it but the wire: hello fields are all settable."""

    def __init__(self, ident: Identity, ws: bytes, genesis: bytes | None, *,
                 proto_min: int = m.PROTO_VERSION, proto_max: int = m.PROTO_VERSION) -> None:
        self.ident = ident
        self.ws = ws
        self.genesis = genesis
        self.proto_min = proto_min
        self.proto_max = proto_max

    @property
    def actor(self) -> bytes:
        return self.ident.actor

    @classmethod
    def joining(cls, svc: SyncService, name: str = "raw", **kw: Any) -> RawPeer:
        """A fresh identity claiming membership of `svc`'s workspace (open join mode)."""
        return cls(Identity.generate(name), svc.ws, svc.genesis, **kw)

    @contextlib.asynccontextmanager
    async def link(self, svc: SyncService, *, window: int | None = None,
                   ) -> AsyncIterator[RawLink]:
        """Open a link into `svc` (the node accepts); closed (cut) on exit."""
        ours, theirs = fault_pair()
        win = Window(window) if window is not None else None
        local: trio.abc.Stream = ours
        remote: trio.abc.Stream = theirs
        if win is not None:
            local = _Windowed(ours, win, sender=True)
            remote = _Windowed(theirs, win, sender=False)
        link = RawLink(self, ours, theirs, win)
        async with trio.open_nursery() as n:
            n.start_soon(link._serve, svc, remote)
            link.conn = await trio_websocket.wrap_client_stream(
                n, local,  # type: ignore[arg-type]  # any trio Stream works
                "peer", RESOURCE, subprotocols=[m.SUBPROTOCOL],
                message_queue_size=RAW_QUEUE, max_message_size=RAW_MAX_MESSAGE)
            try:
                yield link
            finally:
                ours.cut()
                with trio.move_on_after(10):
                    await link.done.wait()
                n.cancel_scope.cancel()


# --- forging bundle records ---------------------------------------------------------------------

def reseal_body(record: list[Any], i: int, change: Callable[[dict[str, Any]], None],
                ) -> list[Any]:
    """The record with op body `i` decoded, changed by `change` and re-encoded canonically
    (a well-formed body the author never signed: the header's `ops` digest no longer matches)."""
    header, sig, bodies = record
    body = codec.decode(bodies[i])
    change(body)
    out = list(bodies)
    out[i] = codec.encode(body)
    return [header, sig, out]


def replace_body(record: list[Any], i: int, body: bytes) -> list[Any]:
    """The record with op body `i` swapped for another (e.g. one of the author's other ops)."""
    header, sig, bodies = record
    out = list(bodies)
    out[i] = body
    return [header, sig, out]


def seal(ident: Identity, ws: bytes, payloads: Sequence[O.Payload], hlcs: Sequence[bytes],
         causal_vc: Mapping[bytes, bytes] | None = None) -> O.Bundle:
    """A validly signed `user` bundle of whatever payloads (unchecked: forging bad content)."""
    return O.seal(ident, ws, "user", list(payloads), list(hlcs), dict(causal_vc or {}))
