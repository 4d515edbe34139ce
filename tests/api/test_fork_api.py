"""`POST /workspace/fork` (spec 03 §2 Fork) in-process: validation, and a fork that opens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from openprod.core import codec
from openprod.engine.workspace import Workspace
from tests.api.conftest import Api, error_of


async def _b_fork(api: Api) -> dict[str, Any]:
    return {"name": "Copy of the show"}


# used by tests/api/test_api.py's route-by-route checks; the fork's seq is the new workspace's
BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {"/workspace/fork": _b_fork}
NO_WRITE = frozenset(["/workspace/fork"])


async def test_fork_bad_names_are_400_and_write_nothing(api: Api) -> None:
    head = await api.head()
    for body in ({}, {"name": None}, {"name": ""}, {"name": "   "}, {"name": "x" * 201},
                 {"name": 3}):
        err = await error_of(await api.post("/workspace/fork", body), 400, "invalid")
        assert err["details"].get("field") == "name", err
    assert await api.head() == head
    assert [w["id"] for w in (await api.ok("GET", "/workspace/list"))["workspaces"]] == [
        api.ws_id]
    assert (await api.ok("GET", "/workspace/current"))["id"] == api.ws_id


async def test_fork_opens_the_copy(api: Api) -> None:
    t = await api.table()
    rec = await api.record(t, Name="Q1", Dur=1.5, Kind="go")
    source_rows = (await api.ok("GET", f"/records/list?table={t}"))["records"]
    made = await api.ok("POST", "/workspace/fork", {"name": "  Copy of the show "})
    new = made["id"]
    assert new != api.ws_id and made["workspace_id"] == new
    assert made["name"] == "Copy of the show"
    assert made["report"]["ws"] == new and made["report"]["records"] == 1
    assert made["report"]["open_conflicts"] == []
    assert isinstance(made["recovery_secret"], str) and made["recovery_secret"]
    cur = await api.ok("GET", "/workspace/current")
    assert (cur["id"], cur["name"], cur["seq"]) == (new, "Copy of the show", made["seq"])
    assert (await api.ok("GET", f"/records/list?table={t}"))["records"] == source_rows
    assert (await api.values(rec))["Name"] == "Q1"
    listed = {w["id"]: w for w in (await api.ok("GET", "/workspace/list"))["workspaces"]}
    assert set(listed) == {api.ws_id, new}
    assert listed[new]["open"] and listed[new]["state"] == "active"
    assert api.home.last() == new
    assert (api.home.path / "secrets" / f"{new}.recovery").exists()
    # the source recorded the fork (a user bundle through its writer)
    await api.ok("POST", "/workspace/open", {"id": api.ws_id})

    def fork_entries(ws: Workspace) -> list[Any]:
        return [codec.decode(bytes(v)) for (v,) in ws.proj.conn.execute(
            "SELECT value FROM config WHERE ns = 'fork' AND key = ?", (new,))]
    assert await api.node.current.writer.call(fork_entries) == [{}]
