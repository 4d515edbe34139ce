"""The sync routes (spec 03 §4, §8; spec 05 §5 Sync and Workspace rows) in-process.

Manual peers (add, list, persist in workspace.toml, reload, remove, refuse bad addresses),
`/sync/status`, `/sync/rejected`, `/workspace/discover` fed through the Node's discovery
consumer, and `/workspace/join` — including a real join over loopback sockets between two
in-process nodes that turns the joining replica active. Also exports the body factories that
tests/api/test_api.py uses to drive these routes through its route-by-route checks.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.api import ROUTES, create_app, openapi
from actors.discovery import DiscoveryEvent
from actors.home import Home
from actors.node import NetConfig, Node
from openprod.core import ids
from openprod.sync import discovery as disc
from openprod.sync import messages as m
from tests.api.conftest import HOST, Api, error_of

HEX16 = re.compile(r"[0-9a-f]{16}")
CLOSED_PORT = 9  # discard: nothing listens on it here, so a dialer just backs off


async def _b_peer(api: Api) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": CLOSED_PORT}


async def _b_join(api: Api) -> dict[str, Any]:
    return {"id": ids.to_text(ids.new_id()), "name": "Their show", "host": "127.0.0.1",
            "port": CLOSED_PORT}


# used by tests/api/test_api.py's route-by-route checks
BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/sync/peers": _b_peer, "/workspace/join": _b_join}
NO_WRITE = frozenset(["/sync/peers", "/workspace/join"])


async def prepare_delete(api: Api, path: str) -> dict[str, Any]:
    """The body of a DELETE that succeeds (the peer is added first)."""
    assert path == "/sync/peers"
    body = await _b_peer(api)
    await api.ok("POST", "/sync/peers", body)
    return body


def _meta_peers(api: Api) -> list[str]:
    return list(api.home.read_meta(api.node.current.ws_id)["sync"]["manual_peers"])


async def test_status_of_a_node_without_network(api: Api) -> None:
    st = await api.ok("GET", "/sync/status")
    assert st["enabled"] is True and st["listening"] is False and st["discovery"] is False
    assert st["port"] is None and st["connected"] == 0 and st["remaining"] == 0
    assert st["workspace_id"] == api.ws_id and st["joining"] is False
    assert HEX16.fullmatch(st["genesis"])
    assert st["actor_id"] == api.node.ident.actor.hex()
    assert st["peers"] == [] and st["manual_peers"] == [] and st["last_seen"] == []
    assert all(isinstance(a, str) for a in st["addresses"])


async def test_manual_peers_add_list_persist_remove(api: Api) -> None:
    r = await api.ok("POST", "/sync/peers", {"host": "127.0.0.1", "port": CLOSED_PORT})
    assert r["peer"] == f"127.0.0.1:{CLOSED_PORT}"
    assert [p["address"] for p in r["manual_peers"]] == [f"127.0.0.1:{CLOSED_PORT}"]
    # adding it again changes nothing; a second peer is kept in order
    await api.ok("POST", "/sync/peers", {"host": "127.0.0.1", "port": CLOSED_PORT})
    await api.ok("POST", "/sync/peers", {"host": "stage-left.local", "port": 47820})
    peers = await api.ok("GET", "/sync/peers")
    assert [(p["host"], p["port"]) for p in peers["manual_peers"]] == [
        ("127.0.0.1", CLOSED_PORT), ("stage-left.local", 47820)]
    assert all(p["state"] != "connected" and p["peer_id"] is None
               for p in peers["manual_peers"])
    assert set(peers) == {"peers", "manual_peers", "last_seen", "discovered"}
    assert _meta_peers(api) == [f"127.0.0.1:{CLOSED_PORT}", "stage-left.local:47820"]

    # the peers come back from workspace.toml when the workspace is opened again
    await api.ok("POST", "/workspace/open", {"id": api.ws_id})
    st = await api.ok("GET", "/sync/status")
    assert [p["address"] for p in st["manual_peers"]] == _meta_peers(api)

    # DELETE takes a JSON body or the query string
    resp = await api.request("DELETE", "/sync/peers", body={"host": "127.0.0.1",
                                                             "port": CLOSED_PORT})
    assert resp.status_code == 200, await resp.get_json()
    assert [p["address"] for p in (await resp.get_json())["manual_peers"]] == [
        "stage-left.local:47820"]
    resp = await api.request("DELETE", "/sync/peers?host=stage-left.local&port=47820")
    assert resp.status_code == 200, await resp.get_json()
    assert _meta_peers(api) == []
    assert (await api.ok("GET", "/sync/peers"))["manual_peers"] == []

    err = await error_of(await api.request("DELETE", "/sync/peers", body={
        "host": "127.0.0.1", "port": CLOSED_PORT}), 404, "not_found")
    assert err["details"]["peer"] == f"127.0.0.1:{CLOSED_PORT}"


@pytest.mark.parametrize(("host", "port", "field"), [
    ("", 47820, "host"), ("   ", 47820, "host"), ("a" * 254, 47820, "host"),
    (None, 47820, "host"), (7, 47820, "host"), ("http://10.0.0.2", 47820, "host"),
    ("10.0.0.2/sync", 47820, "host"), ("10.0.0.2:47820", 47820, "host"),
    ("me@10.0.0.2", 47820, "host"), ("[::1]", 47820, "host"), ("a b", 47820, "host"),
    ("10.0.0.2", 0, "port"), ("10.0.0.2", 65536, "port"), ("10.0.0.2", -1, "port"),
    ("10.0.0.2", True, "port"), ("10.0.0.2", "x", "port"), ("10.0.0.2", 1.5, "port"),
    ("10.0.0.2", None, "port"),
])
async def test_add_peer_refuses_bad_addresses(api: Api, host: Any, port: Any,
                                              field: str) -> None:
    err = await error_of(await api.post("/sync/peers", {"host": host, "port": port}), 400,
                         "invalid")
    assert err["details"]["field"] == field
    err = await error_of(await api.request("DELETE", "/sync/peers", body={
        "host": host, "port": port}), 400, "invalid")
    assert err["details"]["field"] == field
    assert (await api.ok("GET", "/sync/peers"))["manual_peers"] == []
    assert _meta_peers(api) == []


async def test_delete_peer_with_malformed_body(api: Api) -> None:
    await error_of(await api.request("DELETE", "/sync/peers", data=b"{bad"), 400,
                   "malformed_json")
    await error_of(await api.request("DELETE", "/sync/peers", data=b"[1]"), 400, "invalid")


async def test_rejected_bundles_without_raw_bytes(api: Api) -> None:
    assert (await api.ok("GET", "/sync/rejected"))["rejected"] == []
    bid, actor = ids.new_id(), bytes(range(32))

    def reject(ws: Any) -> None:
        ws.storage.record_rejection(bid, actor, None, "bad_signature", "signature mismatch",
                                    b"\x00raw", settled=False)
        ws.storage.record_rejection(ids.new_id(), None, None, "malformed", "not CBOR",
                                    settled=False)

    await api.node.current.writer.call(reject)
    rows = (await api.ok("GET", "/sync/rejected"))["rejected"]
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"bundle_id", "actor", "code", "reason", "settled", "received_at"}
        assert row["settled"] is False and isinstance(row["received_at"], int)
    by_code = {r["code"]: r for r in rows}
    assert by_code["bad_signature"]["bundle_id"] == ids.to_text(bid)
    assert by_code["bad_signature"]["actor"] == actor.hex()
    assert by_code["bad_signature"]["reason"] == "signature mismatch"
    assert by_code["malformed"]["actor"] is None


def _advert_event(name: str, ws: bytes, actor: bytes, wsname: str, gh: str,
                  port: int = CLOSED_PORT) -> DiscoveryEvent:
    props = disc.txt_properties(ws, actor, wsname, "open", gh)
    ad = disc.parse_advert(name, {k.encode(): v.encode() for k, v in props.items()},
                           ["127.0.0.1"], port)
    assert ad is not None
    return DiscoveryEvent("discovered", name, ad)


async def test_discover_lists_every_workspace_and_feeds_our_sync(api: Api) -> None:
    node, session = api.node, api.node.current
    assert await api.ok("GET", "/workspace/discover") == {"discovery": False, "workspaces": []}
    other_ws = ids.new_id()
    ours = session.sync.ws
    peer_y, peer_z, peer_w = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    send, recv = trio.open_memory_channel[DiscoveryEvent](16)
    async with trio.open_nursery() as n:
        n.start_soon(node._consume, session, recv)
        await send.send(_advert_event("op-y", other_ws, peer_y, "Other show", "ab" * 8))
        await send.send(_advert_event("op-w", other_ws, peer_w, "Other show", "ab" * 8))
        await send.send(_advert_event("op-z", ours, peer_z, "Test show",
                                      session.sync.genesis.hex()[:16]))  # type: ignore[union-attr]
        await trio.testing.wait_all_tasks_blocked()
        found = (await api.ok("GET", "/workspace/discover"))["workspaces"]
        assert [(w["ws"], w["name"], w["peers_online"], w["here"]) for w in found] == [
            (ids.to_text(other_ws), "Other show", 2, False),
            (api.ws_id, "Test show", 1, True)]
        assert {p["peer_id"] for p in found[0]["peers"]} == {peer_y.hex(), peer_w.hex()}
        # only the advert of our own workspace reaches the sync service
        st = await api.ok("GET", "/sync/status")
        assert [d["peer_id"] for d in st["discovered"]] == [peer_z.hex()]

        await send.send(DiscoveryEvent("lost", "op-z", None))
        await send.send(DiscoveryEvent("lost", "op-y", None))
        await trio.testing.wait_all_tasks_blocked()
        found = (await api.ok("GET", "/workspace/discover"))["workspaces"]
        assert [(w["ws"], w["peers_online"]) for w in found] == [(ids.to_text(other_ws), 1)]
        assert (await api.ok("GET", "/sync/status"))["discovered"] == []

        # joining a discovered workspace takes its name and expects its genesis prefix
        r = await api.ok("POST", "/workspace/join", {"id": ids.to_text(other_ws)})
        assert r["state"] == "joining"
        assert node.current.sync.expected_genesis == "ab" * 8
        assert (await api.ok("GET", "/workspace/current"))["name"] == "Other show"
        n.cancel_scope.cancel()


async def test_join_opens_an_empty_replica(api: Api) -> None:
    body = await _b_join(api)
    r = await api.ok("POST", "/workspace/join", body)
    assert r["workspace_id"] == body["id"] and r["state"] == "joining"
    assert [p["address"] for p in r["manual_peers"]] == [f"127.0.0.1:{CLOSED_PORT}"]
    cur = await api.ok("GET", "/workspace/current")
    assert cur["id"] == body["id"] and cur["name"] == "Their show"
    st = await api.ok("GET", "/sync/status")
    assert st["joining"] is True and st["genesis"] is None
    listed = {w["id"]: w for w in (await api.ok("GET", "/workspace/list"))["workspaces"]}
    assert listed[body["id"]]["state"] == "joining" and listed[body["id"]]["open"] is True
    assert listed[api.ws_id]["state"] == "active"
    assert api.home.read_meta(body["id"])["sync"]["manual_peers"] == [
        f"127.0.0.1:{CLOSED_PORT}"]


async def test_join_errors(api: Api) -> None:
    err = await error_of(await api.post("/workspace/join", {"id": api.ws_id}), 400, "invalid")
    assert "already" in err["message"]
    await error_of(await api.post("/workspace/join", {"id": "nope"}), 400, "invalid")
    fresh = ids.to_text(ids.new_id())
    err = await error_of(await api.post("/workspace/join", {"id": fresh, "host": "10.0.0.2"}),
                         400, "invalid")
    assert err["details"]["field"] == "port"
    err = await error_of(await api.post("/workspace/join", {"id": fresh, "port": 47820}),
                         400, "invalid")
    assert err["details"]["field"] == "host"
    # nothing was created or opened by the refusals
    assert (await api.ok("GET", "/workspace/current"))["id"] == api.ws_id
    assert [w["id"] for w in (await api.ok("GET", "/workspace/list"))["workspaces"]] == [
        api.ws_id]


def test_openapi_documents_the_sync_routes() -> None:
    doc = openapi()
    assert set(doc["paths"]["/sync/peers"]) == {"get", "post", "delete"}
    assert {p["name"] for p in doc["paths"]["/sync/peers"]["delete"]["parameters"]} == {
        "host", "port"}
    assert doc["paths"]["/sync/peers"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["required"] == ["host", "port"]
    for path in ("/sync/status", "/sync/rejected", "/workspace/discover"):
        assert "get" in doc["paths"][path]
    assert "post" in doc["paths"]["/workspace/join"]
    assert {(r.method, r.path) for r in ROUTES} >= {
        ("GET", "/sync/status"), ("GET", "/sync/peers"), ("POST", "/sync/peers"),
        ("DELETE", "/sync/peers"), ("GET", "/sync/rejected"), ("GET", "/workspace/discover"),
        ("POST", "/workspace/join")}


# --- a real join over loopback sockets, two in-process nodes ------------------------------------

LOOPBACK = NetConfig(sync_host="127.0.0.1", sync_port=0, discovery=False)


async def _node(root: Path, name: str, nursery: trio.Nursery, *, create: bool) -> Node:
    home = Home(root / name)
    home.ensure()
    ident = home.identity(name)
    ws_id = home.default_workspace(ident) if create else None
    node = Node(home, ident, "t0ken", net=LOOPBACK)
    node.attach(nursery)
    if ws_id is not None:
        await node.open_workspace(ws_id)
    return node


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    async with trio.open_nursery() as n:
        a = await _node(tmp_path, "a", n, create=True)
        # B has a workspace of its own to start with, as a fresh `openprod serve` does
        b = await _node(tmp_path, "b", n, create=True)
        yield a, b
        for node in (a, b):
            node.shutdown.set()
            if node.session is not None:
                await node.session.stop()
        n.cancel_scope.cancel()


async def test_join_over_loopback_turns_active(pair: tuple[Node, Node]) -> None:
    a, b = pair
    port = a.current.sync.port
    assert isinstance(port, int) and port > 0
    client = create_app(b).test_client()
    headers = {"Host": HOST, "Authorization": "Bearer t0ken"}
    sub, _ = b.hub.subscribe()
    resp = await client.post("/workspace/join", headers=headers, json={
        "id": a.current.ws_id, "host": "127.0.0.1", "port": port, "code": "ABC-123"})
    assert resp.status_code == 200, await resp.get_json()
    # an open workspace lets anyone in: the code's proof is simply not needed
    assert b.home.read_meta(a.current.ws_id)["sync"]["access_code"] == "ABC123"
    with trio.fail_after(30):
        async for ev in sub.recv:
            if ev["type"] == "workspace_joined":
                break
    sub.close()
    assert ev["workspace_id"] == a.current.ws_id
    meta = b.home.read_meta(a.current.ws_id)
    assert meta["state"] == "active"
    assert "access_code" not in meta["sync"]  # forgotten once joined
    status = await (await client.get("/sync/status", headers=headers)).get_json()
    assert status["joining"] is False
    assert status["genesis"] == a.current.sync.genesis.hex()[:16]  # type: ignore[union-attr]
    assert [p["peer_id"] for p in status["peers"]] == [a.ident.actor.hex()]
    assert status["manual_peers"][0]["state"] == "connected"


async def test_discover_at_an_address_lists_what_that_engine_serves(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    port = a.current.sync.port
    client = create_app(b).test_client()
    headers = {"Host": HOST, "Authorization": "Bearer t0ken"}
    resp = await client.get(f"/workspace/discover?host=127.0.0.1&port={port}", headers=headers)
    data = await resp.get_json()
    assert resp.status_code == 200, data
    assert data["address"] == f"127.0.0.1:{port}"
    (w,) = data["workspaces"]
    assert w["ws"] == a.current.ws_id and w["join"] == "open" and w["here"] is False
    assert w["gh"] == a.current.sync.genesis.hex()[:16]  # type: ignore[union-attr]
    # the owner switches to access codes: the directory says so
    await a.current.writer.call(lambda ws: ws.set_join_mode("key"))
    await a.current.deriver.wait_applied(a.current.writer.appended)
    resp = await client.get(f"/workspace/discover?host=127.0.0.1&port={port}", headers=headers)
    assert (await resp.get_json())["workspaces"][0]["join"] == "key"
    # nothing listening there, and a malformed address
    resp = await client.get(f"/workspace/discover?host=127.0.0.1&port={CLOSED_PORT}",
                            headers=headers)
    assert resp.status_code == 502
    assert (await resp.get_json())["error"]["code"] == "peer_unreachable"
    resp = await client.get("/workspace/discover?host=127.0.0.1&port=x", headers=headers)
    assert resp.status_code == 400


async def test_a_dialed_link_that_drops_reports_when_it_retries(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    port = a.current.sync.port
    client = create_app(b).test_client()
    headers = {"Host": HOST, "Authorization": "Bearer t0ken"}
    sub, _ = b.hub.subscribe()
    resp = await client.post("/workspace/join", headers=headers, json={
        "id": a.current.ws_id, "host": "127.0.0.1", "port": port})
    assert resp.status_code == 200, await resp.get_json()
    with trio.fail_after(30):
        async for ev in sub.recv:
            if ev["type"] == "workspace_joined":
                break
        for peer in list(a.current.sync.links.values()):
            peer.fail(m.CLOSE_TOO_SLOW, "test: the peer goes silent")
        async for ev in sub.recv:
            if ev["type"] == "sync_peer_disconnected":
                break
    sub.close()
    assert ev["peer_id"] == a.ident.actor.hex() and ev["code"] == m.CLOSE_TOO_SLOW
    assert ev["connected"] is True
    assert 0.8 <= ev["retry_in_s"] <= 1.2  # the first backoff step: 1 s ± 20 %
