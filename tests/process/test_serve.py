"""`openprod` as a user runs it: real processes, real sockets on 127.0.0.1, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from tests.process.conftest import StartServe, cli_command, run_cli

HEX64 = re.compile(r"[0-9a-f]{64}")


async def _next_event(ws: object, kind: str) -> dict[str, object]:
    """The next event of `kind` on a trio-websocket connection (bounded)."""
    with trio.fail_after(15):
        while True:
            msg = json.loads(await ws.get_message())  # type: ignore[attr-defined]
            if msg["type"] == kind:
                return dict(msg)


async def _closed_code(ws: object) -> int:
    with trio.fail_after(15):
        try:
            while True:
                await ws.get_message()  # type: ignore[attr-defined]
        except ConnectionClosed as exc:
            assert exc.reason is not None
            return int(exc.reason.code)


async def test_serve_end_to_end(serve: StartServe, tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = await serve(data)
    # the printed link carries this launch's token, also written 0600 to <data>/api-token
    assert s.token == (data / "api-token").read_text().strip()
    assert stat.S_IMODE((data / "api-token").stat().st_mode) == 0o600
    assert f"data in {data}" in s.stdout

    ident = await s.ok("GET", "/identity")
    assert HEX64.fullmatch(ident["actor_id"])
    assert (await s.call("GET", "/identity", auth=False)).status == 401
    assert (await s.call("GET", "/identity", headers={"Host": "evil.example"})).status == 403
    assert (await s.call("GET", "/", auth=False)).status == 200
    link = await s.call("GET", f"/?token={s.token}", auth=False)
    assert link.status == 303 and link.headers["Location"] == "/"
    cookie = link.headers["Set-Cookie"].split(";")[0]
    assert (await s.call("GET", "/identity", auth=False, headers={"Cookie": cookie})).status == 200

    host = f"127.0.0.1:{s.port}"
    made = await s.ok("POST", "/tables/create", {
        "label": "Cues", "fields": [{"label": "Name"}, {"label": "Dur", "type": "float"}]})
    table = made["table"]
    by_cookie = [(b"Cookie", cookie.encode())]
    async with open_websocket_url(f"ws://{host}/events?token={s.token}") as ws, \
            open_websocket_url(f"ws://{host}/events", extra_headers=by_cookie) as ws2:
        hello = await _next_event(ws, "hello")
        assert (await _next_event(ws2, "hello"))["workspace_id"] == hello["workspace_id"]
        rec = await s.ok("POST", "/records/create",
                         {"table": table, "values": {"Name": "Cue 1", "Dur": 2.5}})
        for conn in (ws, ws2):
            ev = await _next_event(conn, "records_changed")
            assert ev["table"] == table and ev["entity_ids"] == [rec["id"]]
            assert ev["seq"] == rec["seq"]
        state = await s.ok("GET", f"/workspace/state?after={rec['seq']}")

        # SIGTERM: graceful stop, WebSocket clients are told the server is going away
        rc = await s.stop(signal.SIGTERM)
        assert await _closed_code(ws) == 1001
        assert await _closed_code(ws2) == 1001
    assert rc == 0, s.stderr
    assert "openprod stopped" in s.stdout
    assert "Traceback" not in s.stderr

    # restart on the same data: a new token, the data intact
    s2 = await serve(data)
    assert s2.token != s.token
    assert (await s2.call("GET", "/identity", headers={"Authorization": f"Bearer {s.token}"},
                          auth=False)).status == 401, "the old launch's token still works"
    assert (await s2.ok("GET", "/identity"))["actor_id"] == ident["actor_id"]
    rows = (await s2.ok("GET", f"/records/list?table={table}"))["records"]
    assert [r["id"] for r in rows] == [rec["id"]]
    assert sorted(rows[0]["values"].values(), key=str) == [2.5, "Cue 1"]
    assert await s2.ok("GET", "/workspace/state") == state
    assert await s2.stop(signal.SIGINT) == 0
    assert "openprod stopped" in s2.stdout

    v = await run_cli("verify", "--data", str(data))
    assert v.returncode == 0, v.stderr
    out = v.stdout.decode()
    assert f"workspace {hello['workspace_id']}: ok" in out
    assert state["state_hash"] in out


async def test_websocket_foreign_origin_refused(serve: StartServe, tmp_path: Path) -> None:
    s = await serve(tmp_path / "data")
    url = f"ws://127.0.0.1:{s.port}/events?token={s.token}"
    with trio.fail_after(15):
        with pytest.raises(ConnectionRejected) as exc:
            async with open_websocket_url(url, extra_headers=[(b"Origin", b"http://evil.example")]):
                pass
        assert exc.value.status_code == 403
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(f"ws://127.0.0.1:{s.port}/events"):  # no token
                pass
        async with open_websocket_url(
                url, extra_headers=[(b"Origin", f"http://127.0.0.1:{s.port}".encode())]) as ws:
            assert (await _next_event(ws, "hello"))["type"] == "hello"
    r = await s.call("POST", "/tables/create", {"label": "X"},
                     headers={"Origin": "http://evil.example"})
    assert r.status == 403 and r.json()["error"]["code"] == "forbidden"
    assert await s.stop() == 0


async def test_second_serve_on_same_data_is_refused(serve: StartServe, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = await serve(data)
    second = await serve(data, wait=False)
    with trio.fail_after(30):
        rc = await second.proc.wait()
    assert rc == 2
    assert "another openprod engine is already running" in second.stderr
    assert str(data.resolve()) in second.stderr
    assert "Traceback" not in second.stderr
    # the first engine is untouched: still serving, its token not replaced
    assert (data / "api-token").read_text().strip() == first.token
    assert (await first.ok("GET", "/workspace/current"))["id"]
    assert await first.stop() == 0


async def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = await run_cli("serve", "--port", str(port), "--data", str(tmp_path / "data"))
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert f"port {port} is already in use" in err
    assert "--port" in err
    assert "Traceback" not in err
    assert b"openprod is running" not in r.stdout
    # the engine lock was released: the same data dir serves fine on a free port afterwards
    assert (await run_cli("verify", "--data", str(tmp_path / "data"))).returncode == 0


async def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for cmd in ("serve", "init", "identity", "verify"):
        r = await run_cli(cmd, "--data", str(blocker / "sub"))
        err = r.stderr.decode()
        assert r.returncode == 2, (cmd, err)
        assert f"cannot use {blocker / 'sub'} as the data directory" in err, (cmd, err)
        assert "Traceback" not in err


async def test_cli_help_init_identity_verify(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "openprod"  # the installed console script
    with trio.fail_after(60):
        top = await trio.run_process([str(script), "--help"], capture_stdout=True, check=False)
    assert top.returncode == 0
    for cmd in ("serve", "init", "identity", "verify"):
        assert cmd in top.stdout.decode()
    sh = await run_cli("serve", "--help")
    assert sh.returncode == 0
    assert all(opt in sh.stdout.decode() for opt in ("--data", "--port", "--workspace"))
    assert (await run_cli()).returncode == 2  # a command is required

    data = tmp_path / "data"
    made = await run_cli("init", "--data", str(data), "--workspace-name", "Spring Tour",
                         "--name", "Ada")
    assert made.returncode == 0, made.stderr
    m = re.search(r"created workspace (\S+) \('Spring Tour'\)", made.stdout.decode())
    assert m, made.stdout
    ws_id = m[1]
    assert (data / "workspaces" / ws_id / "oplog.db").exists()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700

    who = await run_cli("identity", "--data", str(data))
    assert who.returncode == 0
    out = who.stdout.decode()
    assert re.search(r"actor id:\s+[0-9a-f]{64}", out)
    assert re.search(r"display name:\s+Ada", out)
    assert str(data / "identity.json") in out
    assert stat.S_IMODE((data / "identity.json").stat().st_mode) == 0o600

    ok = await run_cli("verify", "--data", str(data), "--workspace", ws_id)
    assert ok.returncode == 0, ok.stderr
    assert f"workspace {ws_id}: ok" in ok.stdout.decode()
    bad = await run_cli("verify", "--data", str(data), "--workspace", "no-such-workspace")
    assert bad.returncode == 2
    assert "no workspace" in bad.stderr.decode()


async def test_serve_opens_the_requested_workspace(serve: StartServe, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = await run_cli("init", "--data", str(data), "--workspace-name", "One")
    second = await run_cli("init", "--data", str(data), "--workspace-name", "Two")
    one = re.search(r"created workspace (\S+)", first.stdout.decode())
    two = re.search(r"created workspace (\S+)", second.stdout.decode())
    assert one and two
    s = await serve(data, "--workspace", one[1])
    cur = await s.ok("GET", "/workspace/current")
    assert (cur["id"], cur["name"]) == (one[1], "One")
    assert await s.stop() == 0
    # without --workspace, serve reopens the last one opened
    s = await serve(data)
    assert (await s.ok("GET", "/workspace/current"))["id"] == one[1]
    assert await s.stop() == 0
    missing = await serve(data, "--workspace", "nope", wait=False)
    with trio.fail_after(30):
        assert await missing.proc.wait() == 2
    assert "no workspace 'nope'" in missing.stderr


def test_environment_data_dir(tmp_path: Path) -> None:
    """OPENPROD_HOME (set per test by tests/conftest.py) is the default data directory."""
    home = Path(os.environ["OPENPROD_HOME"])
    assert home.parent == tmp_path
    r = subprocess.run([*cli_command(), "identity"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert str(home / "identity.json") in r.stdout
