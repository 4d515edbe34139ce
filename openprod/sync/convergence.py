"""Convergence checks (spec 03 §6.7): one consistent snapshot of (VC, oplog digest, state hash),
and the verdict when two peers compare theirs."""

from __future__ import annotations

from typing import Literal

import apsw

from openprod.core import vclock as vcmod
from openprod.engine.statehash import compute as compute_state_hash
from openprod.storage.sqlite import digest_of

Snapshot = tuple[vcmod.VClock, bytes, bytes]
Verdict = Literal["converged", "divergent", "digest_mismatch", "unequal_vc"]


def snapshot(conn: apsw.Connection) -> Snapshot | None:
    """(vc, oplog_digest, state_hash) read in one transaction, or None while the state
    projection has not reached the oplog head in that snapshot (try again once it has)."""
    conn.execute("BEGIN")
    try:
        meta = {k: v for k, v in conn.execute("SELECT k, v FROM oplog_meta")}
        head = int(meta.get("head_seq") or 0)
        cp = 0
        for (v,) in conn.execute("SELECT v FROM derive_meta WHERE k = 'seq'"):
            cp = int(v)
        if cp != head:
            return None
        vc = {bytes(a): bytes(h) for a, h in conn.execute("SELECT actor, hlc FROM vclock")}
        digest = digest_of(int(meta.get("count") or 0),
                           int.from_bytes(meta.get("digest_sum") or bytes(32), "big"))
        return vc, digest, compute_state_hash(conn, digest)
    finally:
        conn.execute("COMMIT")


def compare(ours: Snapshot, theirs: Snapshot) -> Verdict:
    if ours[0] != theirs[0]:
        return "unequal_vc"
    if ours[1] != theirs[1]:
        return "digest_mismatch"
    if ours[2] != theirs[2]:
        return "divergent"
    return "converged"
