"""Reading what a peer lacks (spec 03 §6.1–6.3), from an oplog database connection.

`Session` streams every stored bundle the peer's vector clock does not cover, in canonical order
`(bundle hlc, bundle_id)`, one page per short read transaction, resuming from an
`(hlc, bundle_id)` cursor. Each page carries `prev`: for every actor X in it, the HLC of our X
bundle just before its first one there (zero if none), so the receiver can prove it holds
everything up to there (a gap-free VC). `own_after` reads our own new bundles for live push.
Pure and synchronous: the runtime calls these in a worker thread on its reader connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import apsw
import attrs

from openprod.core import hlc as hlcmod

PAGE_BUNDLES = 1000
PAGE_BYTES = 1 << 20
ALONE_BYTES = 8 << 20  # a bundle over this is sent alone, split over several messages
HEAD_SQL = "SELECT v FROM oplog_meta WHERE k = 'head_seq'"
INDEX_SQL = "CREATE INDEX IF NOT EXISTS bundles_canonical ON bundles(hlc, bundle_id)"


@attrs.frozen
class Page:
    records: list[list[Any]]
    prev: dict[bytes, bytes]
    remaining: int  # estimate of bundles still to send after this page
    head: int  # the oplog head seq in this page's snapshot
    last_hlc: dict[bytes, bytes]  # per actor, the last bundle HLC in this page


def _head(conn: apsw.Connection) -> int:
    for (v,) in conn.execute(HEAD_SQL):
        return int(v)
    return 0


def _bodies(conn: apsw.Connection, first_seq: int, n: int) -> list[bytes]:
    return [bytes(b) for (b,) in conn.execute(
        "SELECT body FROM ops WHERE seq BETWEEN ? AND ? ORDER BY seq",
        (first_seq, first_seq + n - 1))]


def prev_of(conn: apsw.Connection, actor: bytes, hlc: bytes) -> bytes:
    """Our bundle of `actor` just before `hlc` (zero if none)."""
    for (h,) in conn.execute("SELECT max(hlc) FROM bundles WHERE actor = ? AND hlc < ?",
                             (actor, hlc)):
        return bytes(h) if h is not None else hlcmod.ZERO
    return hlcmod.ZERO


class Session:
    """One outbound catch-up session toward a peer whose clock was `peer_vc`."""

    def __init__(self, conn: apsw.Connection, peer_vc: Mapping[bytes, bytes]) -> None:
        self.conn = conn
        self.peer_vc = dict(peer_vc)
        self.sent_last: dict[bytes, bytes] = {}  # per actor, the last HLC sent this session
        self.cursor: tuple[bytes, bytes] | None = None
        self.remaining = 0
        self.sent = 0
        self.started = False

    def _start(self) -> None:
        conn = self.conn
        ours = {bytes(a): bytes(h) for a, h in conn.execute("SELECT actor, hlc FROM vclock")}
        total = 0
        for a in ours:
            for (c,) in conn.execute("SELECT count(*) FROM bundles WHERE actor = ? AND hlc > ?",
                                     (a, self.peer_vc.get(a, hlcmod.ZERO))):
                total += int(c)
        self.remaining = total
        # every bundle at or below the smallest covered HLC among our actors is covered
        low = min((self.peer_vc.get(a, hlcmod.ZERO) for a in ours), default=hlcmod.ZERO)
        self.cursor = (low, b"\xff" * 16)
        self.started = True

    def page(self, max_bundles: int = PAGE_BUNDLES, max_bytes: int = PAGE_BYTES,
             alone_bytes: int = ALONE_BYTES) -> Page:
        """The next page (empty records = the session is done), read in one snapshot.

        A bundle over `alone_bytes` comes in a page of its own (the runtime splits it over
        several `ops` messages, spec 03 §5 Large bundles)."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            if not self.started:
                self._start()
            assert self.cursor is not None
            records: list[list[Any]] = []
            prev: dict[bytes, bytes] = {}
            last: dict[bytes, bytes] = {}
            size = 0
            hlc0, bid0 = self.cursor
            full = False
            while not full:
                rows = list(conn.execute(
                    "SELECT bundle_id, actor, hlc, header, sig, first_seq, n FROM bundles"
                    " WHERE hlc > ? OR (hlc = ? AND bundle_id > ?) ORDER BY hlc, bundle_id"
                    " LIMIT ?", (hlc0, hlc0, bid0, max_bundles - len(records))))
                if not rows:
                    break
                for bid, actor, h, header, sig, first_seq, n in rows:
                    bid, actor, h = bytes(bid), bytes(actor), bytes(h)
                    if h <= self.peer_vc.get(actor, hlcmod.ZERO):
                        hlc0, bid0 = h, bid
                        continue
                    bodies = _bodies(conn, first_seq, n)
                    rsize = len(header) + len(sig) + sum(len(b) for b in bodies)
                    if rsize > alone_bytes and records:
                        full = True  # a big one goes alone, in the next page
                        break
                    hlc0, bid0 = h, bid
                    if actor not in prev:
                        prev[actor] = self.sent_last.get(actor) or prev_of(conn, actor, h)
                    records.append([bytes(header), bytes(sig), bodies])
                    size += rsize
                    last[actor] = h
                    if len(records) >= max_bundles or size >= max_bytes:
                        full = True
                        break
            self.cursor = (hlc0, bid0)
            self.sent_last.update(last)
            self.sent += len(records)
            self.remaining = max(0, self.remaining - len(records))
            return Page(records, prev, self.remaining if records else 0, _head(conn), last)
        finally:
            conn.execute("COMMIT")


def record_size(record: list[Any]) -> int:
    return len(record[0]) + len(record[1]) + sum(len(b) for b in record[2])


def split_record(record: list[Any], part_bytes: int) -> list[list[bytes]]:
    """A big record's bodies in consecutive groups of about `part_bytes` (op boundaries)."""
    parts: list[list[bytes]] = [[]]
    size = 0
    for body in record[2]:
        if parts[-1] and size + len(body) > part_bytes:
            parts.append([])
            size = 0
        parts[-1].append(body)
        size += len(body)
    return parts


def own_after(conn: apsw.Connection, actor: bytes, seq: int,
              limit: int = PAGE_BUNDLES) -> tuple[list[list[Any]], bytes, bytes, int]:
    """Our own bundles appended after `seq`: (records, prev HLC, last HLC, last first_seq)."""
    conn.execute("BEGIN")
    try:
        rows = list(conn.execute(
            "SELECT header, sig, first_seq, n, hlc FROM bundles WHERE actor = ? AND first_seq > ?"
            " ORDER BY first_seq LIMIT ?", (actor, seq, limit)))
        if not rows:
            return [], hlcmod.ZERO, hlcmod.ZERO, seq
        records = [[bytes(h), bytes(s), _bodies(conn, fs, n)] for h, s, fs, n, _ in rows]
        first_hlc = bytes(rows[0][4])
        return (records, prev_of(conn, actor, first_hlc), bytes(rows[-1][4]),
                int(rows[-1][2]))
    finally:
        conn.execute("COMMIT")


def local_head(conn: apsw.Connection) -> int:
    return _head(conn)
