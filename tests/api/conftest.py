"""In-process API fixtures: a Node with an open workspace and the Quart test client (no Hypercorn).

`api` sends `Host: 127.0.0.1:0` (the node is not bound, so its port is 0) and the launch token on
every request unless a test overrides the headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from quart.typing import TestClientProtocol
from quart.wrappers import Response

from actors.api import create_app
from actors.home import Home
from actors.node import Node
from openprod.core import ids

HOST = "127.0.0.1:0"
ORIGIN = f"http://{HOST}"


@attrs.define
class Api:
    node: Node
    home: Home
    token: str
    ws_id: str
    client: TestClientProtocol
    app: Any

    @property
    def headers(self) -> dict[str, str]:
        return {"Host": HOST, "Authorization": f"Bearer {self.token}"}

    async def request(self, method: str, path: str, *, body: Any = None, data: Any = None,
                      headers: dict[str, str] | None = None, auth: bool = True) -> Response:
        h = dict(self.headers if auth else {"Host": HOST})
        h.update(headers or {})
        kw: dict[str, Any] = {}
        if body is not None:
            kw["json"] = body
        elif data is not None:
            kw["data"] = data
            h.setdefault("Content-Type", "application/json")
        resp: Response = await self.client.open(path, method=method, headers=h, **kw)
        return resp

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body={} if body is None and "data" not in kw
                                  else body, **kw)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON of a request that must succeed.

        A GET without `after=` waits for everything written so far (after=<head>), so tests
        never race the projection; tests of `after` itself pass it explicitly.
        """
        if method == "GET" and "after=" not in path and self.node.session is not None:
            sep = "&" if "?" in path else "?"
            path = f"{path}{sep}after={self.node.current.writer.appended}"
        resp = await (self.get(path) if method == "GET" else self.post(path, body))
        data = await resp.get_json()
        assert resp.status_code == 200, (method, path, body, resp.status_code, data)
        assert resp.content_type == "application/json"
        return data

    async def settled(self) -> None:
        """Wait until the projection applied (and published the events of) every write so far."""
        s = self.node.current
        await s.deriver.wait_applied(s.writer.appended)

    async def head(self) -> int:
        return int((await self.ok("GET", "/workspace/current"))["seq"])

    async def table(self, label: str = "Cues") -> str:
        r = await self.ok("POST", "/tables/create", {"label": label, "fields": [
            {"label": "Name"}, {"label": "Dur", "type": "float"},
            {"label": "Notes", "type": "text", "crdt": True},
            {"label": "Kind", "type": "enum", "options": {"choices": ["go", "standby"]}}]})
        return str(r["table"])

    async def record(self, table: str, **values: Any) -> str:
        r = await self.ok("POST", "/records/create", {"table": table, "values": values})
        return str(r["id"])

    async def values(self, rec_id: str, after: int | None = None) -> dict[str, Any]:
        """A record's values keyed by field label (the API keys them by field name)."""
        q = f"?after={after}" if after is not None else ""
        rec = await self.ok("GET", f"/records/{rec_id}{q}")
        tables = {t["id"]: t for t in (await self.ok("GET", "/tables/list"))["tables"]}
        labels = {f["name"]: f["label"] for tid in rec["tables"] for f in tables[tid]["fields"]}
        return {labels[k]: v for k, v in rec["values"].items()}


async def error_of(resp: Response, status: int, code: str) -> dict[str, Any]:
    """Assert the JSON error shape and return its `error` object."""
    data = await resp.get_json()
    assert resp.status_code == status, (resp.status_code, data)
    assert resp.content_type == "application/json"
    assert set(data) == {"error"}, data
    err = data["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], dict)
    return dict(err)


async def ws_json(conn: Any) -> dict[str, Any]:
    """The next message of a test-client WebSocket, bounded."""
    with trio.fail_after(10):
        raw = await conn.receive()
    msg: dict[str, Any] = json.loads(raw)
    return msg


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    home = Home(tmp_path / "home")
    home.ensure()
    ident = home.identity("Tester")
    token = home.new_token()
    ws = home.create_workspace(ident, "Test show")
    ws_id = ids.to_text(ws.ws)
    ws.close()
    node = Node(home, ident, token)
    async with trio.open_nursery() as n:
        node.attach(n)
        await node.open_workspace(ws_id)
        app = create_app(node)
        yield Api(node, home, token, ws_id, app.test_client(), app)
        node.shutdown.set()
        if node.session is not None:
            await node.session.stop()
        n.cancel_scope.cancel()
