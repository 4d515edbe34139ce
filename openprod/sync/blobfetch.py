"""Fetching one blob from peers, sans I/O (spec 03 §7 "Fetch").

Owns the bookkeeping of one fetch job: which peers may hold the blob (and which proved bad),
the current provider, the chunk requests in flight (8 × 256 KiB) and the in-order
reassembly of what arrived. The BlobFetcher actor feeds it events (`have`, chunks,
errors, a link gone) and does what it returns: send these `blob_get`s, append these bytes to
the part file, verify, give up. A provider that fails hands over at the same offset; a hash
mismatch marks every contributor bad for this hash and starts again from zero.
"""

from __future__ import annotations

import attrs

CHUNK = 256 * 1024
WINDOW = 8


@attrs.frozen
class Get:
    peer: bytes
    hash: bytes
    off: int
    len: int


@attrs.define
class FetchJob:
    hash: bytes
    size: int | None  # recorded size (PutConfig("blob")); None when unknown
    holders: dict[bytes, int] = attrs.Factory(dict)  # peer -> size it announced
    bad: set[bytes] = attrs.Factory(set)
    provider: bytes | None = None
    contributors: set[bytes] = attrs.Factory(set)
    next_off: int = 0  # next offset to request
    done_off: int = 0  # bytes hashed and written so far
    inflight: dict[int, int] = attrs.Factory(dict)  # off -> len
    early: dict[int, bytes] = attrs.Factory(dict)  # chunks that arrived ahead of done_off
    wrong_bytes: bool = False  # some peer sent bytes that were not the blob
    liars: set[bytes] = attrs.Factory(set)  # the peers that did (or contributed to a mismatch)

    @property
    def total(self) -> int | None:
        if self.provider is not None:
            return self.holders[self.provider]
        return self.size

    def have(self, peer: bytes, size: int) -> None:
        """A peer says it holds the blob (`blob_have`). A holder whose size differs from the
        recorded size is skipped (S43)."""
        if self.size is not None and size != self.size:
            self.bad.add(peer)
            return
        if peer not in self.bad:
            self.holders[peer] = size

    def candidates(self) -> list[bytes]:
        return sorted(p for p in self.holders if p not in self.bad)

    def start(self, connected: set[bytes]) -> list[Get]:
        """Pick a provider among the connected candidates (the one in use first) and fill the
        window; [] with `provider` None when nobody can serve."""
        if self.provider is not None and self.provider in connected \
                and self.provider not in self.bad:
            return self.fill()
        self.provider = None
        self.inflight.clear()
        self.early.clear()
        self.next_off = self.done_off  # resume where the hashed part ends
        for p in self.candidates():
            if p in connected:
                self.provider = p
                return self.fill()
        return []

    def fill(self) -> list[Get]:
        assert self.provider is not None
        total = self.holders[self.provider]
        out = []
        while len(self.inflight) < WINDOW and self.next_off < total:
            n = min(CHUNK, total - self.next_off)
            self.inflight[self.next_off] = n
            out.append(Get(self.provider, self.hash, self.next_off, n))
            self.next_off += n
        return out

    def chunk(self, peer: bytes, off: int, size: int, data: bytes) -> list[bytes] | None:
        """A `blob_chunk` arrived; returns the bytes to append to the part file now (in order;
        the part file hashes them), or None when the chunk is not one we asked this peer for
        (ignored) or was the wrong size (the peer is then bad for this hash)."""
        if peer != self.provider or off not in self.inflight:
            return None
        if len(data) != self.inflight[off] or size != self.holders[peer]:
            # a short or oversized answer is wrong bytes: this peer is done for this hash
            self.wrong_bytes = True
            self.liars.add(peer)
            self.fail_peer(peer)
            return None
        del self.inflight[off]
        self.early[off] = data
        self.contributors.add(peer)
        out = []
        while self.done_off in self.early:
            d = self.early.pop(self.done_off)
            self.done_off += len(d)
            out.append(d)
        return out

    def fail_peer(self, peer: bytes) -> None:
        """The provider erred (`blob_err`, bad chunk): never ask it again for this hash."""
        self.bad.add(peer)
        self.holders.pop(peer, None)
        if peer == self.provider:
            self.provider = None

    def lost(self, peer: bytes) -> None:
        """The provider's link went away: it may serve again after a reconnect."""
        if peer == self.provider:
            self.provider = None

    @property
    def complete(self) -> bool:
        total = self.total
        return total is not None and self.done_off >= total and not self.inflight

    def mark_corrupt(self) -> None:
        """All bytes were in and did not hash to the address: every contributor is bad for
        this hash and the job starts again from zero (the caller starts a new part file)."""
        self.wrong_bytes = True
        self.liars |= self.contributors
        for p in self.contributors:
            self.fail_peer(p)
        self.contributors.clear()
        self.done_off = self.next_off = 0
        self.inflight.clear()
        self.early.clear()
        self.provider = None
