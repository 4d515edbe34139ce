"""Workspace lifecycle routes (spec 03 §2): recovery secret, join mode, access keys, recovery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from openprod.engine import lifecycle as lcmod
from tests.api.conftest import Api


def _secret(api: Api) -> str:
    hexed = (api.home.path / "secrets" / f"{api.ws_id}.recovery").read_text().strip()
    return lcmod.b32(bytes.fromhex(hexed))


async def _b_mode(api: Api) -> dict[str, Any]:
    return {"mode": "key"}


async def _b_key(api: Api) -> dict[str, Any]:
    return {"expires_in_s": 3600, "max_uses": 3}


async def _b_revoke(api: Api) -> dict[str, Any]:
    r = await api.ok("POST", "/access-keys/create", {})
    return {"key_id": r["key_id"]}


async def _b_recover(api: Api) -> dict[str, Any]:
    return {"secret": _secret(api)}


BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/workspace/join-mode": _b_mode, "/access-keys/create": _b_key,
    "/access-keys/revoke": _b_revoke, "/workspace/recover": _b_recover}


async def test_create_shows_the_recovery_secret_once_and_keeps_a_copy(api: Api) -> None:
    r = await api.ok("POST", "/workspace/create", {"name": "Second"})
    secret = lcmod.unb32(r["recovery_secret"], 32)
    path = api.home.path / "secrets" / f"{r['workspace_id']}.recovery"
    assert bytes.fromhex(path.read_text().strip()) == secret
    assert path.stat().st_mode & 0o777 == 0o600
    lc = await api.ok("GET", "/workspace/lifecycle")
    assert lc["is_owner"] is True and lc["join_mode"] == "open"


async def test_access_keys_lifecycle(api: Api) -> None:
    r = await api.ok("POST", "/access-keys/create", {"expires_in_s": 60, "max_uses": 2})
    assert len(r["code"]) == 6 and r["max_uses"] == 2
    keys = (await api.ok("GET", "/access-keys/list"))["keys"]
    assert [(k["key_id"], k["code"], k["live"]) for k in keys] == [(r["key_id"], r["code"], True)]
    await api.ok("POST", "/access-keys/revoke", {"key_id": r["key_id"]})
    keys = (await api.ok("GET", "/access-keys/list"))["keys"]
    assert keys[0]["revoked"] is True and keys[0]["live"] is False
    again = await api.post("/access-keys/revoke", {"key_id": r["key_id"]})
    assert again.status_code == 404


async def test_bad_lifecycle_input_is_400(api: Api) -> None:
    for path, body in [("/workspace/join-mode", {"mode": "request"}),
                       ("/workspace/join-mode", {"mode": "anyone"}),
                       ("/access-keys/create", {"expires_in_s": 0}),
                       ("/access-keys/create", {"max_uses": 0}),
                       ("/workspace/recover", {"secret": "nope"}),
                       ("/workspace/join", {"id": api.ws_id, "code": "12"})]:
        resp = await api.post(path, body)
        assert resp.status_code == 400, (path, body)
        assert (await resp.get_json())["error"]["code"] == "invalid"


async def test_recover_with_a_wrong_secret_is_refused_and_right_one_rotates(api: Api) -> None:
    wrong = lcmod.b32(bytes(32))
    resp = await api.post("/workspace/recover", {"secret": wrong})
    assert resp.status_code == 400
    old = _secret(api)
    r = await api.ok("POST", "/workspace/recover", {"secret": old})
    assert r["recovery_secret"] != old and _secret(api) == r["recovery_secret"]
    lc = await api.ok("GET", "/workspace/lifecycle")
    assert lc["is_owner"] is True and lc["recoveries"] == 1
    stale = await api.post("/workspace/recover", {"secret": old})
    assert stale.status_code == 400  # the old secret is no longer the current key


async def test_joining_again_while_arriving_takes_a_new_code(api: Api) -> None:
    other = "01a1fd52-1ba1-7298-90ac-38206d471ffe"
    first = await api.ok("POST", "/workspace/join", {"id": other, "code": "ABC123"})
    assert first["state"] == "joining"
    assert api.home.read_meta(other)["sync"]["access_code"] == "ABC123"
    again = await api.ok("POST", "/workspace/join", {"id": other, "code": "xyz-789"})
    assert again["workspace_id"] == other
    assert api.home.read_meta(other)["sync"]["access_code"] == "XYZ789"
    assert api.node.current.sync.access_code == "XYZ789"  # the reopened session uses it
    await api.ok("POST", "/workspace/open", {"id": api.ws_id})
    await api.ok("POST", "/workspace/open", {"id": other})  # as after a restart
    assert api.node.current.sync.access_code == "XYZ789"
    active = await api.post("/workspace/join", {"id": api.ws_id})
    assert active.status_code == 400  # an active workspace is not joined twice
