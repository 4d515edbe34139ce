"""The HTTP/WebSocket API: Quart-Trio on Hypercorn's trio worker, RPC-style JSON (spec 05 §5).

Every route is declared once with `@api(...)`, which registers it with Quart and describes it in
the OpenAPI document at `/api/openapi.json`. Requests must name this engine in Host, come from
its own Origin when one is sent, and carry the launch token (Bearer header) or the session cookie
the page gets from `/?token=` (this home's session secret, so a page survives a restart of the
engine); `/`, `/static/*` and the OpenAPI document need no token. Errors are
`{"error": {"code", "message", "details"}}` with 4xx for the caller's mistakes, 5xx for ours.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, redirect, request, send_from_directory, websocket
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed, HandshakeError
from werkzeug.exceptions import HTTPException

from actors import blocking
from actors.node import Node, lan_addresses
from actors.overlay_manager import drift_event
from actors.sync_service import lookup as sync_lookup
from openprod.core import codec, ids
from openprod.core.errors import Forbidden, NotFound, OpenprodError, ValidationError
from openprod.engine import lifecycle as lcmod
from openprod.engine import modules as modmod
from openprod.engine import steps
from openprod.engine.views import Views, _read
from openprod.engine.workspace import Result, Workspace
from openprod.storage.sqlite import digest_of
from openprod.sync.messages import ProtocolError

log = logging.getLogger("openprod.api")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_BODY = 16 * 1024 * 1024
COOKIE = "openprod_token"
AFTER_TIMEOUT_S = 30
STATUS = {
    "not_found": 404, "entity_deleted": 409, "entity_merged": 409, "shutting_down": 503,
    "unauthorized": 401, "forbidden": 403, "too_large": 413, "method_not_allowed": 405,
    "timeout": 503, "conflict_not_found": 404, "conflict_resolved": 409,
    "stale_conflict_state": 409, "overlay_not_found": 404, "overlay_active": 409,
    "unresolved_drift": 409, "peer_unreachable": 502,
    "module_not_installed": 404, "module_version_conflict": 409,
    "rule_not_found": 404, "proposal_not_found": 404, "proposal_stale": 409,
    "cycle_detected": 409, "rule_limit_exceeded": 422,
    "unavailable": 404, "no_thumbnail": 404, "blob_unknown": 400, "blob_too_large": 413,
    "range_not_satisfiable": 416,
    "script_not_found": 404, "run_not_found": 404, "capability_required": 409,
    "capability_denied": 403, "run_queue_full": 503,
}

Handler = Callable[..., Awaitable[Any]]


@attrs.frozen
class Route:
    path: str  # Quart syntax, e.g. /records/<id>
    method: str
    summary: str
    handler: Handler
    body: dict[str, Any] | None = None  # JSON schema of the request body
    query: tuple[str, ...] = ()
    command: bool = False


ROUTES: list[Route] = []


def api(path: str, method: str, summary: str, *, body: dict[str, Any] | None = None,
        query: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        ROUTES.append(Route(path, method, summary, fn, body, query, command=method == "POST"))
        return fn
    return deco


def obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        d["required"] = required
    return d


STR, INT, BOOL, OBJ, ARR = ({"type": "string"}, {"type": "integer"}, {"type": "boolean"},
                             {"type": "object"}, {"type": "array"})
ID = {"type": "string", "format": "uuid"}


class ApiError(OpenprodError):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.code = code


# --- helpers ----------------------------------------------------------------------------------

def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], *,
           required: bool = True) -> Any:
    if key not in body or body[key] is None:
        if required:
            raise ValidationError(f"missing {key!r}", field=key)
        return None
    v = body[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and bool not in _tuple(kind)):
        names = "/".join(k.__name__ for k in _tuple(kind))
        raise ValidationError(f"{key!r} must be {names}", field=key)
    return v


def _same_token(given: str, token: str) -> bool:
    """Constant-time comparison; bytes, since compare_digest refuses non-ASCII str (a 500)."""
    return secrets.compare_digest(given.encode(), token.encode())


def _tuple(k: type | tuple[type, ...]) -> tuple[type, ...]:
    return k if isinstance(k, tuple) else (k,)


def _id(x: str, what: str = "id") -> bytes:
    try:
        return ids.from_text(x)
    except (ValueError, TypeError, AttributeError):
        raise ValidationError(f"{what} {x!r} is not a valid id", field=what) from None


def _result(r: Result, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"seq": r.seq}
    if r.bundle_id is not None:
        out["bundle_id"] = ids.to_text(r.bundle_id)
    if r.staged:
        out["staged"] = True
    out.update(extra)
    return out


async def _command(node: Node, fn: Callable[[Workspace], Any], *,
                   overlays_changed: bool = False) -> Any:
    """Run a command on the writer. A command staged into the active overlay (or an overlay
    command, `overlays_changed`) publishes `overlays_changed {active, seq}` once it is done;
    one that changed rule proposals publishes `rule_proposals_changed {seq}`.
    Drift the command itself found (an overlay commit or redo re-checks it) is published as
    `overlay_drift`, even when the command was refused."""
    session = node.current
    drift: list[dict[str, Any]] = []

    proposals: list[int] = []

    def run(ws: Workspace) -> tuple[Any, bytes | None]:
        before = ws.overlay_events
        version = ws.proposals.version
        try:
            return fn(ws), ws.overlays.active
        finally:
            session.active_overlay = ws.overlays.active
            if ws.overlay_events is not before:
                drift.extend(ws.overlay_events)
            if ws.proposals.version != version:
                proposals.append(ws.proposals.version)

    try:
        result, active = await session.writer.call(run)
    finally:
        for ev in drift:
            node.hub.publish(drift_event(ev, session.writer.appended))
        if proposals:  # a rule proposed something, or a proposal was answered or withdrawn
            node.hub.publish({"type": "rule_proposals_changed",
                              "seq": session.writer.appended})
    if overlays_changed or (isinstance(result, Result) and result.staged):
        node.hub.publish({"type": "overlays_changed",
                          "active": ids.to_text(active) if active is not None else None,
                          "seq": session.writer.appended})
    return result


async def _query(node: Node, fn: Callable[[Views], Any]) -> Any:
    """Answer once the projections applied `after` (read-your-writes), in one snapshot."""
    await _after(node)
    return await node.current.reader.read(fn)


async def _after(node: Node) -> None:
    """Validate `after=` and wait for both projections (state and conflicts) to apply it."""
    session = node.current
    raw = request.args.get("after")
    if raw is None:
        return
    try:
        after = int(raw)
    except ValueError:
        raise ValidationError("after must be an integer seq", field="after") from None
    if after > session.writer.appended:
        raise ValidationError(f"seq {after} has not been appended here", field="after",
                              head=session.writer.appended)
    with trio.move_on_after(AFTER_TIMEOUT_S):
        await session.deriver.wait_applied(after)
        await session.conflicts.wait_applied(after)
    if session.deriver.applied < after or session.conflicts.applied < after:
        raise ApiError("timeout", "the projections are still catching up; retry")


def _overlay_view(node: Node) -> bool:
    """Serve record reads through the writer's overlay-aware view (an overlay is active and
    the caller did not ask for `canonical=1`)."""
    return node.current.active_overlay is not None and request.args.get(
        "canonical", "") not in ("1", "true")


# --- routes -----------------------------------------------------------------------------------

@api("/identity", "GET", "This device's identity")
async def get_identity(node: Node, body: Any) -> dict[str, Any]:
    ident = node.ident
    # without `--name` the identity is named after its key (spec 05 J1: the welcome screen
    # then asks for the name teammates will see)
    return {"actor_id": ident.actor.hex(), "display_name": ident.display_name,
            "device_name": ident.device_name,
            "name_chosen": ident.display_name != ident.actor.hex()[:8]}


@api("/identity/update", "POST", "Change the display or device name",
     body=obj(display_name=STR, device_name=STR))
async def update_identity(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    name = _field(body, "display_name", str, required=False)
    device = _field(body, "device_name", str, required=False)
    for v in (name, device):
        if v is not None and not 1 <= len(v.strip()) <= 100:
            raise ValidationError("names must be 1-100 characters")
    ident = node.ident
    if name is not None:
        ident.display_name = name.strip()
    if device is not None:
        ident.device_name = device.strip()
    node.home.save_identity(ident)
    r = await _command(node, lambda ws: ws.put_config("actor", ident.actor.hex(), {
        "display_name": ident.display_name, "device_name": ident.device_name}))
    return _result(r, display_name=ident.display_name, device_name=ident.device_name)


@api("/workspace/list", "GET", "Workspaces on this device")
async def list_workspaces(node: Node, body: Any) -> dict[str, Any]:
    cur = node.session.ws_id if node.session else None
    return {"workspaces": [{**w, "open": w["id"] == cur} for w in node.home.list_workspaces()]}


@api("/workspace/create", "POST", "Create a workspace and open it", body=obj(["name"], name=STR))
async def create_workspace(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    name = _field(body, "name", str)
    ws = await blocking.run_sync(node.home.create_workspace, node.ident, name)
    ws_id = ids.to_text(ws.ws)
    secret = ws.recovery_secret
    ws.close()
    await node.open_workspace(ws_id)
    # shown once (spec 03 §2 Create); a copy stays in <home>/secrets for the local owner
    return {"workspace_id": ws_id, "seq": node.current.writer.appended,
            "recovery_secret": lcmod.b32(secret) if secret else None}


@api("/workspace/fork", "POST", "Fork the open workspace into a new one you own (current "
     "records with the same ids, no history; never syncs with the source) and open it",
     body=obj(["name"], name=STR))
async def fork_workspace(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    name = _field(body, "name", str)
    if not name.strip() or len(name) > 200:
        raise ValidationError("a workspace needs a name of 1-200 characters", field="name")
    source = node.current

    def run(ws: Workspace) -> tuple[str, bytes | None, dict[str, Any]]:
        # on the writer: the source's `fork` record goes through the single writer, and the
        # fork's files are made (and closed) within the same call
        fork, report = node.home.fork_workspace(node.ident, source.ws_id, name, source=ws)
        try:
            return ids.to_text(fork.ws), fork.recovery_secret, report
        finally:
            fork.close()

    ws_id, secret, report = await source.writer.call(run, "fork")
    await node.open_workspace(ws_id)
    return {"id": ws_id, "workspace_id": ws_id, "name": name.strip(),
            "seq": node.current.writer.appended, "report": report,
            "recovery_secret": lcmod.b32(secret) if secret else None}


def _lifecycle_json(lc: lcmod.Lifecycle, me: bytes, now_ms: int) -> dict[str, Any]:
    return {"owner": lc.owner.hex() if lc.owner else None, "is_owner": lc.owner == me,
            "join_mode": lc.join_mode, "admitted": len(lc.admitted),
            "recoveries": len(lc.recoveries), "live_keys": len(lc.live_keys(now_ms))}


@api("/workspace/lifecycle", "GET", "Owner, join mode and access-key counts of the open "
     "workspace", query=("after",))
async def workspace_lifecycle(node: Node, body: Any) -> dict[str, Any]:
    await _after(node)
    s = node.current
    lc = await s.writer.call(lambda ws: ws.lifecycle())
    return _lifecycle_json(lc, node.ident.actor, s.ws.clock.now())


@api("/workspace/join-mode", "POST", "Set how people join: open (anyone on the LAN) or key "
     "(an access code); owner only", body=obj(["mode"], mode=STR))
async def set_join_mode(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    mode = _field(body, "mode", str)
    r = await _command(node, lambda ws: ws.set_join_mode(mode))
    node.current.sync.advert_changed.set()  # mDNS advertises the new mode
    return _result(r, join_mode=mode)


@api("/workspace/recover", "POST", "Become the owner with the workspace recovery secret; "
     "returns the new secret (shown once)", body=obj(["secret"], secret=STR))
async def recover_workspace(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    text = _field(body, "secret", str)
    try:
        secret = lcmod.unb32(text, 32)
    except ValueError:
        raise ValidationError("the recovery secret is 52 base32 characters", field="secret",
                              ) from None
    new_secret, r = await _command(node, lambda ws: ws.recover_ownership(secret))
    node.home.save_recovery(node.current.ws_id, new_secret)
    return _result(r, recovery_secret=lcmod.b32(new_secret))


@api("/access-keys/list", "GET", "Access keys of the open workspace (owner only)",
     query=("after",))
async def list_access_keys(node: Node, body: Any) -> dict[str, Any]:
    await _after(node)
    s = node.current
    lc = await s.writer.call(lambda ws: ws.lifecycle())
    if lc.owner != node.ident.actor:
        raise Forbidden("only the workspace owner sees its access keys")
    live = lc.live_keys(s.ws.clock.now())
    return {"keys": [{"key_id": kid, "code": k.get("code"), "expires_ms": k.get("expires_ms"),
                      "max_uses": k.get("max_uses"), "uses": lc.uses.get(kid, 0),
                      "live": kid in live, "revoked": kid in lc.revoked}
                     for kid, k in sorted(lc.keys.items())]}


@api("/access-keys/create", "POST", "Create a 6-character access code (owner only)",
     body=obj(expires_in_s=INT, max_uses=INT))
async def create_access_key(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    exp_s = _field(body, "expires_in_s", int, required=False)
    max_uses = _field(body, "max_uses", int, required=False)
    if exp_s is not None and exp_s <= 0:
        raise ValidationError("expires_in_s must be positive", field="expires_in_s")
    expires_ms = node.current.ws.clock.now() + exp_s * 1000 if exp_s is not None else None
    kid, code, r = await _command(
        node, lambda ws: ws.create_access_key(expires_ms=expires_ms, max_uses=max_uses))
    return _result(r, key_id=kid, code=code, expires_ms=expires_ms, max_uses=max_uses)


@api("/access-keys/revoke", "POST", "Revoke an access code (owner only)",
     body=obj(["key_id"], key_id=STR))
async def revoke_access_key(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    kid = _field(body, "key_id", str)
    r = await _command(node, lambda ws: ws.revoke_access_key(kid))
    return _result(r, key_id=kid)


@api("/workspace/open", "POST", "Open another workspace", body=obj(["id"], id=ID))
async def open_workspace(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    ws_id = ids.to_text(_id(_field(body, "id", str)))
    node.home.workspace_path(ws_id)
    await node.open_workspace(ws_id)
    return {"workspace_id": ws_id, "seq": node.current.writer.appended}


@api("/workspace/current", "GET", "The open workspace: id, name, seq, undo/redo availability")
async def current_workspace(node: Node, body: Any) -> dict[str, Any]:
    s = node.current
    name = next((w["name"] for w in node.home.list_workspaces() if w["id"] == s.ws_id), "")
    # read in the writer, which owns the undo stacks (while staging, undo acts on the overlay)
    undo_state, active = await s.writer.call(_undo_state)
    return {"id": s.ws_id, "name": name, "seq": s.writer.appended, **undo_state,
            "actor_id": node.ident.actor.hex(), "display_name": node.ident.display_name,
            "active_overlay": active,
            "conflicts_open": await s.conflict_reader.read(lambda c: c.count_open())}


def _undo_state(ws: Workspace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Whether undo/redo can act (on the active overlay if one is), and that overlay."""
    oid = ws.overlays.active
    if oid is None:
        st = ws.undo_stack
        return {"can_undo": bool(st.undo), "can_redo": bool(st.redo),
                # J13: the buttons' tooltips name the step ("Undo: set Cue 42 · Time")
                "undo_label": steps.describe(st.undo[-1].ops, ws.views) if st.undo else None,
                "redo_label": steps.describe(st.redo[-1].original.ops, ws.views)
                if st.redo else None}, None
    info = ws.overlays.get(oid)
    undo, redo = ws.overlays.undo.get(oid), ws.overlays.redo.get(oid)
    state = {"can_undo": bool(undo), "can_redo": bool(redo),
             "undo_label": steps.describe([r.payload for r in undo[-1]], ws.views)
             if undo else None,
             "redo_label": steps.describe([r.payload for r in redo[-1]], ws.views)
             if redo else None}
    return state, {"id": ids.to_text(oid), "name": info["name"], "changes": info["changes"],
                   **state}


