"""HTTP routes for record history and the revision stamp (spec 05 J6, issue 9).

Both are queries answered by the Reader (its own connection, in a worker thread, one read
snapshot), never by the writer: a long history does not hold up commands or the event loop.
"""

from __future__ import annotations

from typing import Any

from quart import request

from actors.api import _id, _query, api
from actors.node import Node
from openprod.core.errors import ValidationError
from openprod.engine import history


def _limit() -> int:
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return history.DEFAULT_LIMIT
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= history.MAX_LIMIT:
        raise ValidationError(f"limit must be an integer 1-{history.MAX_LIMIT}", field="limit")
    return n


@api("/records/<id>/history", "GET", "Who changed a record (or one field: field=<name>), when, "
     "from what to what, newest first, from the signed oplog; page with before=<next>",
     query=("field", "limit", "before", "after"))
async def record_history(node: Node, body: Any, id: str) -> dict[str, Any]:
    e = _id(id)
    limit = _limit()
    before = history.parse_cursor(request.args.get("before"))
    field = request.args.get("field") or None
    names = _peer_names(node)
    return dict(await _query(node, lambda v: history.record_history(
        v, e, field=field, limit=limit, before=before, names=names)))


def _peer_names(node: Node) -> dict[str, str]:
    """Names of authors who never published a profile: this device's own, and the names
    peers gave in their sync handshakes (the profile, when there is one, wins)."""
    out: dict[str, str] = {}
    sync = getattr(node.current, "sync", None)
    if sync is not None:
        for pid, seen in sync.last_seen.items():
            if seen.get("name"):
                out[str(pid)] = str(seen["name"])
        for p in sync.links.values():
            if p.peer_name:
                out[str(p.peer_id)] = str(p.peer_name)
    out[node.ident.actor.hex()] = node.ident.display_name
    return out


@api("/workspace/revision", "GET", "The revision stamp for printouts: number of bundles in the "
     "oplog and the start of the oplog digest (equal on every peer with the same changes)",
     query=("after",))
async def workspace_revision(node: Node, body: Any) -> dict[str, Any]:
    return dict(await _query(node, lambda v: history.revision(v.conn)))
