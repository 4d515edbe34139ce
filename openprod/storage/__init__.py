"""Storage: the append-only oplog behind the `Storage` protocol, and its apsw implementation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from openprod.core.ops import Bundle
from openprod.storage.sqlite import AppendResult, SqliteStorage, StoredOp

__all__ = ["AppendResult", "SqliteStorage", "Storage", "StoredOp"]


class Storage(Protocol):
    """What the engine needs from an oplog store. `SqliteStorage` is the V1 implementation."""

    def append(self, bundles: Sequence[Bundle], *, origin: str = "local") -> AppendResult: ...

    def record_rejection(
        self, bundle_id: bytes, actor: bytes, hlc: bytes, code: str, reason: str, raw: bytes
    ) -> None: ...

    def has_bundle(self, bundle_id: bytes) -> bool: ...

    def bundle_record(self, bundle_id: bytes) -> list[Any] | None: ...

    def bundles_since(self, vc: Mapping[bytes, bytes]) -> Iterable[list[Any]]: ...

    def vclock(self) -> dict[bytes, bytes]: ...

    def head_seq(self) -> int: ...

    def op_count(self) -> int: ...

    def oplog_digest(self) -> bytes: ...

    def max_hlc(self) -> bytes: ...

    def close(self) -> None: ...
