"""View settings routes and `/records/list?ids=` (spec 05 §2, §4, J8) in-process.

Generic body checks run in tests/api/test_api.py through `BODIES` / `path_of`.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from openprod.core import ids
from tests.api.conftest import Api, error_of

SETTINGS = {
    "columns": [{"name": "dur", "width": 140, "hidden": False},
                {"name": "name", "hidden": True}, {"name": "later_field", "width": 90}],
    "sort": [{"field": "dur", "dir": "desc"}, {"field": "name"}],
    "filters": [{"field": "dur", "op": "gt", "value": 12},
                {"field": "kind", "op": "any_of", "value": ["go"]},
                {"field": "name", "op": "not_empty"},
                {"field": "page", "op": "lt"}],  # no value yet: kept, ignored until typed
    "search": "Cue",
    "stack": None,
}


async def _b_put(api: Api) -> dict[str, Any]:
    # settings may name a table not here (yet): it can arrive later by sync
    return {"table": "show.Cues", "settings": {"search": "x"}}


BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/views/settings": _b_put}
# view settings are this user's, kept in the engine home: nothing goes to the oplog
NO_WRITE = frozenset(BODIES)


async def path_of(api: Api, path: str) -> str | None:
    """A GET path of these routes that succeeds."""
    if path == "/views/settings":
        return "/views/settings?table=show.Cues"
    return None


async def test_defaults_then_round_trip(api: Api) -> None:
    t = await api.table()
    got = await api.ok("GET", f"/views/settings?table={t}")
    assert got["table"] == t
    assert got["settings"] == {"columns": [], "sort": [], "filters": [], "search": "",
                               "stack": None}
    assert got["stacks"] == []
    head = await api.head()
    r = await api.ok("POST", "/views/settings", {"table": t, "settings": SETTINGS})
    assert r["ok"] is True and r["seq"] == head  # not a workspace change
    got = (await api.ok("GET", f"/views/settings?table={t}"))["settings"]
    # normalised: defaults filled in, unknown field names kept for later
    assert got["columns"] == [{"name": "dur", "width": 140, "hidden": False},
                              {"name": "name", "hidden": True},
                              {"name": "later_field", "width": 90, "hidden": False}]
    assert got["sort"] == [{"field": "dur", "dir": "desc"}, {"field": "name", "dir": "asc"}]
    assert got["filters"] == SETTINGS["filters"]
    assert got["search"] == "Cue" and got["stack"] is None
    # partial settings reset the rest to defaults
    await api.ok("POST", "/views/settings", {"table": t, "settings": {"search": "x"}})
    got = (await api.ok("GET", f"/views/settings?table={t}"))["settings"]
    assert got == {"columns": [], "sort": [], "filters": [], "search": "x", "stack": None}


async def test_stored_per_workspace_and_table_in_a_private_file(api: Api) -> None:
    t1, t2 = await api.table("Cues"), await api.table("Cast")
    await api.ok("POST", "/views/settings", {"table": t1, "settings": {"search": "one"}})
    await api.ok("POST", "/views/settings", {"table": t2, "settings": {"search": "two"}})
    path = api.home.path / "views.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data[api.ws_id][t1]["search"] == "one"
    assert data[api.ws_id][t2]["search"] == "two"
    assert not (api.home.path / "views.tmp").exists()
    # another workspace starts from the defaults
    await api.ok("POST", "/workspace/create", {"name": "Other show"})  # and opens it
    got = await api.ok("GET", f"/views/settings?table={t1}")
    assert got["settings"]["search"] == ""
    # a file edited by hand into nonsense reads as the defaults, and is rewritten on save
    path.write_text("[not, json")
    assert (await api.ok("GET", f"/views/settings?table={t1}"))["settings"]["search"] == ""
    await api.ok("POST", "/views/settings", {"table": t1, "settings": {"search": "z"}})
    assert (await api.ok("GET", f"/views/settings?table={t1}"))["settings"]["search"] == "z"


async def test_malformed_settings_are_refused_with_a_reason(api: Api) -> None:
    t = await api.table()
    cases: list[tuple[Any, str]] = [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"columns": "name"}, "columns must be a list"),
        ({"columns": [{"name": "x", "wide": 3}]}, "unknown key 'wide'"),
        ({"columns": [{"width": 3}]}, "needs 'name'"),
        ({"columns": [{"name": "x"}, {"name": "x"}]}, "listed twice"),
        ({"columns": [{"name": "x", "width": "wide"}]}, "width"),
        ({"columns": [{"name": "x", "hidden": "yes"}]}, "hidden"),
        ({"sort": [{"field": "x", "dir": "up"}]}, "'asc' or 'desc'"),
        ({"sort": [{"field": ""}]}, "field name"),
        ({"filters": [{"field": "x", "op": "like", "value": "a"}]}, "unknown operator 'like'"),
        ({"filters": [{"field": "x", "op": "gt", "value": "ten"}]}, "must be a number"),
        ({"filters": [{"field": "x", "op": "gt", "value": True}]}, "must be a number"),
        ({"filters": [{"field": "x", "op": "empty", "value": 1}]}, "takes no value"),
        ({"filters": [{"field": "x", "op": "before", "value": "May 1"}]}, "YYYY-MM-DD"),
        ({"filters": [{"field": "x", "op": "any_of", "value": "go"}]}, "list of strings"),
        ({"filters": [{"op": "empty"}]}, "needs 'field'"),
        ({"search": 3}, "search must be a string"),
        ({"stack": {"edge_type": "a.b"}}, "needs 'parent'"),
        ({"stack": {"edge_type": "a.b", "parent": "nope"}}, "record id"),
    ]
    for settings, words in cases:
        resp = await api.post("/views/settings", {"table": t, "settings": settings})
        err = await error_of(resp, 400, "invalid")
        assert words in err["message"], (settings, err)
        assert err["details"]["field"] == "settings"
    await error_of(await api.post("/views/settings", {"table": t, "settings": []}), 400,
                   "invalid")
    await error_of(await api.get("/views/settings"), 400, "invalid")
    assert (await api.ok("GET", f"/views/settings?table={t}"))["settings"]["search"] == ""
    assert not (api.home.path / "views.json").exists()


async def test_stacks_of_a_module_table_and_a_stack_setting(api: Api) -> None:
    await api.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
    got = await api.ok("GET", "/views/settings?table=lighting_cues.Cues")
    assert got["stacks"] == [{"edge_type": "lighting_cues.cue_stack", "label": "In cue list",
                              "parent_table": "lighting_cues.CueLists"}]
    assert (await api.ok("GET", "/views/settings?table=lighting_cues.CueLists"))["stacks"] == []
    parent = ids.to_text(ids.new_id())
    stack = {"edge_type": "lighting_cues.cue_stack", "parent": parent}
    await api.ok("POST", "/views/settings",
                 {"table": "lighting_cues.Cues", "settings": {"stack": stack}})
    got = await api.ok("GET", "/views/settings?table=lighting_cues.Cues")
    assert got["settings"]["stack"] == stack


async def test_stacks_of_a_workspace_edge_type_come_from_its_links(api: Api) -> None:
    items, lists = await api.table("Items"), await api.table("Lists")
    await api.ok("POST", "/edge-types/create", {"type": "show.in", "label": "In",
                                                "ordered": True})
    assert (await api.ok("GET", f"/views/settings?table={items}"))["stacks"] == []
    a, parent = await api.record(items, Name="a"), await api.record(lists, Name="L")
    await api.ok("POST", "/edges/create", {"type": "show.in", "src": a, "dst": parent})
    assert (await api.ok("GET", f"/views/settings?table={items}"))["stacks"] == [
        {"edge_type": "show.in", "label": "In", "parent_table": lists}]
    assert (await api.ok("GET", f"/views/settings?table={lists}"))["stacks"] == []


# --- /records/list?ids= -------------------------------------------------------------------------

async def _name_field(api: Api, t: str) -> str:
    tables = (await api.ok("GET", "/tables/list"))["tables"]
    (tab,) = [x for x in tables if x["id"] == t]
    return str(next(f["name"] for f in tab["fields"] if f["label"] == "Name"))


async def test_records_list_ids(api: Api) -> None:
    t = await api.table()
    a, b, c = [await api.record(t, Name=n) for n in "abc"]
    other = await api.record(await api.table("Cast"), Name="elsewhere")
    ghost = ids.to_text(ids.new_id())
    got = await api.ok("GET", f"/records/list?table={t}&ids={c},{a},{ghost},{other}")
    assert sorted(r["id"] for r in got["records"]) == sorted([a, c])
    name = await _name_field(api, t)
    assert {r["values"][name] for r in got["records"]} == {"a", "c"}
    await api.ok("POST", "/records/delete", {"ids": [a]})
    got = await api.ok("GET", f"/records/list?table={t}&ids={a},{b}")
    assert [r["id"] for r in got["records"]] == [b]
    assert (await api.ok("GET", f"/records/list?table={t}&ids="))["records"] == []
    await error_of(await api.get(f"/records/list?table={t}&ids=nope"), 400, "invalid")


async def test_records_list_ids_through_the_active_overlay(api: Api) -> None:
    t = await api.table()
    a, b = await api.record(t, Name="a"), await api.record(t, Name="b")
    await api.ok("POST", "/overlays/create", {"name": "Plan B"})
    name = await _name_field(api, t)
    await api.ok("POST", "/records/update", {"id": a, "values": {name: "staged a"}})
    new = (await api.ok("POST", "/records/create", {"table": t, "values": {name: "n"}}))["id"]
    got = await api.ok("GET", f"/records/list?table={t}&ids={a},{new}")
    by_id = {r["id"]: r for r in got["records"]}
    assert set(by_id) == {a, new}
    assert by_id[a]["values"][name] == "staged a" and by_id[a]["staged"] == [name]
    got = await api.ok("GET", f"/records/list?table={t}&ids={a},{b}&canonical=1")
    assert {r["values"][name] for r in got["records"]} == {"a", "b"}


async def test_a_table_named_by_label_shares_the_settings_of_its_id(api: Api) -> None:
    t = await api.table("Cues")
    await api.ok("POST", "/views/settings", {"table": "Cues", "settings": {"search": "q"}})
    got = await api.ok("GET", f"/views/settings?table={t}")
    assert (got["table"], got["settings"]["search"]) == (t, "q")
