"""`state_hash` (spec 01 §9): BLAKE3 over the oplog digest and every hashed derived record.

Each group's records are canonical CBOR arrays sorted bytewise; local-only tables, reception
order, inert ops and quarantined ops are excluded. Equal digests with unequal state hashes mean a
derivation bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apsw
from blake3 import blake3

from openprod.core import codec
from openprod.engine import crdt

PREFIX = b"openprod/state/v1\n"


def _dec(b: Any) -> Any:
    return None if b is None else codec.decode(bytes(b))


def _b(x: Any) -> Any:
    return bytes(x) if isinstance(x, bytes | memoryview) else x


def open_conflicts(tips: list[list[Any]]) -> bool:
    return len(tips) >= 2 and len({_b(t[4]) for t in tips}) >= 2


def groups(conn: apsw.Connection) -> Iterator[tuple[str, Iterable[list[Any]]]]:
    q = conn.execute
    yield "E", (["E", _b(e), bool(d), _b(r)] for e, d, r in q(
        "SELECT entity, deleted, redirect FROM entities"))
    yield "F", (["F", _b(e), f, bool(a)] for e, f, a in q(
        "SELECT entity, facet, attached FROM facets"))
    yield "V", (["V", _b(e), s, _dec(v), _b(st)[12:]] for e, s, v, st in q(
        "SELECT entity, slot, value, stamp FROM fields"))
    yield "VC", (["V", _b(e), s, ["text", crdt.read_text(bytes(st))], None] for e, s, st in q(
        "SELECT entity, slot, state FROM crdt_docs"))
    yield "K", _conflict_rows(conn)
    yield "G", (["G", _b(g), t, _b(s), _b(d), bool(x), i] for g, t, s, d, x, i in q(
        "SELECT edge, type, src, dst, deleted, idx FROM edges"))
    yield "P", (["P", _b(g), k, _dec(v), _b(st)[12:]] for g, k, v, st in q(
        "SELECT edge, key, value, stamp FROM edge_props"))
    yield "ST", (["ST", f, lbl, m] for f, lbl, m in q(
        "SELECT facet, label, module FROM schema_tables"))
    yield "SF", (["SF", f, n, t, bool(c), lbl, _dec(o)] for f, n, t, c, lbl, o in q(
        "SELECT facet, field, ftype, crdt, label, opts FROM schema_fields"))
    yield "SE", (["SE", t, bool(o), lbl, _dec(p)] for t, o, lbl, p in q(
        "SELECT type, ordered, label, props FROM schema_edge_types"))
    yield "M", (["M", a, b] for a, b in q(
        "SELECT key_a, key_b FROM mappings WHERE confirmed = 1"))
    yield "R", (["R", _b(a), _b(s)] for a, s in q("SELECT absorbed, survivor FROM redirects"))
    yield "X", (["X", _b(a), _b(b)] for a, b in q("SELECT a, b FROM merge_exceptions"))
    yield "C", (["C", ns, k, _dec(v)] for ns, k, v in q("SELECT ns, key, value FROM config"))


def _conflict_rows(conn: apsw.Connection) -> Iterator[list[Any]]:
    for kind, owner, key, blob in conn.execute(
        "SELECT kind, owner, key, tips FROM tips WHERE kind IN ('f', 'p')"
    ):
        tips = codec.decode(bytes(blob))
        if open_conflicts(tips):
            yield ["K", kind, _b(owner), key, sorted(bytes(t[0]) for t in tips)]


def compute(conn: apsw.Connection, oplog_digest: bytes) -> bytes:
    """The state hash of what `conn`'s derived tables hold (caller ensures they are current)."""
    h = blake3(PREFIX + oplog_digest)
    merged: dict[str, list[bytes]] = {}
    for name, rows in groups(conn):
        # CRDT values share the V group with scalar values.
        merged.setdefault("V" if name == "VC" else name, []).extend(
            codec.encode(r) for r in rows
        )
    for name in ("E", "F", "V", "K", "G", "P", "ST", "SF", "SE", "M", "R", "X", "C"):
        for rec in sorted(merged.get(name, ())):
            h.update(rec)
    return h.digest()
