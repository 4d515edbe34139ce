"""The `openprod` command: serve, init, identity, verify, blobs verify, connect.

`serve` records where its API listens in `<home>/engine.json` (removed on exit), so that other
commands on this machine (`connect`) can reach the running engine with `<home>/api-token`.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from actors.home import Home, default_home
from openprod.core.errors import OpenprodError

DEFAULT_PORT = 7420
DEFAULT_SYNC_PORT = 47820  # = actors.node.DEFAULT_SYNC_PORT (not imported: keeps --help fast)
ENGINE_FILE = "engine.json"
log = logging.getLogger("openprod")


def _home(args: argparse.Namespace) -> Home:
    home = Home(Path(args.data) if args.data else default_home())
    home.ensure()
    return home


def cmd_serve(args: argparse.Namespace) -> int:
    from actors.node import NetConfig, Node, SyncPortInUse

    if not 0 <= args.sync_port <= 65535:
        print("openprod: --sync-port must be 0-65535", file=sys.stderr)
        return 2
    home = _home(args)
    home.lock()
    engine_file = home.path / ENGINE_FILE
    try:
        ident = home.identity(args.name or "")
        ws_id = args.workspace or home.default_workspace(ident)
        home.workspace_path(ws_id)
        token = home.new_token()
        net = NetConfig(sync_host=args.sync_host, sync_port=args.sync_port,
                        discovery=not args.no_discovery, interfaces=args.mdns_interface or None)
        node = Node(home, ident, token, net=net)

        async def main() -> None:
            async with trio.open_nursery() as n:
                url = await n.start(node.run, ws_id, args.host, args.port)
                _write_engine_file(engine_file, url)
                print(f"openprod is running — open {url}/?token={token}", flush=True)
                discovery = ("mDNS discovery off" if args.no_discovery else
                             "mDNS discovery on" + (f" ({', '.join(args.mdns_interface)})"
                                                    if args.mdns_interface else ""))
                print(f"sync port {node.current.sync.port} on {args.sync_host} · {discovery}",
                      flush=True)
                print(f"workspace {ws_id} · data in {home.path} · Ctrl+C stops", flush=True)

        try:
            trio.run(main)
        except (OSError, ExceptionGroup, SyncPortInUse) as exc:
            in_use = _find(exc, SyncPortInUse)
            if in_use is not None:
                print(f"openprod: {in_use.message}", file=sys.stderr)
                return 2
            if _addr_in_use(exc):
                print(f"openprod: port {args.port} is already in use; choose another with "
                      "--port N (or --port 0 for any free port)", file=sys.stderr)
                return 2
            raise
        print("openprod stopped; all changes are saved", flush=True)
        return 0
    finally:
        engine_file.unlink(missing_ok=True)
        home.unlock()


def _write_engine_file(path: Path, url: str) -> None:
    """Where this engine's API listens, for `openprod connect` and other local tools (0600)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api_url": url, "pid": os.getpid()}, f)
    os.replace(tmp, path)


def _find(exc: BaseException, kind: type[Exception]) -> Any:
    """The first `kind` inside (nested) exception groups, or None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            found = _find(e, kind)
            if found is not None:
                return found
    return None


def _addr_in_use(exc: BaseException) -> bool:
    """The bind failed because the port is taken (trio wraps it in exception groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_addr_in_use(e) for e in exc.exceptions)
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def cmd_init(args: argparse.Namespace) -> int:
    home = _home(args)
    home.lock()
    try:
        ident = home.identity(args.name or "")
        ws = home.create_workspace(ident, args.workspace_name)
        from openprod.core import ids

        print(f"created workspace {ids.to_text(ws.ws)} ({args.workspace_name!r}) in {home.path}")
        ws.close()
        return 0
    finally:
        home.unlock()


