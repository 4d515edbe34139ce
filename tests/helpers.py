"""Shared test helpers: a manual clock, replicas of one workspace, and op shipping between them.

These drive the synchronous `Workspace` facade directly (the in-process network harness with
real sync sessions lives in tests/harness/ and arrives with the sync issue).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from openprod.core.identity import Identity
from openprod.engine.workspace import Workspace

T0 = 1_700_000_000_000


class ManualClock:
    """Wall-clock milliseconds a test sets by hand (`clock.set(ms)`, `clock.advance(ms)`)."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def set(self, ms: int) -> None:
        self.ms = ms

    def advance(self, ms: int = 1) -> None:
        self.ms += ms


class Peer:
    """One replica: a Workspace with its own folder, identity and clock."""

    def __init__(self, ws: Workspace, clock: ManualClock, name: str) -> None:
        self.ws = ws
        self.clock = clock
        self.name = name

    def __getattr__(self, item: str) -> Any:
        return getattr(self.ws, item)

    def reopen(self) -> None:
        path, ident = self.ws.path, self.ws.ident
        self.ws.close()
        self.ws = Workspace.open(path, ident, now=self.clock)


class Net:
    """Replicas of one workspace; `sync(a, b)` ships what b lacks from a, in canonical order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peers: list[Peer] = []
        self.ws_id: bytes | None = None

    def add_peer(self, name: str | None = None, *, clock_ms: int = T0) -> Peer:
        name = name or f"p{len(self.peers)}"
        clock = ManualClock(clock_ms)
        ident = Identity.generate(name)
        path = self.root / name
        if self.ws_id is None:
            ws = Workspace.create(path, ident, "Test", now=clock)
            self.ws_id = ws.ws
        else:
            ws = Workspace.join(path, ident, self.ws_id, now=clock)
        peer = Peer(ws, clock, name)
        self.peers.append(peer)
        return peer

    def sync(self, a: Peer, b: Peer) -> None:
        """Ship a's bundles that b lacks."""
        report = b.ws.ingest(a.ws.ops_since(b.ws.vclock()))
        assert not report.rejected, report.rejected

    def sync_all(self, peers: Sequence[Peer] | None = None) -> None:
        peers = list(peers or self.peers)
        for _ in range(2):
            for a in peers:
                for b in peers:
                    if a is not b:
                        self.sync(a, b)

    def deliver(self, p: Peer, records: Iterable[list[Any]]) -> None:
        report = p.ws.ingest(list(records))
        assert not report.rejected, report.rejected

    def assert_converged(self, peers: Sequence[Peer] | None = None) -> bytes:
        peers = list(peers or self.peers)
        digests = {p.ws.oplog_digest() for p in peers}
        hashes = {p.ws.state_hash() for p in peers}
        assert len(digests) == 1, "oplog digests differ"
        assert len(hashes) == 1, "state hashes differ with equal oplogs: derivation bug"
        return hashes.pop()


def isolated_sync(extra: Sequence[str]) -> list[str]:
    """Test engines never take the default peer port or advertise on the real LAN: an
    ephemeral loopback peer port, and no mDNS unless the test asks for an interface."""
    out = ["--sync-port", "0", "--sync-host", "127.0.0.1"]
    if "--mdns-interface" not in extra and "--no-discovery" not in extra:
        out.append("--no-discovery")
    return out


def shuffled(xs: Sequence[Any], seed: int) -> list[Any]:
    out = list(xs)
    random.Random(seed).shuffle(out)
    return out
