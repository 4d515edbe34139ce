"""LAN sync between real `openprod serve` processes on loopback (spec 03 §2 Join flow, §4).

(a) two engines find each other by mDNS on 127.0.0.1: B sees A's workspace in
    `/workspace/discover`, joins it by id alone, both edit, and both converge;
(b) the manual path without multicast: `--no-discovery`, B joins with no address and
    `openprod connect HOST:PORT` gives it A's sync port; edits converge;
(c) three engines converge over mDNS.

Every wait polls the API under a deadline (`trio.fail_after`); nothing sleeps without a condition.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.process.conftest import Server, StartServe, run_cli

SYNC_LINE = re.compile(r"sync port (\d+) on (\S+) · mDNS discovery (on|off)")
SYNC_TIMEOUT_S = 90
POLL_S = 0.2
LOOPBACK = ("--sync-port", "0", "--sync-host", "127.0.0.1")
MDNS = (*LOOPBACK, "--mdns-interface", "127.0.0.1")
MANUAL = (*LOOPBACK, "--no-discovery")


def sync_port(s: Server) -> int:
    m = SYNC_LINE.search(s.stdout)
    assert m is not None, s.stdout
    return int(m[1])


async def until(what: str, check: Callable[[], Awaitable[Any]],
                timeout: float = SYNC_TIMEOUT_S) -> Any:
    """Poll `check` (an API read) until it returns something truthy; fail after `timeout`."""
    last: Any = None
    try:
        with trio.fail_after(timeout):
            while not (last := await check()):
                await trio.sleep(POLL_S)
    except trio.TooSlowError:
        raise AssertionError(f"timed out waiting for {what}; last answer: {last!r}") from None
    return last


async def joined(s: Server, ws: str) -> bool:
    st = await s.ok("GET", "/sync/status")
    return bool(st["workspace_id"] == ws and not st["joining"] and st["connected"] >= 1)


async def converged(servers: list[Server]) -> list[dict[str, Any]] | None:
    states = [await s.ok("GET", "/workspace/state") for s in servers]
    same = {(st["state_hash"], st["oplog_digest"]) for st in states}
    return states if len(same) == 1 else None


async def cue_table(s: Server) -> str:
    r = await s.ok("POST", "/tables/create", {"label": "Cues", "fields": [
        {"label": "Name"}, {"label": "Page", "type": "integer"}]})
    return str(r["table"])


async def names(s: Server, table: str) -> set[str]:
    recs = (await s.ok("GET", f"/records/list?table={table}"))["records"]
    tables = (await s.ok("GET", "/tables/list"))["tables"]
    field = next(f["name"] for t in tables if t["id"] == table for f in t["fields"]
                 if f["label"] == "Name")
    return {r["values"].get(field) for r in recs}


async def edit_on_all_and_converge(servers: list[Server], table: str) -> None:
    """Each engine adds a record while linked; all end with the same state and every record."""
    want = set()
    for i, s in enumerate(servers):
        await s.ok("POST", "/records/create", {"table": table,
                                               "values": {"Name": f"cue from {i}", "Page": i}})
        want.add(f"cue from {i}")
    await until("convergence", lambda: converged(servers))
    for s in servers:
        assert await names(s, table) >= want
    # both sides report the same state through the sync service's own view, too
    hashes = {(await s.ok("GET", "/workspace/state"))["state_hash"] for s in servers}
    assert len(hashes) == 1


@pytest.mark.mdns
async def test_two_engines_find_each_other_by_mdns(serve: StartServe, tmp_path: Path) -> None:
    a = await serve(tmp_path / "a", "--name", "Alex", *MDNS)
    b = await serve(tmp_path / "b", "--name", "Jordan", *MDNS)
    assert SYNC_LINE.search(a.stdout)[3] == "on"  # type: ignore[index]
    ws = (await a.ok("GET", "/workspace/current"))["id"]
    table = await cue_table(a)
    await a.ok("POST", "/records/create", {"table": table, "values": {"Name": "before join"}})

    async def seen() -> dict[str, Any] | None:
        found = (await b.ok("GET", "/workspace/discover"))["workspaces"]
        return next((w for w in found if w["ws"] == ws), None)

    found = await until("B to discover A's workspace", seen)
    assert found["name"] == "My Workspace" and found["peers_online"] == 1
    assert found["gh"] == (await a.ok("GET", "/sync/status"))["genesis"]

    r = await b.ok("POST", "/workspace/join", {"id": ws})  # no address: discovery finds A
    assert r["state"] == "joining"
    await until("B to receive the workspace", lambda: joined(b, ws))
    assert (tmp_path / "b" / "workspaces" / ws / "workspace.toml").read_text().count(
        'state = "active"') == 1
    assert "before join" in await names(b, table)
    await edit_on_all_and_converge([a, b], table)
    peers = (await a.ok("GET", "/sync/peers"))["peers"]
    assert [p["name"] for p in peers if p["state"] == "connected"] == ["Jordan"]
    for s in (a, b):
        assert await s.stop() == 0


async def test_manual_peer_without_discovery(serve: StartServe, tmp_path: Path) -> None:
    a = await serve(tmp_path / "a", "--name", "Alex", *MANUAL)
    b = await serve(tmp_path / "b", "--name", "Jordan", *MANUAL)
    assert SYNC_LINE.search(b.stdout)[3] == "off"  # type: ignore[index]
    assert (await b.ok("GET", "/workspace/discover")) == {"discovery": False, "workspaces": []}
    ws = (await a.ok("GET", "/workspace/current"))["id"]
    table = await cue_table(a)

    # join by id alone: with discovery off nothing happens until a peer address is given
    await b.ok("POST", "/workspace/join", {"id": ws, "name": "Their show"})
    assert (await b.ok("GET", "/sync/status"))["joining"] is True
    bad = await run_cli("connect", "not-an-address", "--data", str(tmp_path / "b"))
    assert bad.returncode == 2 and b"HOST:PORT" in bad.stderr
    done = await run_cli("connect", f"127.0.0.1:{sync_port(a)}", "--data", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    assert f"added peer 127.0.0.1:{sync_port(a)}".encode() in done.stdout
    await until("B to receive the workspace", lambda: joined(b, ws))
    await edit_on_all_and_converge([a, b], table)

    manual = (await b.ok("GET", "/sync/peers"))["manual_peers"]
    assert [(m["address"], m["state"]) for m in manual] == [
        (f"127.0.0.1:{sync_port(a)}", "connected")]
    # an edit after convergence travels live too
    rec = await b.ok("POST", "/records/create", {"table": table, "values": {"Name": "late"}})
    assert rec["seq"] > 0
    await until("the late edit to reach A", lambda: _has(a, table, "late"))

    # the peer survives a restart of B (kept in workspace.toml)
    assert await b.stop() == 0
    b2 = await serve(tmp_path / "b", *MANUAL)
    assert (await b2.ok("GET", "/workspace/current"))["id"] == ws
    await until("B to relink after a restart", lambda: joined(b2, ws))
    r = await run_cli("connect", "--remove", f"127.0.0.1:{sync_port(a)}",
                      "--data", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert (await b2.ok("GET", "/sync/peers"))["manual_peers"] == []
    for s in (a, b2):
        assert await s.stop() == 0
    # with no engine running, connect says so
    gone = await run_cli("connect", "127.0.0.1:47820", "--data", str(tmp_path / "b"))
    assert gone.returncode == 2 and b"no openprod engine is running" in gone.stderr


async def _has(s: Server, table: str, name: str) -> bool:
    return name in await names(s, table)


@pytest.mark.mdns
async def test_three_engines_converge_by_mdns(serve: StartServe, tmp_path: Path) -> None:
    a = await serve(tmp_path / "a", "--name", "Alex", *MDNS)
    ws = (await a.ok("GET", "/workspace/current"))["id"]
    table = await cue_table(a)
    others = [await serve(tmp_path / n, "--name", n, *MDNS) for n in ("b", "c")]
    for s in others:
        await s.ok("POST", "/workspace/join", {"id": ws})
    for s in others:
        await until("a joiner to receive the workspace", lambda s=s: joined(s, ws))
    await edit_on_all_and_converge([a, *others], table)
    for s in (a, *others):
        assert await s.stop() == 0
