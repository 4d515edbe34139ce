"""A write-back cache of table rows keyed by primary key, scoped to one transaction.

Projections read and write rows through it and flush with `executemany` before COMMIT, so an
incremental batch and a full replay of a million ops run the same code at bulk-insert speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw

Key = tuple[Any, ...]
Row = tuple[Any, ...]


class Rows:
    def __init__(
        self, conn: apsw.Connection, table: str, keys: Sequence[str], cols: Sequence[str],
        *, owner: int = 0,
    ) -> None:
        self.conn = conn
        self.owner = owner  # which key part names the row's owner (entity, edge, ...)
        self.table = table
        where = " AND ".join(f"{k} = ?" for k in keys)
        self._select = f"SELECT {', '.join(cols)} FROM {table} WHERE {where}"
        allcols = [*keys, *cols]
        self._upsert = (
            f"INSERT OR REPLACE INTO {table}({', '.join(allcols)})"
            f" VALUES ({', '.join('?' * len(allcols))})"
        )
        self._delete = f"DELETE FROM {table} WHERE {where}"
        self.cache: dict[Key, Row | None] = {}
        self.dirty: set[Key] = set()
        # During a full replay the table starts empty: only owners already flushed can have
        # rows on disk, so a miss for any other owner needs no SELECT.
        self.fresh = False
        self.flushed_owners: set[Any] = set()

    def get(self, key: Key) -> Row | None:
        try:
            return self.cache[key]
        except KeyError:
            pass
        if self.fresh and key[self.owner] not in self.flushed_owners:
            return None  # known absent; not cached, so a replay's caches hold only real rows
        row: Row | None = None
        for r in self.conn.execute(self._select, key):
            row = self.decode(tuple(r))
        self.cache[key] = row
        return row

    def decode(self, stored: Row) -> Row:
        """Stored columns -> cached row (identity; subclasses keep richer values in memory)."""
        return stored

    def encode(self, row: Row) -> Row:
        """Cached row -> stored columns."""
        return row

    def put(self, key: Key, row: Row) -> None:
        self.cache[key] = row
        self.dirty.add(key)

    def delete(self, key: Key) -> None:
        self.cache[key] = None
        self.dirty.add(key)

    def flush(self) -> None:
        if not self.dirty:
            return
        ups = []
        dels = []
        for k in self.dirty:
            row = self.cache[k]
            if row is None:
                dels.append(k)
            else:
                ups.append(k + self.encode(row))
        if dels:
            self.conn.executemany(self._delete, dels)
        if ups:
            self.conn.executemany(self._upsert, ups)
        if self.fresh:
            self.flushed_owners.update(k[self.owner] for k in self.dirty)
        self.dirty.clear()

    def reset(self, *, fresh: bool | None = None) -> None:
        """Drop the cache (after flush, or on rollback); fresh=True starts a full replay."""
        self.cache.clear()
        self.dirty.clear()
        if fresh is not None:
            self.fresh = fresh
            self.flushed_owners.clear()
