"""The browser session survives a restart of the same engine home (issue 9, robustness).

The page's cookie carries the home's session secret (`<home>/session-secret`, 0600), not the
per-launch token: after a restart the same cookie is accepted while the old `?token=` link and
Bearer token are refused; a cookie made by another home is refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from actors.api import COOKIE, create_app
from actors.home import Home
from actors.node import Node
from openprod.core import ids
from tests.api.conftest import HOST, ORIGIN, Api


@asynccontextmanager
async def launch(home: Home) -> AsyncIterator[tuple[Any, str]]:
    """One launch of an engine on `home`: (test client, this launch's token)."""
    home.ensure()
    ident = home.identity("Tester")
    token = home.new_token()
    ws_id = home.default_workspace(ident)
    node = Node(home, ident, token)
    async with trio.open_nursery() as n:
        node.attach(n)
        await node.open_workspace(ws_id)
        yield create_app(node).test_client(), token
        node.shutdown.set()
        if node.session is not None:
            await node.session.stop()
        n.cancel_scope.cancel()


async def _status(client: Any, path: str, **headers: str) -> int:
    resp = await client.open(path, method="GET", headers={"Host": HOST, **headers})
    return int(resp.status_code)


async def _cookie_from_link(client: Any, token: str) -> str:
    resp = await client.open(f"/?token={token}", method="GET", headers={"Host": HOST})
    assert resp.status_code == 303
    cookie = str(resp.headers["Set-Cookie"])
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name, _, rest = cookie.partition("=")
    assert name == COOKIE
    value = rest.split(";", 1)[0]
    assert value and value != token  # the session secret, not the launch token
    return value


async def test_cookie_survives_a_restart_of_the_same_home(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    async with launch(home) as (client, token):
        cookie = await _cookie_from_link(client, token)
        assert await _status(client, "/identity", Cookie=f"{COOKIE}={cookie}") == 200
    secret = tmp_path / "home" / "session-secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    async with launch(home) as (client, token2):
        assert token2 != token
        # the page's cookie still works, from the page's own origin too
        assert await _status(client, "/identity", Cookie=f"{COOKIE}={cookie}") == 200
        assert await _status(client, "/workspace/current", Cookie=f"{COOKIE}={cookie}",
                             Origin=ORIGIN) == 200
        # the old link and the old launch token do not
        assert await _status(client, f"/?token={token}") == 401
        assert await _status(client, "/identity", Authorization=f"Bearer {token}") == 401
        # the Origin and Host checks still apply to a valid cookie
        assert await _status(client, "/identity", Cookie=f"{COOKIE}={cookie}",
                             Origin="http://evil.example") == 403
        resp = await client.open("/identity", method="GET", headers={
            "Host": "evil.example", "Cookie": f"{COOKIE}={cookie}"})
        assert resp.status_code == 403
        # the event stream accepts the cookie as well
        async with client.websocket("/events", headers={
                "Host": HOST, "Origin": ORIGIN, "Cookie": f"{COOKIE}={cookie}"}) as conn:
            with trio.fail_after(10):
                hello = await conn.receive()
            assert '"hello"' in hello
        # the new link gives the same cookie
        assert await _cookie_from_link(client, token2) == cookie


async def test_cookie_of_another_home_is_refused(tmp_path: Path) -> None:
    a, b = Home(tmp_path / "a"), Home(tmp_path / "b")
    async with launch(a) as (client, token):
        cookie_a = await _cookie_from_link(client, token)
    async with launch(b) as (client, token):
        assert await _status(client, "/identity", Cookie=f"{COOKIE}={cookie_a}") == 401
        assert await _status(client, "/identity", Cookie=f"{COOKIE}=") == 401
        cookie_b = await _cookie_from_link(client, token)
        assert cookie_b != cookie_a
        assert await _status(client, "/identity", Cookie=f"{COOKIE}={cookie_b}") == 200


async def test_short_or_missing_secret_is_remade(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.ensure()
    (home.path / "session-secret").write_text("short\n")
    s = home.session_secret()
    assert len(s) >= 32 and s == home.session_secret()
    assert stat.S_IMODE(os.stat(home.path / "session-secret").st_mode) == 0o600


async def test_identity_says_whether_a_name_was_chosen(tmp_path: Path) -> None:
    """Without `--name` the identity is named after its key; the welcome screen asks (J1)."""
    home = Home(tmp_path / "home")
    home.ensure()
    ident = home.identity()  # as `openprod serve` without --name
    assert ident.display_name == ident.actor.hex()[:8]
    home.new_token()
    async with launch(home) as (client, token):
        h = {"Host": HOST, "Authorization": f"Bearer {token}"}
        got = await (await client.open("/identity", method="GET", headers=h)).get_json()
        assert got["name_chosen"] is False and got["display_name"] == got["actor_id"][:8]
        resp = await client.open("/identity/update", method="POST", headers=h,
                                 json={"display_name": "Alex"})
        assert resp.status_code == 200
        got = await (await client.open("/identity", method="GET", headers=h)).get_json()
        assert got["name_chosen"] is True and got["display_name"] == "Alex"


async def test_request_during_a_workspace_switch_waits_for_the_new_one(api: Api) -> None:
    """One workspace is open at a time: a request arriving while another is being opened is
    answered by the new one, not refused with 503 (the page reloads through it)."""
    ws = api.home.create_workspace(api.node.ident, "Second")
    second = ids.to_text(ws.ws)
    ws.close()
    got: list[Any] = []
    async with trio.open_nursery() as n:
        n.start_soon(api.node.open_workspace, second)
        # the switch runs until it blocks while stopping the old session (none open then)
        await trio.testing.wait_all_tasks_blocked()
        assert api.node.session is None
        resp = await api.get("/workspace/current")
        got.append((resp.status_code, await resp.get_json()))
    status, body = got[0]
    assert status == 200, body
    assert body["id"] == second and body["name"] == "Second"
