"""SqliteStorage: the oplog tables of `oplog.db` (spec 01 §10), written by one owner.

Owns `bundles`, `ops` (append-only: UPDATE/DELETE abort in triggers), `vclock`, `oplog_meta`
and the local-only tables `local_meta`, `stale_flags`, `rejected_bundles`, `quarantine`.
`append` stores a batch of whole bundles in one IMMEDIATE transaction with synchronous=FULL:
each bundle is durable and whole once `append` returns, or absent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs

from openprod.core import hlc as hlcmod
from openprod.core.errors import EquivocationError, StorageError
from openprod.core.ops import Bundle
from openprod.storage import db

DIGEST_PREFIX = b"openprod/oplog/v1\n"
REJECTED_MAX_ROWS = 1000
REJECTED_MAX_BYTES = 64 * 1024 * 1024
MOD = 2**256

SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles(
    bundle_id BLOB PRIMARY KEY, actor BLOB NOT NULL, hlc BLOB NOT NULL, kind TEXT NOT NULL,
    n INTEGER NOT NULL, header BLOB NOT NULL, header_hash BLOB NOT NULL, sig BLOB NOT NULL,
    origin TEXT NOT NULL, received_at INTEGER NOT NULL, first_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bundles_actor_hlc ON bundles(actor, hlc);
CREATE INDEX IF NOT EXISTS bundles_canonical ON bundles(hlc, bundle_id);
CREATE TABLE IF NOT EXISTS ops(
    seq INTEGER PRIMARY KEY, op_id BLOB NOT NULL, bundle_id BLOB NOT NULL, pos INTEGER NOT NULL,
    hlc BLOB NOT NULL, actor BLOB NOT NULL, t TEXT NOT NULL, entity BLOB, body BLOB NOT NULL,
    op_hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_op_id ON ops(op_id);
CREATE INDEX IF NOT EXISTS ops_canonical ON ops(hlc, op_id);
CREATE INDEX IF NOT EXISTS ops_actor_hlc ON ops(actor, hlc);
CREATE INDEX IF NOT EXISTS ops_bundle_pos ON ops(bundle_id, pos);
CREATE INDEX IF NOT EXISTS ops_entity_hlc ON ops(entity, hlc);
CREATE TRIGGER IF NOT EXISTS ops_no_update BEFORE UPDATE ON ops
    BEGIN SELECT RAISE(ABORT, 'the oplog is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ops_no_delete BEFORE DELETE ON ops
    BEGIN SELECT RAISE(ABORT, 'the oplog is append-only'); END;
CREATE TRIGGER IF NOT EXISTS bundles_no_update BEFORE UPDATE ON bundles
    BEGIN SELECT RAISE(ABORT, 'the oplog is append-only'); END;
CREATE TRIGGER IF NOT EXISTS bundles_no_delete BEFORE DELETE ON bundles
    BEGIN SELECT RAISE(ABORT, 'the oplog is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ops_no_replace BEFORE INSERT ON ops
    WHEN EXISTS (SELECT 1 FROM ops WHERE seq = NEW.seq)
    BEGIN SELECT RAISE(ABORT, 'the oplog is append-only'); END;
CREATE TRIGGER IF NOT EXISTS bundles_no_replace BEFORE INSERT ON bundles
    WHEN EXISTS (SELECT 1 FROM bundles WHERE bundle_id = NEW.bundle_id)
    BEGIN SELECT RAISE(ABORT, 'the oplog is append-only'); END;
CREATE TABLE IF NOT EXISTS vclock(actor BLOB PRIMARY KEY, hlc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS oplog_meta(k TEXT PRIMARY KEY, v);
CREATE TABLE IF NOT EXISTS local_meta(k TEXT PRIMARY KEY, v);
CREATE TABLE IF NOT EXISTS stale_flags(
    op_id BLOB NOT NULL, bundle_id BLOB NOT NULL, hlc BLOB NOT NULL, received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected_bundles(
    bundle_id BLOB NOT NULL, actor BLOB, hlc BLOB, code TEXT NOT NULL, reason TEXT NOT NULL,
    settled INTEGER NOT NULL, raw BLOB, received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine(
    bundle_id BLOB PRIMARY KEY, reason TEXT NOT NULL, at_seq INTEGER NOT NULL
);
"""


