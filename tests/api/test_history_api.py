"""`GET /records/<id>/history` and `GET /workspace/revision` in-process (issue 9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from openprod.core import ids
from tests.api.conftest import Api, error_of
from tests.harness.network import TestNetwork


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[TestNetwork]:
    async with TestNetwork.open(tmp_path / "net") as net:
        yield net


async def path_of(api: Api, path: str) -> str | None:
    """A concrete path for the routes of this module (used by test_api's every-route tests)."""
    if path == "/records/<id>/history":
        return f"/records/{await api.record(await api.table(), Name='x')}/history"
    return None


async def _names(api: Api, table: str) -> dict[str, str]:
    tables = (await api.ok("GET", "/tables/list"))["tables"]
    return {f["label"]: f["name"] for t in tables if t["id"] == table for f in t["fields"]}


async def test_history_newest_first_with_old_and_new(api: Api) -> None:
    t = await api.table()
    names = await _names(api, t)
    rec = await api.record(t, Name="Q1", Dur=1.5)
    await api.ok("POST", "/records/update", {"id": rec, "values": {"Name": "Q2"}})
    last = await api.ok("POST", "/records/update", {"id": rec, "values": {"Dur": None}})
    data = await api.ok("GET", f"/records/{rec}/history")
    assert data["entity_id"] == rec and data["next"] is None
    assert data["seq"] >= last["seq"]
    got = [(x["op"], x["label"], x["old"], x["new"]) for x in data["entries"]]
    assert got == [
        ("clear_field", "Dur", 1.5, None),
        ("set_field", "Name", "Q1", "Q2"),
        ("set_field", "Dur", None, 1.5),
        ("set_field", "Name", None, "Q1"),
        ("create", None, None, None),
    ]
    top = data["entries"][0]
    assert top["actor"] == api.node.ident.actor.hex() and top["display_name"] == "Tester"
    assert top["kind"] == "user" and top["table"] == t and top["field"] == names["Dur"]
    assert top["bundle_id"] == last["bundle_id"] and top["conflict"] is None
    assert top["summary"] == "Tester cleared Dur (was “1.5”)"
    assert data["entries"][1]["summary"] == "Tester changed Name from “Q1” to “Q2”"
    assert data["entries"][-1]["summary"] == "Tester created this record in Cues"
    ats = [x["at"] for x in data["entries"]]
    assert ats == sorted(ats, reverse=True) and all(isinstance(a, int) and a > 0 for a in ats)


async def test_field_filter_limit_and_cursor(api: Api) -> None:
    t = await api.table()
    names = await _names(api, t)
    rec = await api.record(t, Name="a")
    for v in ("b", "c", "d"):
        await api.ok("POST", "/records/update", {"id": rec, "values": {"Name": v}})
    await api.ok("POST", "/records/update", {"id": rec, "values": {"Dur": 2.0}})
    one = await api.ok("GET", f"/records/{rec}/history?field={names['Name']}&limit=1")
    assert [(x["old"], x["new"]) for x in one["entries"]] == [("c", "d")]
    assert one["next"]
    seen = [x["new"] for x in one["entries"]]
    cursor = one["next"]
    while cursor:
        page = await api.ok("GET", f"/records/{rec}/history?field=Name&limit=2&before={cursor}")
        seen += [x["new"] for x in page["entries"]]
        cursor = page["next"]
    assert seen == ["d", "c", "b", "a"]  # by label too, each once, newest first
    dur = await api.ok("GET", f"/records/{rec}/history?field={names['Dur']}")
    assert [x["new"] for x in dur["entries"]] == [2.0]


async def test_undo_delete_and_restore_appear(api: Api) -> None:
    t = await api.table()
    rec = await api.record(t, Name="a")
    await api.ok("POST", "/records/update", {"id": rec, "values": {"Name": "b"}})
    await api.ok("POST", "/undo")
    await api.ok("POST", "/records/delete", {"ids": [rec]})
    await api.ok("POST", "/undo")
    data = await api.ok("GET", f"/records/{rec}/history")
    got = [(x["kind"], x["op"], x["old"], x["new"]) for x in data["entries"]][:3]
    assert got == [("undo", "restore", None, None), ("user", "delete", None, None),
                   ("undo", "set_field", "b", "a")]


async def test_history_errors(api: Api) -> None:
    t = await api.table()
    rec = await api.record(t, Name="a")
    head = await api.head()
    await error_of(await api.get(f"/records/{ids.to_text(ids.new_id())}/history"), 404,
                   "not_found")
    err = await error_of(await api.get("/records/not-an-id/history"), 400, "invalid")
    assert "not a valid id" in err["message"]
    for bad in ("0", "1001", "x", "-3"):
        err = await error_of(await api.get(f"/records/{rec}/history?limit={bad}"), 400,
                             "invalid")
        assert err["details"]["field"] == "limit"
    for bad in ("zz", "00", "ab" * 40):
        err = await error_of(await api.get(f"/records/{rec}/history?before={bad}"), 400,
                             "invalid")
        assert err["details"]["field"] == "before"
    await error_of(await api.get(f"/records/{rec}/history?after=x"), 400, "invalid")
    assert await api.head() == head


async def test_revision_stamp(api: Api) -> None:
    r1 = await api.ok("GET", "/workspace/revision")
    assert set(r1) >= {"revision", "stamp", "at", "seq"}
    assert r1["stamp"] == f"Rev {r1['revision']} · {r1['digest'][:8]}"
    t = await api.table()
    await api.record(t, Name="a")
    r2 = await api.ok("GET", "/workspace/revision")
    assert r2["revision"] == r1["revision"] + 2 and r2["stamp"] != r1["stamp"]
    assert r2["seq"] > r1["seq"] and r2["at"] >= r1["at"] > 0


async def test_revision_equal_on_two_synced_peers(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    t = await a.create_table("Cues", [("Name", "text"), ("Page", "integer")])
    rec = await a.create_record(t, {"Name": "Q1", "Page": 3})
    b = await network.add_peer("b")
    await network.connect(a, b)
    await network.wait_for_sync()
    await b.update_record(rec, t, {"Page": 4})
    await network.wait_for_sync()
    await network.assert_converged()
    ra: dict[str, Any] = await a.get("/workspace/revision")
    rb: dict[str, Any] = await b.get("/workspace/revision")
    assert ra["stamp"] == rb["stamp"] and ra["revision"] == rb["revision"] == 4
    ha = await a.get(f"/records/{rec}/history")
    hb = await b.get(f"/records/{rec}/history")
    assert ha["entries"] == hb["entries"]  # the same history on both peers
    top = ha["entries"][0]
    assert (top["old"], top["new"], top["display_name"]) == (3, 4, "b")
    assert top["actor"] == b.actor_id


async def test_conflict_branches_and_resolution_over_http(
        network: TestNetwork, autojump_clock: trio.testing.MockClock) -> None:
    a = await network.add_peer("a")
    b = await network.add_peer("b")
    t = await a.create_table("Cues", [("Name", "text")])
    rec = await a.create_record(t, {"Name": "orig"})
    await network.connect(a, b)
    await network.wait_for_sync()
    await network.disconnect(a, b)
    await a.update_record(rec, t, {"Name": "from a"})
    await b.update_record(rec, t, {"Name": "from b"})
    await network.connect(a, b)
    await network.wait_for_sync()
    hist = await a.get(f"/records/{rec}/history", field="Name")
    branches = hist["entries"][:2]
    assert sorted(x["new"] for x in branches) == ["from a", "from b"]
    assert {x["old"] for x in branches} == {"orig"}  # both start from the value before
    assert all(x["conflict"] == {"status": "open", "branch": True, "resolution": False}
               for x in branches)
    (c,) = await a.list_conflicts()
    await a.resolve_conflict(c["conflict_id"], "agreed")
    await network.wait_for_sync()
    for p in (a, b):
        top, *rest = (await p.get(f"/records/{rec}/history", field="Name"))["entries"][:3]
        assert (top["kind"], top["new"], top["display_name"]) == ("resolution", "agreed", "a")
        assert top["conflict"] == {"status": "resolved", "branch": False, "resolution": True}
        assert all(x["conflict"]["status"] == "resolved" and x["conflict"]["branch"]
                   for x in rest)
