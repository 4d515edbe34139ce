"""TestNetwork: N full nodes in one trio run, linked by in-memory streams (spec 03 §9 harness).

Each peer is a complete node (every actor, its own home and `oplog.db`, no HTTP server) driven
through the same routes as HTTP (`tests/harness/peer.py`). Links are real sync links: the
WebSocket protocol over `trio.testing.memory_stream_pair()` wrapped in a `FaultStream` that a
test can cut (also mid-message), stall or throttle. By default blocking work runs inline
(`actors.blocking.INLINE`), so tests can use `MockClock(autojump_threshold=0)`.

    async with TestNetwork.open(tmp_path) as net:
        a = await net.add_peer("a")          # creates the workspace
        b = await net.add_peer("b")          # an empty replica; joins on first connect
        await net.connect(a, b)
        await net.wait_for_sync()
        await net.assert_converged()
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from actors import blocking
from actors.sync_service import SyncService
from openprod.sync import catchup
from openprod.sync.receipt import check_records
from tests.harness.peer import Peer, open_peer
from tests.helpers import T0, ManualClock


class FaultStream(trio.abc.HalfCloseableStream):
    """One end of an in-memory link that a test can cut, stall or throttle."""

    def __init__(self, inner: trio.StapledStream[Any, Any]) -> None:
        self.inner = inner
        self.peer: FaultStream | None = None
        self.cut_flag = False
        self._go = trio.Event()
        self._go.set()
        self.bytes_per_s: float | None = None
        self.cut_after: int | None = None  # cut once this many more bytes were sent
        self.sent = 0

    # --- faults ------------------------------------------------------------------------------
    def cut(self) -> None:
        """Both directions fail at once (a pulled cable); pending calls raise."""
        for end in (self, self.peer):
            if end is not None and not end.cut_flag:
                end.cut_flag = True
                end.inner.send_stream.close()
                end.inner.receive_stream.close()
                end._go.set()

    def stall(self) -> None:
        self._go = trio.Event()

    def resume(self) -> None:
        self._go.set()

    # --- stream ------------------------------------------------------------------------------
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._go.wait()
        if self.cut_flag:
            raise trio.BrokenResourceError("link cut")
        data = bytes(data)
        if self.cut_after is not None and self.sent + len(data) >= self.cut_after:
            keep = max(0, self.cut_after - self.sent)
            if keep:
                await self.inner.send_all(data[:keep])
            self.cut()
            raise trio.BrokenResourceError("link cut mid-message")
        if self.bytes_per_s:
            step = max(1, int(self.bytes_per_s / 10))
            for i in range(0, len(data), step):
                await self.inner.send_all(data[i:i + step])
                rate = self.bytes_per_s  # a test may lift the throttle mid-send
                if rate:
                    await trio.sleep(len(data[i:i + step]) / rate)
        else:
            await self.inner.send_all(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.cut_flag:
            raise trio.BrokenResourceError("link cut")
        try:
            return bytes(await self.inner.receive_some(max_bytes))
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("link cut") from None

    async def aclose(self) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self.inner.aclose()


def fault_pair() -> tuple[FaultStream, FaultStream]:
    a, b = trio.testing.memory_stream_pair()
    fa, fb = FaultStream(a), FaultStream(b)
    fa.peer, fb.peer = fb, fa
    return fa, fb


@attrs.define
class LinkHandle:
    a: Peer
    b: Peer
    dial: FaultStream
    accept: FaultStream
    scope: trio.CancelScope
    done: trio.Event = attrs.field(factory=trio.Event)
    codes: dict[str, int] = attrs.field(factory=dict)

    def cut(self) -> None:
        self.dial.cut()


def _key(a: Peer, b: Peer) -> tuple[str, str]:
    return (a.name, b.name) if a.name < b.name else (b.name, a.name)


class TestNetwork:
    __test__ = False  # not a pytest test class

    def __init__(self, root: Path, nursery: trio.Nursery) -> None:
        self.root = root
        self.nursery = nursery
        self.peers: list[Peer] = []
        self.ws_id: str | None = None
        self.links: dict[tuple[str, str], LinkHandle] = {}
        self.cut_links: set[tuple[str, str]] = set()
        self.lot = trio.lowlevel.ParkingLot()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, root: Path, *, inline: bool = True) -> AsyncIterator[TestNetwork]:
        token = blocking.INLINE.set(inline)
        try:
            async with trio.open_nursery() as n:
                net = cls(root, n)
                try:
                    yield net
                finally:
                    with trio.CancelScope(shield=True):
                        await net.aclose()
                    n.cancel_scope.cancel()
        finally:
            blocking.INLINE.reset(token)

    async def aclose(self) -> None:
        for h in list(self.links.values()):
            h.cut()
            h.scope.cancel()
        for p in self.peers:
            with contextlib.suppress(Exception):
                await p.aclose()

    # --- peers -------------------------------------------------------------------------------
    async def add_peer(self, name: str | None = None, *, clock_ms: int = T0) -> Peer:
        name = name or f"p{len(self.peers)}"
        peer = await open_peer(self.nursery, self.root, name, ws_id=self.ws_id,
                               clock=ManualClock(clock_ms))
        if self.ws_id is None:
            self.ws_id = peer.ws_id
        self.peers.append(peer)
        self._watch(peer)
        return peer

    def sync_of(self, p: Peer) -> SyncService:
        svc = p.node.current.sync
        svc.changed = self.lot  # one lot for the whole network: any change wakes waiters
        return svc

    def _watch(self, p: Peer) -> None:
        self.sync_of(p)
        # every append (a commit or an admitted bundle) may complete a wait: wake the waiters
        p.node.current.writer.listeners.append(lambda _head: self.lot.unpark_all())

    async def restart(self, p: Peer) -> None:
        for key in [k for k, h in self.links.items() if p in (h.a, h.b)]:
            await self._drop(key)
        await p.restart()
        self._watch(p)

    # --- links -------------------------------------------------------------------------------
    async def connect(self, a: Peer, b: Peer, *, allow_duplicate: bool = False,
                      prepare: Callable[[LinkHandle], None] | None = None) -> LinkHandle:
        """Link a (dialer) and b (acceptor); returns once both registered the link (or it
        closed, e.g. refused). `allow_duplicate` opens a second link even if one exists (a
        simultaneous mutual dial); `prepare` sets faults on the handle before any byte flows."""
        key = _key(a, b)
        h0 = self.links.get(key)
        if h0 is not None and not allow_duplicate and not h0.done.is_set():
            return h0
        s1, s2 = fault_pair()
        h = LinkHandle(a, b, s1, s2, trio.CancelScope())
        if prepare is not None:
            prepare(h)
        if h0 is not None and allow_duplicate:
            n = 2
            while (key[0], f"{key[1]}#{n}") in self.links:
                n += 1
            key = (key[0], f"{key[1]}#{n}")
        self.links[key] = h
        self.cut_links.discard(key)
        sa, sb = self.sync_of(a), self.sync_of(b)

        async def run() -> None:
            with h.scope:
                async with trio.open_nursery() as n:
                    async def side(name: str, coro: Any) -> None:
                        h.codes[name] = await coro
                        s1.cut()  # one side closed: the other sees the stream end

                    n.start_soon(side, "dial", sa.dial_stream(s1, via="harness"))
                    n.start_soon(side, "accept", sb.accept_stream(s2, via="harness"))
            h.done.set()
            self.lot.unpark_all()

        self.nursery.start_soon(run)
        with trio.fail_after(60):
            while not h.done.is_set() and not (
                    _linked(sa, b) and _linked(sb, a)):
                await self.lot.park()
        return h

    async def disconnect(self, a: Peer, b: Peer) -> None:
        await self._drop(_key(a, b))

    async def _drop(self, key: tuple[str, str]) -> None:
        h = self.links.pop(key, None)
        if h is None:
            return
        h.cut()
        with trio.fail_after(60):
            await h.done.wait()

    async def partition(self, *groups: Sequence[Peer]) -> None:
        """Cut every link between peers of different groups (healed by `heal`)."""
        side = {p.name: i for i, g in enumerate(groups) for p in g}
        for key, h in list(self.links.items()):
            ga, gb = side.get(h.a.name), side.get(h.b.name)
            if ga is not None and gb is not None and ga != gb:
                await self._drop(key)
                self.cut_links.add(_key(h.a, h.b))

    async def heal(self) -> None:
        by_name = {p.name: p for p in self.peers}
        for a, b in sorted(self.cut_links):
            await self.connect(by_name[a], by_name[b])
        self.cut_links.clear()

    # --- waiting and checking ----------------------------------------------------------------
    async def wait_for_sync(self, timeout: float = 300) -> None:
        """Until every linked pair is idle with equal vector clocks."""
        with trio.fail_after(timeout):
            while not self._synced():
                await self.lot.park()

    def _synced(self) -> bool:
        for h in self.links.values():
            if h.done.is_set():
                continue
            sa, sb = self.sync_of(h.a), self.sync_of(h.b)
            if not (_linked(sa, h.b) and _linked(sb, h.a)):
                return False
            if not (sa.idle() and sb.idle()) or sa.local_vc() != sb.local_vc():
                return False
        return True

    async def sync(self, a: Peer, b: Peer) -> None:
        """One catch-up a→b over the receipt pipeline (no link; b sends nothing back)."""
        src = a.node.current
        dst = b.node.current
        conn = src.sync.open_reader()
        try:
            vc = dst.ws.storage.vclock()
            session = catchup.Session(conn, vc)
            while True:
                page = session.page()
                if not page.records:
                    break
                checked = check_records(page.records, dst.ws.ws, dst.ws.clock.check_drift)
                report = await dst.writer.call(
                    lambda ws, c=checked, p=page.prev: ws.admit(c, p))  # type: ignore[misc]
                assert not report.rejected, report.rejected
            await dst.sync._after_ingest()
        finally:
            conn.close()
        await b.settled()

    async def sync_all(self, peers: Sequence[Peer] | None = None) -> None:
        peers = list(peers or self.peers)
        for _ in range(2):
            for a in peers:
                for b in peers:
                    if a is not b:
                        await self.sync(a, b)

    async def deliver(self, p: Peer, records: Sequence[list[Any]]) -> Any:
        """Inject bundle records in a chosen order (no `prev` check)."""
        report = await p.node.current.writer.call(lambda ws: ws.ingest(list(records)))
        await p.settled()
        return report

    async def assert_converged(self, peers: Sequence[Peer] | None = None) -> str:
        peers = list(peers or self.peers)
        vcs = [await p.vector_clock() for p in peers]
        digests = [await p.oplog_digest() for p in peers]
        hashes = [await p.state_hash() for p in peers]
        names = [p.name for p in peers]

        def by(xs: list[Any]) -> dict[str, Any]:
            return dict(zip(names, xs, strict=True))

        assert all(v == vcs[0] for v in vcs), f"vector clocks differ: {by(vcs)}"
        assert len(set(digests)) == 1, f"oplog digests differ: {by(digests)}"
        assert len(set(hashes)) == 1, f"state hashes differ: {by(hashes)}"
        return hashes[0]


def _linked(svc: SyncService, other: Peer) -> bool:
    return bytes.fromhex(other.actor_id) in svc.links
