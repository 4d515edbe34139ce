"""apsw connections to a workspace's `oplog.db`: pragmas and IMMEDIATE transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw

USER_VERSION = 1


def connect(path: Path | str, *, synchronous: str = "NORMAL") -> apsw.Connection:
    """Open a connection with the workspace pragmas (WAL, busy timeout, no FK checks)."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(5000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


@contextmanager
def transaction(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception (the block must not await)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