@api("/workspace/state", "GET", "State hash and oplog digest at the current head")
async def workspace_state(node: Node, body: Any) -> dict[str, Any]:
    def digest(conn: Any) -> bytes:
        meta = dict(conn.execute("SELECT k, v FROM oplog_meta"))
        return digest_of(int(meta["count"]), int.from_bytes(bytes(meta["digest_sum"]), "big"))
    return dict(await node.current.deriver.state(digest))


# --- sync (spec 03 §4, §8; spec 05 J3, J15) --------------------------------------------------

_BAD_HOST_CHARS = set("/\\?#@[]: \t\r\n")


def _host_port(body: dict[str, Any], *, required: bool = True) -> tuple[str, int] | None:
    """A peer address `{host, port}`: a bare host name or IPv4 address and a TCP port."""
    host = body.get("host")
    port = body.get("port")
    if host is None and port is None and not required:
        return None
    if not isinstance(host, str) or not host.strip() or len(host.strip()) > 253:
        raise ValidationError("host must be a host name or IPv4 address of 1-253 characters",
                              field="host")
    host = host.strip()
    if "://" in host or _BAD_HOST_CHARS & set(host):
        raise ValidationError(f"host {host!r} must be a bare name or address (no scheme, port "
                              "or path: give the port separately)", field="host")
    if isinstance(port, str) and port.isdigit():
        port = int(port)  # from a DELETE query string
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValidationError("port must be an integer 1-65535", field="port")
    return host, port


