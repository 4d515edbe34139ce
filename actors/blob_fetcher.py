"""BlobFetcher: blobs between peers (spec 03 §7), both ways, over the sync links.

Owns this node's `BlobStore` connection for fetching and serving, the fetch jobs (one per hash,
shared by every waiter, at most 2 downloading at once), which peers hold what (in memory only),
and the provider side of the links: `blob_have` answers, and `blob_get` requests served from a
bounded queue (≤ 32 per link, else `busy`) reading at most 4 blobs at once, chunks on the blob
lane so ops, acks and pings never wait behind them.

A job (`openprod.sync.blobfetch.FetchJob` does the bookkeeping): ask every link `blob_query`
(5 s) unless holders are known, pull from one holder with 8 × 256 KiB requests in flight into a
part file (`BlobStore.begin_part`), continue at the same offset with another holder when one
fails, verify on `commit_part` (a mismatch marks every contributor bad and starts over), then
`blob_available`. Nobody left → `blob_fetch_failed`; a blob nobody holds stays `missing` and
is tried again when a peer connects and every 60 s while someone wants it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from actors import blob_locks, blocking
from actors.events import EventHub
from openprod.engine import blobs as blobmod
from openprod.sync import blobfetch
from openprod.sync import messages as m

if TYPE_CHECKING:
    from actors.sync_peer import SyncPeer
    from actors.sync_service import SyncService

log = logging.getLogger("openprod.blobs")

DOWNLOADS = 2
PROVIDER_READS = 4
PROVIDER_QUEUE = 32
QUERY_S = 5.0
CHUNK_TIMEOUT_S = 15.0
RETRY_S = 60.0
PROGRESS_EVERY_S = 0.25


@attrs.define
class Job:
    hash: str
    state: blobfetch.FetchJob
    done: trio.Event = attrs.Factory(trio.Event)
    result: str = "fetching"  # present | missing | failed
    events: trio.MemorySendChannel[tuple[bytes, m.Message]] | None = None


class BlobFetcher:
    def __init__(self, svc: SyncService, hub: EventHub) -> None:
        self.svc = svc
        self.hub = hub
        self.store: blobmod.BlobStore | None = None
        self.jobs: dict[str, Job] = {}
        self.wanted: set[str] = set()  # asked for and not here: retried on connect / 60 s
        self.holders: dict[str, dict[bytes, int]] = {}  # hash -> peer -> size (memory only)
        self.liars: dict[str, set[bytes]] = {}  # hash -> peers that sent wrong bytes for it
        self._downloads = trio.CapacityLimiter(DOWNLOADS)
        self._reads = trio.CapacityLimiter(PROVIDER_READS)
        self._req = 0
        self._queries: dict[int, trio.MemorySendChannel[tuple[bytes, m.BlobHave]]] = {}
        self._serving: dict[bytes, deque[m.BlobGet]] = {}
        self._nursery: trio.Nursery | None = None
        self._retry = trio.Event()
        self._connects = 0  # links that came up so far (a fetch asks the ones it missed)

    # --- lifecycle -----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        self.store = blob_locks.shared(
            await blocking.run_sync(blobmod.BlobStore.for_workspace, self.svc.path))
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                n.start_soon(self._retrier)
                task_status.started()
                await trio.sleep_forever()
        finally:
            store, self.store = self.store, None
            if store is not None:
                store.close()

    def peer_connected(self) -> None:
        """A link came up: blobs nobody held may be there now."""
        self._connects += 1
        self._retry.set()

    async def _retrier(self) -> None:
        while True:
            with trio.move_on_after(RETRY_S):
                await self._retry.wait()
            self._retry = trio.Event()
            for h in sorted(self.wanted):
                if h not in self.jobs:
                    self.fetch(h)

    # --- asking for a blob ---------------------------------------------------------------------
    def fetch(self, h: str, size: int | None = None) -> Job:
        """Start (or join) the fetch of h; never blocks. `size` is the recorded size."""
        blobmod.check_hash(h)
        job = self.jobs.get(h)
        if job is not None:
            return job
        job = Job(h, blobfetch.FetchJob(bytes.fromhex(h), size))
        job.state.bad |= self.liars.get(h, set())  # never asked again for this blob
        job.state.holders.update({p: s for p, s in self.holders.get(h, {}).items()
                                  if (size is None or s == size) and p not in job.state.bad})
        self.jobs[h] = job
        self.wanted.add(h)
        assert self._nursery is not None, "the blob fetcher is not running"
        self._nursery.start_soon(self._run_job, job)
        return job

    def request(self, h: str, size: int | None = None) -> bool:
        """Someone wants h (a GET): True when a fetch runs (started now or already), False
        when no peer is connected (it is retried when one connects and every 60 s)."""
        if h in self.jobs:
            return True
        self.wanted.add(h)
        if not self.svc.links:
            return False
        self.fetch(h, size)
        return True

    async def wait(self, h: str) -> str:
        """Until the current fetch of h ends: present | missing | failed."""
        job = self.jobs.get(h)
        if job is None:
            return "present" if self._state(h) == "present" else "missing"
        await job.done.wait()
        return job.result

    def _state(self, h: str) -> str | None:
        assert self.store is not None
        return self.store.state(h)

    async def _run_job(self, job: Job) -> None:
        send, recv = trio.open_memory_channel[tuple[bytes, m.Message]](64)
        job.events = send
        try:
            async with self._downloads:
                job.result = await self._download(job, recv)
        except Exception:  # a bug must not take the node down with one download
            log.exception("fetching blob %s failed", job.hash)
            job.result = "failed"
            self._publish({"type": "blob_fetch_failed", "hash": job.hash, "retry": False,
                           "reason": "an error on this device (see the engine's log)"})
        finally:
            job.events = None
            if job.state.liars:  # only they; a busy or erring peer may serve it next time
                self.liars.setdefault(job.hash, set()).update(job.state.liars)
            self.jobs.pop(job.hash, None)
            if job.result == "present":
                self.wanted.discard(job.hash)
            job.done.set()

    async def _download(self, job: Job,
                        recv: trio.MemoryReceiveChannel[tuple[bytes, m.Message]]) -> str:
        store = self.store
        assert store is not None
        h, st = job.hash, job.state
        if await blocking.run_sync(store.state, h) == "present":
            return "present"
        if st.size is None:
            st.size = await self._recorded_size(h)
        part = await blocking.run_sync(store.begin_part, h, st.size)
        try:
            while True:
                gets = st.start(set(self.svc.links))
                if st.provider is None:  # nobody known and connected: ask every link
                    connects = self._connects
                    await self._query(job)
                    gets = st.start(set(self.svc.links))
                    if st.provider is None and self._connects != connects:
                        continue  # a link came up while we asked (the retrier skips a
                        # running job): ask again, that peer too
                if st.provider is None:
                    await blocking.run_sync(store.abort_part, h, part)
                    if st.wrong_bytes:
                        self._publish({"type": "blob_fetch_failed", "hash": h, "retry": False,
                                       "reason": "every peer that had it sent wrong bytes"})
                        return "failed"
                    # nobody connected holds it: retried when a peer connects and every 60 s
                    self._publish({"type": "blob_fetch_failed", "hash": h, "retry": True,
                                   "reason": "no connected peer has this file"})
                    return "missing"
                if part.offset != st.done_off:  # a mismatch restarted the job from zero
                    await blocking.run_sync(store.abort_part, h, part)
                    part = await blocking.run_sync(store.begin_part, h, st.size)
                self._send_gets(gets)
                ok = await self._pull(job, part, recv)
                if not ok:
                    continue  # the provider failed or went away: another one, same offset
                try:
                    await blocking.run_sync(store.commit_part, h, part)
                except blobmod.BlobCorrupt:
                    st.mark_corrupt()
                    part = await blocking.run_sync(store.begin_part, h, st.size)
                    continue
                self._publish({"type": "blob_available", "hash": h})
                return "present"
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await blocking.run_sync(store.abort_part, h, part)
            raise

    async def _recorded_size(self, h: str) -> int | None:
        def read() -> int | None:
            assert self.store is not None
            meta = self.store.synced_meta(h)
            size = meta.get("size") if meta else None
            return size if isinstance(size, int) else None
        return await blocking.run_sync(read)

    async def _query(self, job: Job) -> None:
        """blob_query to every link; wait up to 5 s for a holder (all answers otherwise)."""
        links = list(self.svc.links.values())
        if not links:
            return
        self._req += 1
        req = self._req
        send, recv = trio.open_memory_channel[tuple[bytes, m.BlobHave]](len(links))
        self._queries[req] = send
        try:
            for peer in links:
                with contextlib.suppress(Exception):
                    peer.send_control(m.BlobQuery(req=req, hashes=[bytes.fromhex(job.hash)]))
            answered = 0
            with trio.move_on_after(QUERY_S):
                while answered < len(links):
                    actor, have = await recv.receive()
                    answered += 1
                    for hh, size in have.have:
                        if hh.hex() == job.hash:
                            job.state.have(actor, size)
                            self.holders.setdefault(job.hash, {})[actor] = size
                    if job.state.candidates():
                        break
        finally:
            del self._queries[req]

    def _send_gets(self, gets: list[blobfetch.Get]) -> None:
        for g in gets:
            peer = self.svc.links.get(g.peer)
            if peer is None:
                continue
            self._req += 1
            with contextlib.suppress(Exception):
                peer.send_control(m.BlobGet(req=self._req, hash=g.hash, off=g.off, len=g.len))

    async def _pull(self, job: Job, part: blobmod.Upload,
                    recv: trio.MemoryReceiveChannel[tuple[bytes, m.Message]]) -> bool:
        """Chunks from the provider until the blob is complete (True) or it fails (False).
        Bytes are appended to the part file (hashed, written) in a worker thread while the
        next chunks arrive; when this returns, everything received is in the part file."""
        send, todo = trio.open_memory_channel[bytes](blobfetch.WINDOW)

        def write(batch: list[bytes]) -> None:
            for data in batch:
                part.write(data)

        async def writer() -> None:
            async with todo:
                async for data in todo:
                    batch = [data]  # what arrived meanwhile goes in the same thread call
                    while True:
                        try:
                            batch.append(todo.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await blocking.run_sync(write, batch)

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            async with send:
                return await self._receive(job, recv, send)

    async def _receive(self, job: Job, recv: trio.MemoryReceiveChannel[tuple[bytes, m.Message]],
                       out_ch: trio.MemorySendChannel[bytes]) -> bool:
        """The chunks of one provider, in order, to out_ch (see _pull)."""
        st = job.state
        last = 0.0
        while not st.complete:
            provider = st.provider
            if provider is None or provider not in self.svc.links:
                if provider is not None:
                    st.lost(provider)
                return False
            with trio.move_on_after(CHUNK_TIMEOUT_S) as cs:
                actor, msg = await recv.receive()
            if cs.cancelled_caught:
                st.lost(provider)  # silent provider: another one (it may serve again later)
                return False
            if isinstance(msg, m.BlobErr):
                if actor == provider:
                    st.fail_peer(actor)
                    return False
                continue
            if isinstance(msg, m.BlobChunk):
                out = st.chunk(actor, msg.off, msg.size, msg.data)
                if out is None:
                    if st.provider is None:
                        return False  # it sent a chunk of the wrong size: bad for this hash
                    continue
                for data in out:
                    await out_ch.send(data)
                self._send_gets(st.fill())
                now = trio.current_time()
                if now - last >= PROGRESS_EVERY_S:
                    last = now
                    self._publish({"type": "blob_fetch_progress", "hash": job.hash,
                                   "peer_id": actor.hex(), "received": st.done_off,
                                   "size": st.total})
        return True

    def lost(self, actor: bytes) -> None:
        """A link went away: forget what it held; jobs it served move on."""
        for holders in self.holders.values():
            holders.pop(actor, None)
        self._serving.pop(actor, None)

    # --- replies from peers --------------------------------------------------------------------
    def on_reply(self, actor: bytes, msg: m.Message) -> None:
        if isinstance(msg, m.BlobHave):
            q = self._queries.get(msg.req)
            if q is not None:
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    q.send_nowait((actor, msg))
            return
        h = getattr(msg, "hash", b"").hex()
        job = self.jobs.get(h)
        if job is not None and job.events is not None:
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                job.events.send_nowait((actor, msg))

    # --- providing -----------------------------------------------------------------------------
    async def have(self, q: m.BlobQuery) -> m.BlobHave:
        def look() -> tuple[list[list[Any]], list[bytes]]:
            have: list[list[Any]] = []
            missing: list[bytes] = []
            for hh in q.hashes:
                info = self.store.info(hh.hex()) if self.store is not None else None
                if info is not None and info.state == "present" and info.size is not None:
                    have.append([hh, info.size])
                else:
                    missing.append(hh)
            return have, missing
        have, missing = await blocking.run_sync(look)
        return m.BlobHave(req=q.req, have=have, missing=missing)

    def serve(self, peer: SyncPeer, get: m.BlobGet) -> None:
        """Queue a chunk request from peer (≤ 32 waiting, else `busy`)."""
        assert peer.peer_actor is not None
        q = self._serving.get(peer.peer_actor)
        if q is None:
            q = self._serving[peer.peer_actor] = deque()
            assert self._nursery is not None
            self._nursery.start_soon(self._provide, peer, q)
        if len(q) >= PROVIDER_QUEUE:
            peer.send_control(m.BlobErr(req=get.req, hash=get.hash, code="busy"))
            return
        q.append(get)

    async def _provide(self, peer: SyncPeer, q: deque[m.BlobGet]) -> None:
        actor = peer.peer_actor
        try:
            while q and actor in self.svc.links:
                get = q.popleft()
                async with self._reads:
                    chunk = await blocking.run_sync(self._read, get)
                if isinstance(chunk, str):
                    await peer.send_blob(m.BlobErr(req=get.req, hash=get.hash, code=chunk))
                else:
                    data, size = chunk
                    await peer.send_blob(m.BlobChunk(req=get.req, hash=get.hash, off=get.off,
                                                     size=size, data=data))
        finally:
            if actor is not None and self._serving.get(actor) is q:
                del self._serving[actor]

    def _read(self, get: m.BlobGet) -> tuple[bytes, int] | str:
        store = self.store
        if store is None:
            return "unavailable"
        h = get.hash.hex()
        try:
            with store.open(h) as f:
                size = f.seek(0, 2)
                if get.off > size:
                    return "bad_range"
                f.seek(get.off)
                return f.read(get.len), size
        except blobmod.BlobUnavailable:
            return "unavailable"

    def _publish(self, ev: dict[str, Any]) -> None:
        ev.setdefault("at_ms", int(time.time() * 1000))
        self.hub.publish(ev)