def cmd_identity(args: argparse.Namespace) -> int:
    home = _home(args)
    ident = home.identity()
    print(f"actor id:     {ident.actor.hex()}")
    print(f"display name: {ident.display_name}")
    print(f"device name:  {ident.device_name}")
    print(f"key file:     {home.path / 'identity.json'}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from openprod.engine.workspace import Workspace

    home = _home(args)
    home.lock()
    try:
        ident = home.identity()
        ws_id = args.workspace or home.last() or home.default_workspace(ident)
        ws = Workspace.open(home.workspace_path(ws_id), ident)
        try:
            report = ws.verify()
        finally:
            ws.close()
        status = "ok" if report["ok"] else "MISMATCH"
        print(f"workspace {ws_id}: {status}")
        print(f"  state hash      {report['state_hash']}")
        print(f"  replayed        {report['replayed_state_hash']}")
        print(f"  oplog digest    {report['oplog_digest']}")
        return 0 if report["ok"] else 1
    finally:
        home.unlock()


def cmd_blobs_verify(args: argparse.Namespace) -> int:
    """Re-hash every file of a workspace's blob store (spec 03 §7 Housekeeping)."""
    from openprod.engine.blobs import BlobStore

    home = _home(args)
    home.lock()
    try:
        ident = home.identity()
        ws_id = args.workspace or home.last() or home.default_workspace(ident)
        store = BlobStore.for_workspace(home.workspace_path(ws_id))
        try:
            report = store.verify()
        finally:
            store.close()
        print(f"workspace {ws_id}: {report['checked']} files checked, {report['ok']} ok, "
              f"{len(report['corrupt'])} corrupt, {len(report['missing'])} missing")
        for h in report["corrupt"]:
            print(f"  corrupt, removed: {h}")
        for h in report["missing"]:
            print(f"  missing:          {h}")
        return 1 if report["corrupt"] else 0
    finally:
        home.unlock()


class CliError(Exception):
    """A failure of a client command, printed as `openprod: <message>` (exit 2)."""


def _engine_call(home: Home, method: str, path: str, body: Any = None) -> Any:
    """Call the engine running on `home` (found through engine.json and api-token)."""
    no_engine = (f"no openprod engine is running on {home.path}; start one with "
                 f"`openprod serve --data {home.path}`")
    try:
        url = str(json.loads((home.path / ENGINE_FILE).read_text())["api_url"])
        token = home.read_token()
    except (OSError, ValueError, KeyError, TypeError):
        raise CliError(no_engine) from None
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())["error"]
            msg = str(err["message"])
        except (ValueError, KeyError, TypeError):
            msg = f"the engine answered {exc.code}"
        raise CliError(msg) from None
    except (urllib.error.URLError, OSError):
        raise CliError(no_engine) from None


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CliError(f"{text!r} is not HOST:PORT (e.g. 192.168.1.20:{DEFAULT_SYNC_PORT})")
    return host, int(port)


def cmd_connect(args: argparse.Namespace) -> int:
    """Add a manual peer to the running engine's open workspace (POST /sync/peers)."""
    host, port = parse_host_port(args.address)
    home = _home(args)
    method = "DELETE" if args.remove else "POST"
    r = _engine_call(home, method, "/sync/peers", {"host": host, "port": port})
    ws = _engine_call(home, "GET", "/workspace/current")
    if args.remove:
        print(f"removed peer {host}:{port} from workspace {ws['name']!r}")
    else:
        print(f"added peer {host}:{port} to workspace {ws['name']!r}; it is dialed (with "
              "backoff) until removed with `openprod connect --remove`")
    peers = r.get("manual_peers", [])
    print("manual peers: " + (", ".join(p["address"] for p in peers) if peers else "none"))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openprod", description="Local-first collaborative workspace for production teams.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", metavar="DIR",
                        help="data directory (default: $OPENPROD_HOME or ~/.local/share/openprod)")

    s = sub.add_parser("serve", help="start the engine and its web UI",
                       description="Start the engine on a workspace and print the UI's URL.")
    common(s)
    s.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"HTTP port on 127.0.0.1 (default {DEFAULT_PORT}; 0 = any free port)")
    s.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    s.add_argument("--workspace", metavar="ID", help="workspace to open (default: the last one)")
    s.add_argument("--name", help="your display name (first start only)")
    s.add_argument("--sync-port", type=int, default=DEFAULT_SYNC_PORT, metavar="N",
                   help=f"LAN sync port peers connect to (default {DEFAULT_SYNC_PORT}; "
                        "0 = any free port)")
    s.add_argument("--sync-host", default="0.0.0.0", metavar="ADDR",
                   help="address the sync port listens on (default 0.0.0.0: every interface)")
    s.add_argument("--no-discovery", action="store_true",
                   help="do not advertise or browse over mDNS (use manual peers)")
    s.add_argument("--mdns-interface", action="append", metavar="ADDR",
                   help="advertise and browse only on the interface with this IPv4 address "
                        "(repeatable; e.g. 127.0.0.1; default: every interface)")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("connect", help="add a peer by address to the running engine",
                       description="Tell the running engine to sync its open workspace with the "
                                   "peer at HOST:PORT (its sync port), e.g. when multicast is "
                                   "blocked. The peer is remembered and redialed until removed.")
    common(s)
    s.add_argument("address", metavar="HOST:PORT")
    s.add_argument("--remove", action="store_true", help="forget this manual peer instead")
    s.set_defaults(fn=cmd_connect)

    s = sub.add_parser("init", help="create the data directory, identity and a workspace")
    common(s)
    s.add_argument("--workspace-name", default="My Workspace", metavar="NAME")
    s.add_argument("--name", help="your display name")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("identity", help="show this device's identity")
    common(s)
    s.set_defaults(fn=cmd_identity)

    s = sub.add_parser("verify", help="replay the oplog and compare with the stored state")
    common(s)
    s.add_argument("--workspace", metavar="ID")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("blobs", help="check the stored files (attachments)")
    actions = s.add_subparsers(dest="blobs_command", required=True, metavar="ACTION")
    v = actions.add_parser("verify", help="re-hash every stored file; remove corrupt ones",
                           description="Re-hash every file in the workspace's blob store. A "
                                       "file whose bytes no longer match its hash is removed "
                                       "(and fetched again from a peer when next needed). "
                                       "Exit status 1 when any was corrupt. Stop the engine "
                                       "first.")
    common(v)
    v.add_argument("--workspace", metavar="ID")
    v.set_defaults(fn=cmd_blobs_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return int(args.fn(args))
    except OpenprodError as exc:
        print(f"openprod: {exc.message}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"openprod: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