def _manual_peers(node: Node) -> list[dict[str, Any]]:
    sync = node.current.sync
    out = []
    for key in sync.manual_peers:
        host, _, port = key.rpartition(":")
        d = sync.dialers.get(key) or {}
        peer = d.get("peer")
        linked = next((p for p in sync.links.values() if p.addr == key), None)
        out.append({"address": key, "host": host, "port": int(port) if port.isdigit() else None,
                    "state": "connected" if linked is not None else d.get("state", "stopped"),
                    "peer_id": linked.peer_id if linked is not None else (
                        getattr(peer, "peer_id", None)),
                    "last_code": d.get("last_code"), "retry_at_ms": d.get("retry_at_ms")})
    return out


def _sync_status(node: Node) -> dict[str, Any]:
    status = dict(node.current.sync.status())
    # a manual dialer whose dial is the live link shows as that link, not as a second peer
    linked = {p["addr"] for p in status["peers"] if p.get("state") == "connected"}
    status["peers"] = [p for p in status["peers"]
                       if p.get("state") == "connected" or p.get("addr") not in linked]
    net = node.net
    status.update({
        "listening": net is not None and status.get("port") is not None,
        "host": net.sync_host if net is not None else None,
        # where peers can reach our sync port: every LAN address, or the one we listen on
        "addresses": (lan_addresses() if net is None or net.sync_host in ("0.0.0.0", "")
                      else [net.sync_host]),
        "discovery": net is not None and net.discovery and node.discovery_error is None,
        "discovery_error": node.discovery_error,
        "manual_peers": _manual_peers(node),
    })
    return status


@api("/sync/status", "GET", "LAN sync status: port, links, catch-up progress, manual peers")
async def sync_status(node: Node, body: Any) -> dict[str, Any]:
    return _sync_status(node)