@attrs.frozen
class StoredOp:
    seq: int
    op_id: bytes
    bundle_id: bytes
    pos: int
    hlc: bytes
    actor: bytes
    t: str
    body: bytes
    op_hash: bytes


@attrs.frozen
class AppendResult:
    """Per bundle id: appended, dup or quarantined; `head` = last seq after the transaction."""

    status: dict[bytes, str]
    head: int
    first_seq: int

    @property
    def appended(self) -> list[bytes]:
        return [b for b, s in self.status.items() if s in ("appended", "quarantined")]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SqliteStorage:
    """The oplog writer. One instance per open workspace; not thread-safe (one owner)."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.conn = db.connect(self.path, synchronous=synchronous)
        with db.transaction(self.conn):
            self.conn.execute(SCHEMA)
            if self._meta("count") is None:
                self.conn.execute(f"PRAGMA user_version={db.USER_VERSION}")
                self.conn.executemany(
                    "INSERT INTO oplog_meta(k, v) VALUES (?, ?)",
                    [("count", 0), ("digest_sum", bytes(32)), ("head_seq", 0)],
                )
        self._count = int(self._meta("count") or 0)
        self._sum = int.from_bytes(self._meta("digest_sum") or bytes(32), "big")
        self._head = int(self._meta("head_seq") or 0)
        self._vc = self._load_vc()

    # --- meta --------------------------------------------------------------------------------
    def _meta(self, k: str) -> Any:
        for (v,) in self.conn.execute("SELECT v FROM oplog_meta WHERE k = ?", (k,)):
            return v
        return None

    def _load_vc(self) -> dict[bytes, bytes]:
        return {bytes(a): bytes(h) for a, h in self.conn.execute("SELECT actor, hlc FROM vclock")}

    def local_get(self, k: str) -> Any:
        for (v,) in self.conn.execute("SELECT v FROM local_meta WHERE k = ?", (k,)):
            return v
        return None

    def local_set(self, k: str, v: Any) -> None:
        with db.transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO local_meta(k, v) VALUES (?, ?)", (k, v))

    # --- append ------------------------------------------------------------------------------
    def append(
        self,
        bundles: Sequence[Bundle],
        *,
        origin: str = "local",
        stale_before_ms: int | None = None,
    ) -> AppendResult:
        """Append whole bundles in one transaction; dedupe; quarantine duplicate op ids.

        Raises EquivocationError (nothing written) if a known bundle id arrives with other bytes.
        """
        if not bundles:  # nothing to write: no transaction, no fsync
            return AppendResult({}, self._head, self._head + 1)
        conn = self.conn
        now = _now_ms()
        status: dict[bytes, str] = {}
        count, dsum, head, vc = self._count, self._sum, self._head, dict(self._vc)
        first_seq = head + 1
        try:
            with db.transaction(conn):
                for b in bundles:
                    st = self._append_one(b, origin, now, head, stale_before_ms)
                    status[b.bundle_id] = st
                    if st == "dup":
                        continue
                    for o in b.ops:
                        dsum = (dsum + int.from_bytes(o.op_hash, "big")) % MOD
                    count += len(b.ops)
                    head += len(b.ops)
                    if b.hlc > vc.get(b.actor, hlcmod.ZERO):
                        vc[b.actor] = b.hlc
                        conn.execute(
                            "INSERT OR REPLACE INTO vclock(actor, hlc) VALUES (?, ?)",
                            (b.actor, b.hlc),
                        )
                conn.executemany(
                    "UPDATE oplog_meta SET v = ? WHERE k = ?",
                    [(count, "count"), (dsum.to_bytes(32, "big"), "digest_sum"),
                     (head, "head_seq")],
                )
        except apsw.Error as exc:
            raise StorageError(f"oplog append failed: {exc}") from exc
        self._count, self._sum, self._head, self._vc = count, dsum, head, vc
        return AppendResult(status, head, first_seq)

    def _append_one(
        self, b: Bundle, origin: str, now: int, head: int, stale_before_ms: int | None
    ) -> str:
        conn = self.conn
        for (header,) in conn.execute(
            "SELECT header FROM bundles WHERE bundle_id = ?", (b.bundle_id,)
        ):
            if bytes(header) == b.header:
                return "dup"
            raise EquivocationError(
                "a known bundle id arrived with different bytes", bundle_id=b.bundle_id.hex()
            )
        status = "appended"
        # Duplicate op ids across bundles: the smaller header hash wins everywhere (spec 01 §4).
        rivals: set[bytes] = set()
        for o in b.ops:
            for (other,) in conn.execute(
                "SELECT bundle_id FROM ops WHERE op_id = ?", (o.op_id,)
            ):
                rivals.add(bytes(other))
        for rival in rivals:
            (rhash,) = next(iter(conn.execute(
                "SELECT header_hash FROM bundles WHERE bundle_id = ?", (rival,)
            )))
            if bytes(rhash) < b.header_hash:
                status = "quarantined"
            else:
                conn.execute(
                    "INSERT OR IGNORE INTO quarantine(bundle_id, reason, at_seq) VALUES (?, ?, ?)",
                    (rival, "duplicate op id; a bundle with a smaller header hash holds it",
                     head + len(b.ops)),
                )
        conn.execute(
            "INSERT INTO bundles(bundle_id, actor, hlc, kind, n, header, header_hash, sig, origin,"
            " received_at, first_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (b.bundle_id, b.actor, b.hlc, b.kind, len(b.ops), b.header, b.header_hash, b.sig,
             origin, now, head + 1),
        )
        from openprod.core.ops import target_of

        conn.executemany(
            "INSERT INTO ops(seq, op_id, bundle_id, pos, hlc, actor, t, entity, body, op_hash)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (head + 1 + i, o.op_id, b.bundle_id, i, o.hlc, o.actor, o.t, target_of(o.t, o.p),
                 o.body, o.op_hash)
                for i, o in enumerate(b.ops)
            ],
        )
        if status == "quarantined":
            conn.execute(
                "INSERT OR IGNORE INTO quarantine(bundle_id, reason, at_seq) VALUES (?, ?, ?)",
                (b.bundle_id, "duplicate op id; a bundle with a smaller header hash holds it",
                 head + len(b.ops)),
            )
        if stale_before_ms is not None and hlcmod.wall_ms(b.ops[0].hlc) < stale_before_ms:
            conn.executemany(
                "INSERT INTO stale_flags(op_id, bundle_id, hlc, received_at) VALUES (?,?,?,?)",
                [(o.op_id, b.bundle_id, o.hlc, now) for o in b.ops
                 if hlcmod.wall_ms(o.hlc) < stale_before_ms],
            )
        return status

    def record_rejection(
        self,
        bundle_id: bytes,
        actor: bytes | None,
        hlc: bytes | None,
        code: str,
        reason: str,
        raw: bytes | None = None,
        *,
        settled: bool,
    ) -> None:
        """Log a rejected bundle; a settled one (valid signature, bad content) advances the VC.

        Raw bytes of unsettled rejections are kept for diagnosis up to 1,000 rows / 64 MiB."""
        if raw is not None:
            for n, size in self.conn.execute(
                    "SELECT count(*), coalesce(sum(length(raw)), 0) FROM rejected_bundles"
                    " WHERE raw IS NOT NULL"):
                if n >= REJECTED_MAX_ROWS or size + len(raw or b"") > REJECTED_MAX_BYTES:
                    raw = None
        with db.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO rejected_bundles(bundle_id, actor, hlc, code, reason, settled, raw,"
                " received_at) VALUES (?,?,?,?,?,?,?,?)",
                (bundle_id, actor, hlc, code, reason, int(settled), raw, _now_ms()),
            )
            if settled and actor is not None and hlc is not None and hlc > self._vc.get(
                actor, hlcmod.ZERO
            ):
                self.conn.execute(
                    "INSERT OR REPLACE INTO vclock(actor, hlc) VALUES (?, ?)", (actor, hlc)
                )
                self._vc[actor] = hlc

    def is_settled(self, bundle_id: bytes) -> bool:
        for _ in self.conn.execute(
            "SELECT 1 FROM rejected_bundles WHERE bundle_id = ? AND settled = 1", (bundle_id,)
        ):
            return True
        return False

    def quarantine(self, bundle_id: bytes, reason: str) -> None:
        """Quarantine a stored bundle (e.g. a body that no longer matches its op_hash)."""
        with db.transaction(self.conn):
            self.conn.execute(
                "INSERT OR IGNORE INTO quarantine(bundle_id, reason, at_seq) VALUES (?, ?, ?)",
                (bundle_id, reason, self._head),
            )

    # --- reads -------------------------------------------------------------------------------
    def has_bundle(self, bundle_id: bytes) -> bool:
        for _ in self.conn.execute("SELECT 1 FROM bundles WHERE bundle_id = ?", (bundle_id,)):
            return True
        return False

    def bundle_record(self, bundle_id: bytes) -> list[Any] | None:
        """The exact wire record `[header, sig, [body…]]` of a stored bundle."""
        rows = list(self.conn.execute(
            "SELECT header, sig FROM bundles WHERE bundle_id = ?", (bundle_id,)
        ))
        if not rows:
            return None
        header, sig = rows[0]
        bodies = [bytes(b) for (b,) in self.conn.execute(
            "SELECT body FROM ops WHERE bundle_id = ? ORDER BY pos", (bundle_id,)
        )]
        return [bytes(header), bytes(sig), bodies]

    def bundles_since(self, vc: Mapping[bytes, bytes]) -> Iterator[list[Any]]:
        """Catch-up: for each actor x, our bundles with hlc > vc[x], whole, in canonical order."""
        rows = list(self.conn.execute(
            "SELECT b.bundle_id, b.actor, b.hlc, o.hlc, o.op_id FROM bundles b"
            " JOIN ops o ON o.seq = b.first_seq"
        ))
        wanted = [
            (bytes(fh) + bytes(fid), bytes(bid))
            for bid, actor, bh, fh, fid in rows
            if bytes(bh) > vc.get(bytes(actor), hlcmod.ZERO)
        ]
        wanted.sort()
        for _, bid in wanted:
            rec = self.bundle_record(bid)
            if rec is not None:
                yield rec

    def ops_after(self, seq: int, limit: int = 10_000) -> list[StoredOp]:
        return [
            StoredOp(s, bytes(oid), bytes(bid), pos, bytes(h), bytes(a), t, bytes(body),
                     bytes(oh))
            for s, oid, bid, pos, h, a, t, body, oh in self.conn.execute(
                "SELECT seq, op_id, bundle_id, pos, hlc, actor, t, body, op_hash FROM ops"
                " WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit),
            )
        ]

    def vclock(self) -> dict[bytes, bytes]:
        return dict(self._vc)

    def head_seq(self) -> int:
        return self._head

    def op_count(self) -> int:
        return self._count

    def oplog_digest(self) -> bytes:
        return digest_of(self._count, self._sum)

    def max_hlc(self) -> bytes:
        for (h,) in self.conn.execute("SELECT max(hlc) FROM ops"):
            return bytes(h) if h is not None else hlcmod.ZERO
        return hlcmod.ZERO

    def quarantined(self) -> dict[bytes, str]:
        return {bytes(b): r for b, r in self.conn.execute(
            "SELECT bundle_id, reason FROM quarantine"
        )}

    def close(self) -> None:
        self.conn.close()


def digest_of(count: int, dsum: int) -> bytes:
    from blake3 import blake3

    return blake3(DIGEST_PREFIX + count.to_bytes(8, "big") + dsum.to_bytes(32, "big")).digest()
