"""Rule proposals (spec 04 §6): local, never synced, kept in `oplog.db` next to the overlays.

A proposal is `{rule_id, entity, attach|detach, context}` where the context is canonical (None)
or the overlay the triggering event ran in. It is open until accepted, dismissed, or withdrawn
when the rule's condition for that entity flips again; a dismissal holds until that flip.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import apsw
import attrs

from openprod.core import ids
from openprod.core.errors import NotFound, ValidationError

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_proposals(
  id BLOB PRIMARY KEY, rule_id TEXT NOT NULL, entity BLOB NOT NULL, action TEXT NOT NULL,
  context BLOB NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS rule_proposals_key
  ON rule_proposals(rule_id, entity, context, action);
"""
CANONICAL = b""  # the context column of canonical proposals (NULLs would defeat the index)


class ProposalNotFound(NotFound):
    code = "proposal_not_found"


class ProposalStale(ValidationError):
    code = "proposal_stale"


@attrs.frozen
class StoredProposal:
    id: bytes
    rule_id: str
    entity: bytes
    action: str
    context: bytes | None  # overlay id, or None for canonical
    status: str  # open | dismissed
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"id": ids.to_text(self.id), "rule_id": self.rule_id,
                "entity_id": ids.to_text(self.entity), "action": self.action,
                "context": ids.to_text(self.context) if self.context else "canonical",
                "status": self.status, "created_at": self.created_at}


class ProposalStore:
    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        with conn:
            conn.execute(SCHEMA)
        self.version = 0  # bumped on every change (the API publishes rule_proposals_changed)

    def record(self, context: bytes | None, flipped: Iterable[tuple[str, bytes]],
               new: Iterable[tuple[str, bytes, str]]) -> None:
        """One event's outcome: drop every proposal of the (rule, entity) pairs whose condition
        flipped, then open the new ones."""
        ctx = context or CANONICAL
        flipped = list(flipped)
        new = list(new)
        if not flipped and not new:
            return
        now = int(time.time() * 1000)
        with self.conn:
            self.conn.executemany(
                "DELETE FROM rule_proposals WHERE rule_id = ? AND entity = ? AND context = ?",
                [(r, e, ctx) for r, e in flipped])
            self.conn.executemany(
                "INSERT OR IGNORE INTO rule_proposals(id, rule_id, entity, action, context,"
                " status, created_at) VALUES (?,?,?,?,?, 'open', ?)",
                [(ids.new_id(), r, e, a, ctx, now) for r, e, a in new])
        self.version += 1

    def get(self, pid: bytes) -> StoredProposal:
        for row in self.conn.execute(
            "SELECT id, rule_id, entity, action, context, status, created_at"
            " FROM rule_proposals WHERE id = ?", (pid,)
        ):
            return _row(row)
        raise ProposalNotFound(f"no rule proposal {ids.to_text(pid)}",
                               proposal_id=ids.to_text(pid))

    def all(self, status: str | None = "open") -> list[StoredProposal]:
        q = ("SELECT id, rule_id, entity, action, context, status, created_at"
             " FROM rule_proposals")
        args: tuple[Any, ...] = ()
        if status is not None:
            q += " WHERE status = ?"
            args = (status,)
        return [_row(r) for r in self.conn.execute(q + " ORDER BY created_at, id", args)]

    def dismiss(self, pid: bytes) -> None:
        self.get(pid)
        with self.conn:
            self.conn.execute("UPDATE rule_proposals SET status = 'dismissed' WHERE id = ?",
                              (pid,))
        self.version += 1

    def delete(self, pids: Iterable[bytes]) -> None:
        pids = list(pids)
        if not pids:
            return
        with self.conn:
            self.conn.executemany("DELETE FROM rule_proposals WHERE id = ?",
                                  [(p,) for p in pids])
        self.version += 1

    def drop_context(self, context: bytes) -> None:
        """An overlay went away (discarded or committed): its proposals go with it."""
        with self.conn:
            self.conn.execute("DELETE FROM rule_proposals WHERE context = ?", (context,))
        self.version += 1

    def move_context(self, old: bytes, new: bytes | None) -> None:
        """An overlay was committed: its open questions now apply to `new` (canonical)."""
        with self.conn:
            self.conn.execute(
                "UPDATE OR REPLACE rule_proposals SET context = ? WHERE context = ?",
                (new or CANONICAL, old))
        self.version += 1

    def drop_rule(self, rule_id: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM rule_proposals WHERE rule_id = ?", (rule_id,))
        self.version += 1


def _row(r: Any) -> StoredProposal:
    pid, rule_id, e, action, ctx, status, created = r
    ctx = bytes(ctx)
    return StoredProposal(bytes(pid), str(rule_id), bytes(e), str(action),
                          ctx if ctx else None, str(status), int(created))