@api("/sync/peers", "GET", "Sync peers: connected links, dialers, last seen, manual peers")
async def sync_peers(node: Node, body: Any) -> dict[str, Any]:
    st = _sync_status(node)
    return {"peers": st["peers"], "manual_peers": st["manual_peers"],
            "last_seen": st["last_seen"], "discovered": st["discovered"]}


@api("/sync/peers", "POST", "Add a manual peer (its sync port); saved and redialed until removed",
     body=obj(["host", "port"], host=STR, port=INT))
async def add_sync_peer(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    hp = _host_port(body)
    assert hp is not None
    key = node.current.sync.add_manual_peer(*hp)
    return {"peer": key, "seq": node.current.writer.appended,
            "manual_peers": _manual_peers(node)}


@api("/sync/peers", "DELETE", "Forget a manual peer ({host, port} as a JSON body or query)",
     query=("host", "port"))
async def remove_sync_peer(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    hp = _host_port({**request.args.to_dict(), **body})
    assert hp is not None
    if not node.current.sync.remove_manual_peer(*hp):
        raise NotFound(f"{hp[0]}:{hp[1]} is not a manual peer of this workspace",
                       peer=f"{hp[0]}:{hp[1]}")
    return {"peer": f"{hp[0]}:{hp[1]}", "seq": node.current.writer.appended,
            "manual_peers": _manual_peers(node)}


@api("/sync/rejected", "GET", "Bundles refused by sync (newest first; no raw bytes)")
async def sync_rejected(node: Node, body: Any) -> dict[str, Any]:
    def rows(ws: Workspace) -> list[dict[str, Any]]:
        cur = ws.storage.conn.execute(
            "SELECT bundle_id, actor, code, reason, settled, received_at FROM rejected_bundles"
            " ORDER BY received_at DESC, rowid DESC LIMIT 1000")
        return [{"bundle_id": ids.to_text(bytes(b)) if b is not None and len(b) == 16
                 else (bytes(b).hex() if b is not None else None),
                 "actor": bytes(a).hex() if a is not None else None, "code": code,
                 "reason": reason, "settled": bool(settled), "received_at": at}
                for b, a, code, reason, settled, at in cur]
    return {"rejected": await node.current.writer.call(rows)}


@api("/workspace/discover", "GET", "Workspaces advertised on the LAN (mDNS): name, gh, peers; "
     "with host and port, the workspaces that engine serves (a `list` lookup)",
     query=("host", "port"))
async def discover_workspaces(node: Node, body: Any) -> dict[str, Any]:
    net = node.net
    ours = node.session.ws_id if node.session else None
    here = {x["id"] for x in node.home.list_workspaces()} | ({ours} if ours else set())
    if request.args.get("host") is not None or request.args.get("port") is not None:
        host, port = _host_port(dict(request.args), required=True) or ("", 0)
        try:
            found = await sync_lookup(host, port)
        except (OSError, trio.TooSlowError, ConnectionClosed, HandshakeError,
                ProtocolError) as exc:
            raise ApiError("peer_unreachable", f"no openprod engine answered at {host}:{port}",
                           reason=str(exc)[:200]) from None
        return {"discovery": False, "address": f"{host}:{port}",
                "workspaces": [{**w, "here": w["ws"] in here} for w in found]}
    return {"discovery": net is not None and net.discovery and node.discovery_error is None,
            "workspaces": [{**w, "here": w["ws"] in here} for w in node.discovered_workspaces()]}


@api("/workspace/join", "POST", "Join a workspace by id (from discovery, or at host:port) and "
     "open it; it turns active when its genesis arrives (workspace_joined)",
     body=obj(["id"], id=ID, name=STR, host=STR, port=INT, code=STR))
async def join_workspace(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    ws_id = ids.to_text(_id(_field(body, "id", str)))
    name = _field(body, "name", str, required=False)
    code = _field(body, "code", str, required=False)
    if code is not None:
        try:
            code = lcmod.normalize_code(code)
        except ValueError as exc:
            raise ValidationError(str(exc), field="code") from None
    hp = _host_port(body, required=False)
    seen = [w for w in node.discovered_workspaces() if w["ws"] == ws_id]
    if name is None and seen:
        name = seen[0]["name"]
    if len(seen) == 1:
        node.expected_gh[ws_id] = seen[0]["gh"]  # several: a collision, the handshake decides
    # a replica still arriving may be joined again (with another access code): it reopens
    arriving = node.home.read_meta(ws_id).get("state") == "joining" and (
        node.home.workspace_dir(ws_id) / "oplog.db").exists()
    if not arriving:
        ws = await blocking.run_sync(node.home.join_workspace, node.ident, ws_id, name or "")
        ws.close()
    if code is not None:  # kept in workspace.toml (0600) until the join completes
        node.home.write_meta(ws_id, access_code=code)
    await node.open_workspace(ws_id)
    if hp is not None:
        node.current.sync.add_manual_peer(*hp)
    return {"workspace_id": ws_id, "state": "joining", "seq": node.current.writer.appended,
            "manual_peers": _manual_peers(node)}


@api("/tables/create", "POST", "Create a table with typed fields",
     body=obj(["label"], label=STR, fields={**ARR, "items": obj(
         ["label"], label=STR, type=STR, crdt=BOOL, options=OBJ)}))
async def create_table(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    label = _field(body, "label", str)
    fields = _field(body, "fields", list, required=False) or []
    if not all(isinstance(f, dict) for f in fields):
        raise ValidationError("each field must be an object {label, type, options}")
    r = await _command(node, lambda ws: ws.create_table(label, fields))
    return _result(r, table=r.facet)


@api("/tables/add-field", "POST", "Add a field to a table",
     body=obj(["table", "label"], table=STR, label=STR, type=STR, crdt=BOOL, options=OBJ))
async def add_field(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    table, label = _field(body, "table", str), _field(body, "label", str)
    ftype = _field(body, "type", str, required=False) or "text"
    crdt = bool(_field(body, "crdt", bool, required=False))
    options = _field(body, "options", dict, required=False)
    r = await _command(node, lambda ws: ws.add_field(table, label, ftype, crdt_text=crdt,
                                                     options=options))
    return _result(r, table=r.facet)


@api("/tables/list", "GET", "Tables and their fields", query=("after",))
async def list_tables(node: Node, body: Any) -> dict[str, Any]:
    tables = await _query(node, lambda v: [t.to_json() for t in v.tables()])
    return {"tables": tables, "seq": node.current.deriver.applied}


@api("/records/create", "POST", "Create a record", body=obj(["table"], table=STR, values=OBJ))
async def create_record(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    table = _field(body, "table", str)
    values = _field(body, "values", dict, required=False) or {}
    r = await _command(node, lambda ws: ws.create_record(table, values))
    return _result(r, id=ids.to_text(r.id))


@api("/records/update", "POST",
     "Set fields of one or more records in one change (null clears a field)",
     body=obj(id=ID, table=STR, values=OBJ, updates={**ARR, "items": obj(
         ["id", "values"], id=ID, table=STR, values=OBJ)}))
async def update_records(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    if "updates" in body:
        raw = _field(body, "updates", list)
    else:
        raw = [{"id": body.get("id"), "values": body.get("values"), "table": body.get("table")}]
    updates = []
    for u in raw:
        if not isinstance(u, dict):
            raise ValidationError("each update must be {id, values, table?}")
        updates.append((_id(_field(u, "id", str)), _field(u, "values", dict),
                        _field(u, "table", str, required=False)))
    r = await _command(node, lambda ws: ws.update_records(updates))
    return _result(r)


@api("/records/delete", "POST", "Delete records (from one table, or entirely)",
     body=obj(["ids"], ids={**ARR, "items": ID}, table=STR))
async def delete_records(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    raw = _field(body, "ids", list)
    if not raw or not all(isinstance(x, str) for x in raw):
        raise ValidationError("ids must be a non-empty list of record ids")
    entities = [_id(x) for x in raw]
    table = _field(body, "table", str, required=False)
    r = await _command(node, lambda ws: ws.delete_records(entities, table))
    return _result(r)


@api("/records/list", "GET", "Records of a table (as the active overlay shows them unless "
     "canonical=1); ids=a,b,c answers only those (ids not in the table are left out)",
     query=("table", "after", "canonical", "ids"))
async def list_records(node: Node, body: Any) -> dict[str, Any]:
    table = request.args.get("table")
    if not table:
        raise ValidationError("missing query parameter 'table'", field="table")
    raw_ids = request.args.get("ids")
    # the UI re-fetches only the rows a `records_changed` event names (spec 05 §2)
    want = None if raw_ids is None else {_id(x, "ids") for x in raw_ids.split(",") if x}
    if _overlay_view(node):
        await _after(node)
        rows = await node.current.writer.call(lambda ws: ws.list_records(table))
        if want is not None:
            texts = {ids.to_text(e) for e in want}
            rows = [r for r in rows if r["id"] in texts]
        return {"records": rows, "seq": node.current.writer.appended}

    def read(v: Views) -> list[dict[str, Any]]:
        t = v.table(table)
        if want is None:
            return v.records(t)
        # the conditions of `record_ids`, checked per id (a few rows of a 10 000-row table)
        return [v.record(e, t) for e in sorted(want)
                if v.is_live(e) and v.is_attached(e, t.facet)]

    rows = await _query(node, read)
    return {"records": rows, "seq": node.current.deriver.applied}


@api("/records/<id>", "GET", "One record with the values of all its tables",
     query=("after", "canonical"))
async def get_record(node: Node, body: Any, id: str) -> dict[str, Any]:
    e = _id(id)
    if _overlay_view(node):
        await _after(node)
        return dict(await node.current.writer.call(lambda ws: ws.get_record(e)))
    return dict(await _query(node, lambda v: v.get_record(e)))


@api("/edge-types/create", "POST", "Define a relationship type",
     body=obj(["type", "label"], type=STR, label=STR, ordered=BOOL, props=OBJ))
async def create_edge_type(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    etype, label = _field(body, "type", str), _field(body, "label", str)
    ordered = bool(_field(body, "ordered", bool, required=False))
    props = _field(body, "props", dict, required=False)
    r = await _command(node, lambda ws: ws.define_edge_type(etype, label, ordered=ordered,
                                                            props=props))
    return _result(r)


@api("/edge-types/list", "GET", "Relationship types", query=("after",))
async def list_edge_types(node: Node, body: Any) -> dict[str, Any]:
    def read(v: Views) -> list[dict[str, Any]]:
        ends = modmod.edge_ends(v)
        return [{**et, **ends[et["type"]]} if et["type"] in ends else et
                for et in v.edge_types()]
    return {"edge_types": await _query(node, read)}


@api("/edges/create", "POST", "Link two records (ordered types take after/before)",
     body=obj(["type", "src", "dst"], type=STR, src=ID, dst=ID, props=OBJ, after=ID, before=ID))
async def create_edge(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    etype = _field(body, "type", str)
    src, dst = _id(_field(body, "src", str), "src"), _id(_field(body, "dst", str), "dst")
    props = _field(body, "props", dict, required=False)
    after = _opt_id(body, "after")
    before = _opt_id(body, "before")
    r = await _command(node, lambda ws: ws.create_edge(etype, src, dst, props=props,
                                                       after=after, before=before))
    return _result(r, id=ids.to_text(r.id))


def _opt_id(body: dict[str, Any], key: str) -> bytes | None:
    v = _field(body, key, str, required=False)
    return None if v is None else _id(v, key)


@api("/edges/delete", "POST", "Remove a link", body=obj(["id"], id=ID))
async def delete_edge(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    g = _id(_field(body, "id", str))
    return _result(await _command(node, lambda ws: ws.delete_edge(g)))


@api("/edges/reorder", "POST", "Move an ordered link between its new neighbours",
     body=obj(["id"], id=ID, after=ID, before=ID))
async def reorder_edge(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    g = _id(_field(body, "id", str))
    after, before = _opt_id(body, "after"), _opt_id(body, "before")
    return _result(await _command(node, lambda ws: ws.reorder_edge(g, after=after,
                                                                   before=before)))


@api("/edges/list", "GET", "Links of a record (or all), ordered ones in order",
     query=("entity", "type", "direction", "after"))
async def list_edges(node: Node, body: Any) -> dict[str, Any]:
    raw = request.args.get("entity")
    e = _id(raw, "entity") if raw else None
    etype = request.args.get("type")
    direction = request.args.get("direction", "both")
    return {"edges": await _query(node, lambda v: v.list_edges(e, etype, direction))}


async def _undo_redo(node: Node, which: str) -> dict[str, Any]:
    staging = node.current.active_overlay is not None  # undo/redo act on the overlay
    r = await _command(node, lambda ws: ws.undo() if which == "undo" else ws.redo(),
                       overlays_changed=staging)
    out = dict(r.to_json())
    out["seq"] = r.seq if r.seq is not None else node.current.writer.appended
    return out


@api("/undo", "POST", "Undo this user's last change (applied, skipped or empty)", body=obj())
async def undo(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    return await _undo_redo(node, "undo")


@api("/redo", "POST", "Redo the last undone change", body=obj())
async def redo(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    return await _undo_redo(node, "redo")


# --- conflicts (spec 02 §1) -------------------------------------------------------------------

@api("/conflicts/list", "GET", "Conflicts (open, or all with status=all), with their tips",
     query=("status", "after"))
async def list_conflicts(node: Node, body: Any) -> dict[str, Any]:
    status = request.args.get("status", "open")
    if status not in ("open", "all"):
        raise ValidationError("status must be 'open' or 'all'", field="status")
    await _after(node)
    s = node.current
    seq = s.conflicts.applied
    rows, count = await s.conflict_reader.read(lambda c: (c.list(status), c.count_open()))
    return {"conflicts": rows, "count_open": count, "seq": seq}


@api("/conflicts/resolve", "POST",
     "Resolve an open conflict: `value` (any JSON value of the field's type; null or absent "
     "clears) for a field conflict, or choice restore/keep_deleted for a delete conflict",
     body=obj(["conflict_id"], conflict_id=ID, choice=STR, expected_tips={**ARR, "items": ID}))
async def resolve_conflict(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    cid = _id(_field(body, "conflict_id", str), "conflict_id")
    value = body.get("value")
    choice = _field(body, "choice", str, required=False)
    if choice is not None and choice not in ("restore", "keep_deleted"):
        raise ValidationError("choice must be 'restore' or 'keep_deleted'", field="choice")
    raw_tips = _field(body, "expected_tips", list, required=False)
    tips = None
    if raw_tips is not None:
        if not all(isinstance(t, str) for t in raw_tips):
            raise ValidationError("expected_tips must be a list of op ids", field="expected_tips")
        tips = [_id(t, "expected_tips") for t in raw_tips]
    r = await _command(node, lambda ws: ws.resolve_conflict(cid, value, choice=choice,
                                                            expected_tips=tips))
    return _result(r)


# --- overlays (spec 02 §2) --------------------------------------------------------------------

def _overlay_json(info: dict[str, Any]) -> dict[str, Any]:
    return {"id": ids.to_text(info["id"]), "name": info["name"], "source": info["source"],
            "status": info["status"], "created_at": info["created_at"],
            "changes": info["changes"], "drifted": info["drifted"]}


@api("/overlays/list", "GET", "Overlays (staging areas) and which one is active",
     query=("after",))
async def list_overlays(node: Node, body: Any) -> dict[str, Any]:
    await _after(node)

    def fn(ws: Workspace) -> dict[str, Any]:
        active = ws.overlays.active
        return {"overlays": [{**_overlay_json(o), **ws.overlays.record_counts(o["id"])}
                             for o in ws.list_overlays()],
                "active": ids.to_text(active) if active is not None else None}
    return dict(await _command(node, fn))


@api("/overlays/create", "POST", "Create an overlay and make it active (the current one is "
     "stashed)", body=obj(["name"], name=STR))
async def create_overlay(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    name = _field(body, "name", str)
    oid = await _command(node, lambda ws: ws.create_overlay(name), overlays_changed=True)
    return {"overlay_id": ids.to_text(oid), "seq": node.current.writer.appended}


def _oid(body: dict[str, Any], key: str = "id") -> bytes:
    return _id(_field(body, key, str), key)


@api("/overlays/activate", "POST", "Make an overlay active (stash_current: true stashes the "
     "active one; without it an active overlay is overlay_active)",
     body=obj(["id"], id=ID, stash_current=BOOL))
async def activate_overlay(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    oid = _oid(body)
    stash = bool(_field(body, "stash_current", bool, required=False))

    def fn(ws: Workspace) -> None:
        ws.overlays.get(oid)
        current = ws.overlays.active
        if current is not None and current != oid and not stash:
            raise ApiError("overlay_active", "another overlay is active; stash it first (or "
                           "pass stash_current: true)", active=ids.to_text(current))
        ws.activate_overlay(oid)
    await _command(node, fn, overlays_changed=True)
    return {"seq": node.current.writer.appended, "active": ids.to_text(oid)}


@api("/overlays/stash", "POST", "Stash an overlay (nothing is active then)",
     body=obj(["id"], id=ID))
async def stash_overlay(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    oid = _oid(body)
    await _command(node, lambda ws: ws.stash_overlay(oid), overlays_changed=True)
    return {"seq": node.current.writer.appended}


@api("/overlays/commit", "POST", "Commit an overlay's changes as one change (409 "
     "unresolved_drift while a field drifted)", body=obj(["id"], id=ID))
async def commit_overlay(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    oid = _oid(body)
    bid = await _command(node, lambda ws: ws.commit_overlay(oid), overlays_changed=True)
    return {"seq": node.current.writer.appended,
            "bundle_id": ids.to_text(bid) if bid is not None else None}


@api("/overlays/discard", "POST", "Throw an overlay and its staged changes away",
     body=obj(["id"], id=ID))
async def discard_overlay(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    oid = _oid(body)
    await _command(node, lambda ws: ws.discard_overlay(oid), overlays_changed=True)
    return {"seq": node.current.writer.appended}


@api("/overlays/drop-change", "POST", "Remove one staged change (local_op_id) or every staged "
     "write to one field (entity_id + field)",
     body=obj(["overlay_id"], overlay_id=ID, local_op_id=ID, entity_id=ID, field=STR))
async def drop_change(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    oid = _oid(body, "overlay_id")
    raw_lid = _field(body, "local_op_id", str, required=False)
    raw_e = _field(body, "entity_id", str, required=False)
    raw_field = _field(body, "field", str, required=False)
    if raw_lid is not None:
        lid = _id(raw_lid, "local_op_id")

        def fn(ws: Workspace) -> list[bytes]:
            return ws.knockout(oid, lid)
    else:
        if raw_e is None or raw_field is None:
            raise ValidationError("name the change: local_op_id, or entity_id and field",
                                  field="local_op_id")
        e, field = _id(raw_e, "entity_id"), raw_field

        def fn(ws: Workspace) -> list[bytes]:
            gone = ws.knockout_field(oid, e, field)
            if not gone:
                raise NotFound(f"no staged change to field {field!r} of record "
                               f"{ids.to_text(e)}", entity_id=ids.to_text(e), field=field)
            return gone
    dropped = await _command(node, fn, overlays_changed=True)
    return {"seq": node.current.writer.appended, "dropped": [ids.to_text(x) for x in dropped]}


@api("/overlays/resolve-drift", "POST", "Answer a drifted field: keep_mine or use_canonical",
     body=obj(["overlay_id", "entity_id", "field", "choice"], overlay_id=ID, entity_id=ID,
              field=STR, choice=STR))
async def resolve_drift(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    oid = _oid(body, "overlay_id")
    e = _id(_field(body, "entity_id", str), "entity_id")
    field = _field(body, "field", str)
    choice = _field(body, "choice", str)
    if choice not in ("keep_mine", "use_canonical"):
        raise ValidationError("choice must be 'keep_mine' or 'use_canonical'", field="choice")
    await _command(node, lambda ws: ws.resolve_drift(oid, e, field, choice),
                   overlays_changed=True)
    return {"seq": node.current.writer.appended}


MAX_CHANGES = 100_000


@api("/overlays/<id>/changes", "GET", "An overlay's staged changes (the first `limit`; `total` "
     "counts them all) and its drifted fields", query=("after", "limit"))
async def overlay_changes(node: Node, body: Any, id: str) -> dict[str, Any]:
    oid = _id(id)
    raw = request.args.get("limit")
    limit = MAX_CHANGES
    if raw not in (None, ""):
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_CHANGES:
            raise ValidationError(f"limit must be an integer 1-{MAX_CHANGES}", field="limit")
    await _after(node)
    return dict(await _command(node, lambda ws: _changes(ws, oid, limit)))


def _changes(ws: Workspace, oid: bytes, limit: int = MAX_CHANGES) -> dict[str, Any]:
    ws.overlays.get(oid)
    views = ws.views
    out = []
    rows = ws.overlays.rows(oid)
    for r in rows[:limit]:
        p = r.payload
        facet = getattr(p, "facet", None)
        name = getattr(p, "field", None)
        label = None
        if facet is not None and name is not None:
            f = views.field_def(facet, name)
            label = f.label if f is not None else None
        old = new = None
        if r.skey is not None:
            old = _read(views, codec.decode(r.base_value)) if r.base_value is not None else None
            new = _read(views, getattr(p, "value", None)) if p.t == "SetField" else None
        out.append({"local_op_id": ids.to_text(r.local_op_id), "op": p.t,
                    "entity_id": ids.to_text(r.entity_id) if r.entity_id is not None else None,
                    "table": facet, "field_name": name, "field_label": label,
                    "old_value": old, "new_value": new, "drifted": r.drifted,
                    "drift_kind": r.drift_kind})
    return {"changes": out, "total": len(rows), "drift": ws.list_drift(oid)}


# --- the app ----------------------------------------------------------------------------------

def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _json_safe(x: Any) -> Any:
    if isinstance(x, bytes):
        return ids.to_text(x) if len(x) == 16 else x.hex()
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [_json_safe(v) for v in x]
    return x


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(_json_safe(data)), status=status,
                    content_type="application/json")


def openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in ROUTES:
        oa_path = r.path.replace("<", "{").replace(">", "}")
        op: dict[str, Any] = {
            "summary": r.summary, "operationId": r.handler.__name__,
            "security": [{"bearer": []}, {"cookie": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": OBJ}}},
                "4XX": {"description": "The caller's mistake: {error: {code, message, details}}"},
            },
        }
        params: list[dict[str, Any]] = [
            {"name": q, "in": "query", "schema": INT if q == "after" else STR} for q in r.query
        ]
        params += [{"name": p.strip("<>"), "in": "path", "required": True, "schema": STR}
                   for p in r.path.split("/") if p.startswith("<")]
        if params:
            op["parameters"] = params
        if r.method == "POST":
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": r.body or obj()}}}
        paths.setdefault(oa_path, {})[r.method.lower()] = op
    paths["/"] = {"get": {"summary": "The web UI (trades ?token= for a session cookie)",
                          "security": [], "responses": {"200": {"description": "HTML"}}}}
    paths["/api/openapi.json"] = {"get": {"summary": "This document", "security": [],
                                          "responses": {"200": {"description": "OpenAPI"}}}}
    paths["/static/{path}"] = {"get": {"summary": "Web UI assets", "security": [],
                                       "parameters": [{"name": "path", "in": "path",
                                                       "required": True, "schema": STR}],
                                       "responses": {"200": {"description": "a file"}}}}
    paths["/m/{id}/{version}/views/{file}"] = {"get": {
        "summary": "A file of an installed module's views (read-only, spec 04 §4)",
        "security": [], "parameters": [{"name": n, "in": "path", "required": True,
                                        "schema": STR} for n in ("id", "version", "file")],
        "responses": {"200": {"description": "a file"}}}}
    paths.update(api_blobs.openapi_paths())  # upload, download, thumbnail (not JSON)
    paths.update(api_csv.openapi_paths())  # CSV upload and export (not JSON)
    return {
        "openapi": "3.1.0",
        "info": {"title": "openprod engine API", "version": "1",
                 "description": "RPC-style JSON. Commands return {seq}; queries accept "
                                "after=<seq>. WebSocket /events streams change events."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": COOKIE}}},
        "paths": paths,
        "x-websocket": {"/events": "events: records_changed {table, entity_ids, seq}, "
                        "tables_changed {seq}, resync, workspace_opened, conflict_opened / "
                        "conflict_updated / conflict_resolved / resolution_rejected "
                        "{conflict_id, entity_id, field, reopened?, seq}, overlay_drift "
                        "{overlay_id, fields}, overlays_changed {active, seq}, sync and "
                        "workspace events of spec 03 §8 (peer_discovered, peer_lost, "
                        "sync_peer_connected, sync_peer_disconnected, sync_progress, "
                        "sync_caught_up, sync_converged, sync_divergence, sync_rejected, "
                        "workspace_joined, …); "
                        "?since=<event_id> replays what a reconnecting client missed"},
    }


def create_app(node: Node) -> QuartTrio:
    app = QuartTrio("openprod", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def allowed_hosts() -> set[str]:
        return {f"127.0.0.1:{node.port}", f"localhost:{node.port}"}

    def check_origin(headers: Any, host: str, view_file: bool = False) -> None:
        if host not in allowed_hosts():
            raise ApiError("forbidden", f"Host {host!r} is not this engine",
                           allowed=sorted(allowed_hosts()))
        origin = headers.get("Origin")
        # a module view's sandboxed iframe (no allow-same-origin) has the opaque origin "null"
        # and fetches its entry as a CORS module script: accept "null" only for GET of the
        # static view files (no token, no data; see serve_view), never for the API itself
        if view_file and origin == "null":
            return
        if origin is not None and origin not in {f"http://{h}" for h in allowed_hosts()}:
            raise ApiError("forbidden", f"Origin {origin!r} is not this engine")

    # the page's cookie carries this home's session secret (kept across launches, so an open
    # page survives an engine restart); local tools send this launch's token as a Bearer header
    # (read on first use: create_app(None) only lists the routes)
    session = functools.cache(lambda: node.home.session_secret())

    def authorized(headers: Any, cookies: Any) -> bool:
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return _same_token(auth[7:], node.token)
        given = cookies.get(COOKIE, "")
        # an older page's cookie may still hold this launch's token
        return bool(given) and (_same_token(given, session()) or _same_token(given, node.token))

    open_paths = ("/", "/api/openapi.json")

    @app.before_request
    async def guard() -> None:
        check_origin(request.headers, request.headers.get("Host", ""),
                     view_file=request.method == "GET" and request.path.startswith("/m/"))
        # module views load into sandboxed iframes, which cannot present the token; they
        # are the read-only files of packages this user installed (Host is still checked)
        if request.path in open_paths or request.path.startswith(("/static/", "/m/")):
            return
        if not authorized(request.headers, request.cookies):
            raise ApiError("unauthorized", "missing or wrong launch token; open the URL that "
                           "`openprod serve` printed")

    @app.errorhandler(OpenprodError)
    async def domain_error(exc: OpenprodError) -> Response:
        status = STATUS.get(exc.code, 400)
        return json_response(error_body(exc.code, exc.message, exc.details), status)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.code or 400, "bad_request")
        msg = {413: f"request body exceeds {MAX_BODY} bytes"}.get(exc.code or 400,
                                                                  exc.description or "")
        return json_response(error_body(code, msg), exc.code or 400)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.path)
        return json_response(error_body("internal", "internal error; see the engine log"), 500)

    @app.route("/")
    async def index() -> Any:
        token = request.args.get("token")
        if token is not None:
            if not _same_token(token, node.token):
                raise ApiError("unauthorized", "this link's token is not valid for this "
                               "launch of the engine")
            resp = redirect("/", 303)
            resp.set_cookie(COOKIE, session(), httponly=True, samesite="Strict")
            return resp
        return await send_from_directory(WEB_DIR, "index.html")

    @app.route("/static/<path:path>")
    async def static_file(path: str) -> Any:
        return await send_from_directory(WEB_DIR, path)

    @app.route("/m/<id>/<version>/views/<path:file>")
    async def module_view(id: str, version: str, file: str) -> Response:
        return await serve_view(node, id, version, file)

    @app.route("/api/openapi.json")
    async def openapi_doc() -> Response:
        return json_response(openapi())

    for r in ROUTES:
        app.add_url_rule(r.path, endpoint=r.handler.__name__, view_func=_wrap(node, r),
                         methods=[r.method])
    api_blobs.install(app, node)  # streamed upload, file downloads and thumbnails
    api_csv.install(app, node)  # streamed CSV upload, CSV export (after api_blobs)

    @app.websocket("/events")
    async def events() -> None:
        try:
            check_origin(websocket.headers, websocket.headers.get("Host", ""))
        except ApiError:
            await websocket.close(1008)
            return
        if not authorized(websocket.headers, websocket.cookies) and not (
            websocket.args.get("token") and _same_token(websocket.args.get("token", ""),
                                                        node.token)
        ):
            await websocket.close(1008)
            return
        await websocket.accept()
        since_raw = websocket.args.get("since")
        since = int(since_raw) if since_raw and since_raw.isdigit() else None
        sub, backlog = node.hub.subscribe(since)
        try:
            await websocket.send(json.dumps({"type": "hello", "event_id": node.hub.last_id,
                                             "workspace_id": node.info()["workspace_id"]}))
            for ev in backlog:
                await websocket.send(json.dumps(ev))
            async with trio.open_nursery() as n:
                n.start_soon(_drain_client, n.cancel_scope)

                async def close_on_shutdown() -> None:
                    await node.shutdown.wait()
                    await websocket.close(1001)
                    n.cancel_scope.cancel()
                n.start_soon(close_on_shutdown)
                async for ev in sub.recv:
                    await websocket.send(json.dumps(ev))
                if sub.overflowed:
                    await websocket.send(json.dumps({"type": "resync",
                                                     "event_id": node.hub.last_id}))
                n.cancel_scope.cancel()
        finally:
            sub.close()

    return app


async def _drain_client(scope: trio.CancelScope) -> None:
    """Read (and ignore) client frames; when the client goes away, end the handler."""
    try:
        while True:
            await websocket.receive()
    finally:
        scope.cancel()


def _not_json(name: str) -> Any:
    """NaN and ±Infinity are not JSON (Python's parser accepts them by default)."""
    raise ValueError(f"{name} is not JSON")


def _wrap(node: Node, r: Route) -> Callable[..., Awaitable[Response]]:
    async def view(**params: Any) -> Response:
        if node.session is None:  # another workspace is being opened: answer from it
            with trio.move_on_after(AFTER_TIMEOUT_S):
                await node.settled.wait()
        body: Any = None
        if r.method in ("POST", "DELETE"):
            raw = await request.get_data()
            try:
                body = json.loads(raw or b"{}", parse_constant=_not_json)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise ApiError("malformed_json", "the request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise ValidationError("the request body must be a JSON object")
        return json_response(await r.handler(node, body, **params))
    view.__name__ = r.handler.__name__
    return view


async def serve_api(node: Node, host: str, port: int, *,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    app = create_app(node)
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    # Hypercorn's own "Running on http://…" line lacks the token; the CLI prints the real link.
    config.loglevel = "WARNING"
    config.graceful_timeout = 5
    # ASGI messages Hypercorn queues per connection before it stops reading the socket: reads
    # are up to 1 MiB (api_blobs.RECV_SIZE), so its default of 10 would buffer 10 MiB of an upload
    config.max_app_queue_size = 2

    async def started(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
                      ) -> None:
        await serve(app, config, shutdown_trigger=node.shutdown.wait, task_status=task_status)

    async with trio.open_nursery() as n:
        binds: list[str] = await n.start(started)
        url = binds[0]
        node.port = int(url.rsplit(":", 1)[1])
        task_status.started([url.replace("0.0.0.0", "127.0.0.1")])


# The module and field-mapping routes live in their own module; importing it registers them in
# ROUTES (it imports this module's helpers, hence the import at the end).
from actors import (  # noqa: E402
    api_blobs,
    api_csv,
    api_history,
    api_modules,
    api_rules,
    api_scripts,
    api_views,
)
from actors.api_modules import serve_view  # noqa: E402

__all__ = ["ROUTES", "NotFound", "api_blobs", "api_csv", "api_history", "api_modules",
           "api_rules", "api_scripts", "api_views", "create_app", "openapi", "serve_api"]
