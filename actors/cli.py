"""The `openprod` command: serve, init, identity, verify."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from actors.home import Home, default_home
from openprod.core.errors import OpenprodError

DEFAULT_PORT = 7420
log = logging.getLogger("openprod")


def _home(args: argparse.Namespace) -> Home:
    home = Home(Path(args.data) if args.data else default_home())
    home.ensure()
    return home


def cmd_serve(args: argparse.Namespace) -> int:
    from actors.node import Node

    home = _home(args)
    home.lock()
    try:
        ident = home.identity(args.name or "")
        ws_id = args.workspace or home.default_workspace(ident)
        home.workspace_path(ws_id)
        token = home.new_token()
        node = Node(home, ident, token)

        async def main() -> None:
            async with trio.open_nursery() as n:
                url = await n.start(node.run, ws_id, args.host, args.port)
                print(f"openprod is running — open {url}/?token={token}", flush=True)
                print(f"workspace {ws_id} · data in {home.path} · Ctrl+C stops", flush=True)

        try:
            trio.run(main)
        except (OSError, ExceptionGroup) as exc:
            if _addr_in_use(exc):
                print(f"openprod: port {args.port} is already in use; choose another with "
                      "--port N (or --port 0 for any free port)", file=sys.stderr)
                return 2
            raise
        print("openprod stopped; all changes are saved", flush=True)
        return 0
    finally:
        home.unlock()


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
    s.set_defaults(fn=cmd_serve)

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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return int(args.fn(args))
    except OpenprodError as exc:
        print(f"openprod: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
