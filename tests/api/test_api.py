"""The HTTP/WebSocket API in-process (Quart test client, no Hypercorn).

Every route of `actors.api.ROUTES` has a success case here; every command route is also driven
through the generic refusals (malformed JSON, a body that is not an object, each required key
missing, each key of the wrong type, no token, wrong method), each checked to write nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from quart.testing.connections import WebsocketDisconnectError

from actors import api as apimod
from actors import events
from actors.api import COOKIE, MAX_BODY, ROUTES, WEB_DIR, Route
from openprod.core import ids
from tests.api import co_helpers
from tests.api import test_blobs_api as blobs_helpers
from tests.api import test_csv_api as csv_helpers
from tests.api import test_fork_api as fork_helpers
from tests.api import test_history_api as history_helpers
from tests.api import test_lifecycle_api as lifecycle_helpers
from tests.api import test_modules_api as modules_helpers
from tests.api import test_rules_api as rules_helpers
from tests.api import test_scripts_api as scripts_helpers
from tests.api import test_sync_api as sync_helpers
from tests.api import test_views_api as views_helpers
from tests.api.conftest import HOST, ORIGIN, Api, error_of, ws_json

HEX64 = set("0123456789abcdef")


def _key(r: Route) -> str:
    return f"{r.method} {r.path}"


def _is_id(x: Any) -> bool:
    try:
        ids.from_text(x)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def _is_hex64(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and set(x) <= HEX64


async def _edge_setup(api: Api) -> dict[str, str]:
    """A table with three records and an ordered edge type with two links into `c`."""
    t = await api.table()
    a, b, c = [await api.record(t, Name=n) for n in "abc"]
    await api.ok("POST", "/edge-types/create",
                 {"type": "show.next", "label": "Next", "ordered": True})
    e1 = (await api.ok("POST", "/edges/create", {"type": "show.next", "src": a, "dst": c}))["id"]
    e2 = (await api.ok("POST", "/edges/create",
                       {"type": "show.next", "src": b, "dst": c, "after": e1}))["id"]
    return {"table": t, "a": a, "b": b, "c": c, "e1": e1, "e2": e2}


# --- a valid request for every route ---------------------------------------------------------
# BODIES builds a valid body for each command (creating what it needs); PATHS a concrete path for
# routes with parameters or required query parameters.

async def _b_identity(api: Api) -> dict[str, Any]:
    return {"display_name": "Bob", "device_name": "Desk"}


async def _b_ws_create(api: Api) -> dict[str, Any]:
    return {"name": "Second show"}


async def _b_ws_open(api: Api) -> dict[str, Any]:
    return {"id": api.ws_id}


async def _b_table(api: Api) -> dict[str, Any]:
    return {"label": "Contacts", "fields": [{"label": "Name"}]}


async def _b_add_field(api: Api) -> dict[str, Any]:
    return {"table": await api.table(), "label": "Page", "type": "integer"}


async def _b_rec_create(api: Api) -> dict[str, Any]:
    return {"table": await api.table(), "values": {"Name": "x"}}


async def _b_rec_update(api: Api) -> dict[str, Any]:
    t = await api.table()
    return {"id": await api.record(t, Name="x"), "values": {"Name": "y"}}


async def _b_rec_delete(api: Api) -> dict[str, Any]:
    t = await api.table()
    return {"ids": [await api.record(t, Name="x")]}


async def _b_etype(api: Api) -> dict[str, Any]:
    return {"type": "show.next", "label": "Next", "ordered": True}


async def _b_edge(api: Api) -> dict[str, Any]:
    s = await _edge_setup(api)
    return {"type": "show.next", "src": s["a"], "dst": s["b"]}


async def _b_edge_delete(api: Api) -> dict[str, Any]:
    return {"id": (await _edge_setup(api))["e1"]}


async def _b_edge_reorder(api: Api) -> dict[str, Any]:
    s = await _edge_setup(api)
    return {"id": s["e2"], "before": s["e1"]}


async def _b_undo(api: Api) -> dict[str, Any]:
    t = await api.table()
    await api.record(t, Name="x")
    return {}


async def _b_redo(api: Api) -> dict[str, Any]:
    await _b_undo(api)
    await api.ok("POST", "/undo")
    return {}


BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/identity/update": _b_identity, "/workspace/create": _b_ws_create,
    "/workspace/open": _b_ws_open, "/tables/create": _b_table, "/tables/add-field": _b_add_field,
    "/records/create": _b_rec_create, "/records/update": _b_rec_update,
    "/records/delete": _b_rec_delete, "/edge-types/create": _b_etype, "/edges/create": _b_edge,
    "/edges/delete": _b_edge_delete, "/edges/reorder": _b_edge_reorder, "/undo": _b_undo,
    "/redo": _b_redo, **co_helpers.BODIES, **sync_helpers.BODIES,
    **lifecycle_helpers.BODIES, **fork_helpers.BODIES, **modules_helpers.BODIES,
    **rules_helpers.BODIES, **scripts_helpers.BODIES, **views_helpers.BODIES,
    **csv_helpers.BODIES,
}


async def _path(api: Api, r: Route) -> str:
    ours = await co_helpers.path_of(api, r.path) or await blobs_helpers.path_of(api, r.path)
    ours = ours or await history_helpers.path_of(api, r.path)
    ours = ours or await views_helpers.path_of(api, r.path)
    if ours is not None:
        return ours
    if r.path == "/records/<id>":
        return f"/records/{await api.record(await api.table(), Name='x')}"
    if r.path == "/records/list":
        return f"/records/list?table={await api.table()}"
    return r.path


POSTS = [r for r in ROUTES if r.method == "POST"]
GETS = [r for r in ROUTES if r.method == "GET"]


def test_every_command_has_a_body_factory() -> None:
    assert {r.path for r in POSTS} == set(BODIES)
    assert {r.method for r in ROUTES} == {"GET", "POST", "DELETE"}


# --- success, route by route -------------------------------------------------------------------

async def test_get_identity(api: Api) -> None:
    data = await api.ok("GET", "/identity")
    assert _is_hex64(data["actor_id"])
    assert data["display_name"] == "Tester"
    assert isinstance(data["device_name"], str) and data["device_name"]


async def test_update_identity(api: Api) -> None:
    head = await api.head()
    data = await api.ok("POST", "/identity/update",
                        {"display_name": " Bob ", "device_name": "Desk"})
    assert data["seq"] > head
    assert (data["display_name"], data["device_name"]) == ("Bob", "Desk")
    got = await api.ok("GET", "/identity")
    assert (got["display_name"], got["device_name"]) == ("Bob", "Desk")
    assert api.home.identity().display_name == "Bob"  # persisted in identity.json
    assert (await api.ok("GET", "/workspace/current"))["display_name"] == "Bob"
    for bad in ({"display_name": ""}, {"display_name": "   "}, {"device_name": "x" * 101}):
        await error_of(await api.post("/identity/update", bad), 400, "invalid")
    assert (await api.ok("GET", "/identity"))["display_name"] == "Bob"


async def test_workspace_list_current_state(api: Api) -> None:
    (w,) = (await api.ok("GET", "/workspace/list"))["workspaces"]
    assert (w["id"], w["name"], w["open"], w["state"]) == (api.ws_id, "Test show", True, "active")
    cur = await api.ok("GET", "/workspace/current")
    assert cur["id"] == api.ws_id and cur["name"] == "Test show"
    assert isinstance(cur["seq"], int) and cur["seq"] > 0
    assert cur["can_undo"] is False and cur["can_redo"] is False
    assert _is_hex64(cur["actor_id"])
    st = await api.ok("GET", "/workspace/state")
    assert _is_hex64(st["state_hash"]) and _is_hex64(st["oplog_digest"])
    assert st["seq"] == cur["seq"]
    await api.table()
    st2 = await api.ok("GET", "/workspace/state")
    assert st2["state_hash"] != st["state_hash"] and st2["seq"] > st["seq"]


async def test_workspace_create_and_open(api: Api) -> None:
    t = await api.table()
    made = await api.ok("POST", "/workspace/create", {"name": "  Second show "})
    new = made["workspace_id"]
    assert _is_id(new) and new != api.ws_id
    cur = await api.ok("GET", "/workspace/current")
    assert (cur["id"], cur["name"], cur["seq"]) == (new, "Second show", made["seq"])
    assert (await api.ok("GET", "/tables/list"))["tables"] == []
    listed = {w["id"]: w for w in (await api.ok("GET", "/workspace/list"))["workspaces"]}
    assert set(listed) == {api.ws_id, new}
    assert listed[new]["open"] and not listed[api.ws_id]["open"]

    back = await api.ok("POST", "/workspace/open", {"id": api.ws_id})
    assert back["workspace_id"] == api.ws_id
    assert (await api.ok("GET", "/workspace/current"))["id"] == api.ws_id
    assert [x["id"] for x in (await api.ok("GET", "/tables/list"))["tables"]] == [t]
    assert api.home.last() == api.ws_id


async def test_workspace_errors(api: Api) -> None:
    head = await api.head()
    err = await error_of(await api.post("/workspace/open", {"id": ids.to_text(ids.new_id())}),
                         404, "not_found")
    assert "workspace" in err["details"]
    await error_of(await api.post("/workspace/open", {"id": "../../etc"}), 400, "invalid")
    await error_of(await api.post("/workspace/create", {"name": "  "}), 400, "invalid")
    await error_of(await api.post("/workspace/create", {"name": "x" * 201}), 400, "invalid")
    assert len((await api.ok("GET", "/workspace/list"))["workspaces"]) == 1
    assert await api.head() == head


async def test_tables_create_list_add_field(api: Api) -> None:
    head = await api.head()
    t = await api.table()
    assert t.startswith("workspace.")
    listed = await api.ok("GET", "/tables/list")
    assert listed["seq"] > head
    (tab,) = listed["tables"]
    assert (tab["id"], tab["label"], tab["module"]) == (t, "Cues", "workspace")
    fields = {f["label"]: f for f in tab["fields"]}
    assert [f["label"] for f in tab["fields"]] == ["Name", "Dur", "Notes", "Kind"]
    assert fields["Name"]["type"] == "text" and fields["Dur"]["type"] == "float"
    assert fields["Notes"].get("crdt") is True
    assert fields["Kind"]["type"] == "enum"
    assert "go" in json.dumps(fields["Kind"]["options"])
    assert all(f["name"] for f in tab["fields"])

    r = await api.ok("POST", "/tables/add-field",
                     {"table": "Cues", "label": "Page", "type": "integer"})
    assert r["table"] == t and r["seq"] > listed["seq"]
    r2 = await api.ok("POST", "/tables/add-field", {"table": t, "label": "Script", "crdt": True})
    (tab,) = (await api.ok("GET", f"/tables/list?after={r2['seq']}"))["tables"]
    fields = {f["label"]: f for f in tab["fields"]}
    assert fields["Page"]["type"] == "integer"
    assert fields["Script"]["type"] == "text" and fields["Script"].get("crdt") is True


async def test_tables_errors(api: Api) -> None:
    t = await api.table()
    head = await api.head()
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/tables/create", {"label": "Cues"}, 400, "invalid"),  # duplicate name
        ("/tables/create", {"label": ""}, 400, "invalid"),
        ("/tables/create", {"label": "X", "fields": [{"label": "a", "type": "bogus"}]},
         400, "invalid"),
        ("/tables/create", {"label": "X", "fields": [1]}, 400, "invalid"),
        ("/tables/add-field", {"table": "nope", "label": "P"}, 404, "not_found"),
        ("/tables/add-field", {"table": t, "label": "Name"}, 400, "invalid"),  # duplicate field
        ("/tables/add-field", {"table": t, "label": "P", "type": "bogus"}, 400, "invalid"),
    ]
    for path, body, status, code in cases:
        await error_of(await api.post(path, body), status, code)
    assert await api.head() == head
    assert len((await api.ok("GET", "/tables/list"))["tables"]) == 1


async def test_records_crud(api: Api) -> None:
    t = await api.table()
    r = await api.ok("POST", "/records/create", {"table": t, "values": {
        "Name": "Cue 1", "Dur": 2.5, "Notes": "fade", "Kind": "go"}})
    rid = r["id"]
    assert _is_id(rid) and _is_id(r["bundle_id"]) and r["seq"] > 0
    assert await api.values(rid, after=r["seq"]) == {
        "Name": "Cue 1", "Dur": 2.5, "Notes": "fade", "Kind": "go"}
    rec = await api.ok("GET", f"/records/{rid}")
    assert rec["id"] == rid and rec["tables"] == [t] and rec["conflicts"] == []

    u = await api.ok("POST", "/records/update", {"id": rid, "values": {"Dur": 3, "Kind": None}})
    assert u["seq"] > r["seq"]
    assert await api.values(rid, after=u["seq"]) == {
        "Name": "Cue 1", "Dur": 3.0, "Notes": "fade", "Kind": None}

    other = await api.record(t, Name="Cue 2")
    listed = await api.ok("GET", "/records/list?table=Cues")  # a label works as well as the id
    assert [x["id"] for x in listed["records"]] == [rid, other]
    assert all(x["table"] == t and set(x) == {"id", "table", "values", "conflicts"}
               for x in listed["records"])
    assert listed["seq"] == await api.head()

    d = await api.ok("POST", "/records/delete", {"ids": [rid]})
    await error_of(await api.get(f"/records/{rid}?after={d['seq']}"), 404, "not_found")
    left = await api.ok("GET", f"/records/list?table={t}&after={d['seq']}")
    assert [x["id"] for x in left["records"]] == [other]


async def test_records_delete_several_and_from_one_table(api: Api) -> None:
    t = await api.table()
    t2 = await api.table("Contacts")
    a, b = await api.record(t, Name="a"), await api.record(t, Name="b")
    d = await api.ok("POST", "/records/delete", {"ids": [a, b], "table": t})
    assert (await api.ok("GET", f"/records/list?table={t}&after={d['seq']}"))["records"] == []
    await error_of(await api.get(f"/records/{a}?after={d['seq']}"), 404, "not_found")
    c = await api.record(t2, Name="c")
    err = await error_of(await api.post("/records/delete", {"ids": [c], "table": t}), 400,
                         "invalid")
    assert err["details"]["entity_id"] == c


async def test_records_not_found(api: Api) -> None:
    t = await api.table()
    rid = await api.record(t, Name="a")
    ghost = ids.to_text(ids.new_id())
    head = await api.head()
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/records/create", {"table": "nope", "values": {}}, 404, "not_found"),
        ("POST", "/records/create", {"table": t, "values": {"nope": 1}}, 404, "not_found"),
        ("POST", "/records/update", {"id": ghost, "values": {"Name": "x"}}, 404, "not_found"),
        ("POST", "/records/update", {"id": rid, "values": {"nope": "x"}}, 404, "not_found"),
        ("POST", "/records/update", {"id": rid, "values": {"Name": "x"}, "table": "nope"},
         404, "not_found"),
        ("POST", "/records/update", {"id": rid, "values": {}}, 400, "invalid"),
        ("POST", "/records/update", {"id": "zz", "values": {"Name": "x"}}, 400, "invalid"),
        ("POST", "/records/delete", {"ids": [ghost]}, 404, "not_found"),
        ("POST", "/records/delete", {"ids": [rid], "table": "nope"}, 404, "not_found"),
        ("POST", "/records/delete", {"ids": []}, 400, "invalid"),
        ("POST", "/records/delete", {"ids": [rid, 3]}, 400, "invalid"),
        ("GET", f"/records/{ghost}", None, 404, "not_found"),
        ("GET", "/records/not-an-id", None, 400, "invalid"),
        ("GET", "/records/list?table=nope", None, 404, "not_found"),
        ("GET", "/records/list", None, 400, "invalid"),
    ]
    for method, path, body, status, code in cases:
        resp = await (api.get(path) if method == "GET" else api.post(path, body))
        await error_of(resp, status, code)
    assert await api.head() == head
    assert (await api.values(rid))["Name"] == "a"


async def test_wrong_value_type_writes_nothing(api: Api) -> None:
    t = await api.table()
    rid = await api.record(t, Name="a", Dur=1.0)
    before = await api.ok("GET", "/workspace/state")
    bad: list[tuple[str, dict[str, Any]]] = [
        ("/records/create", {"table": t, "values": {"Name": "b", "Dur": "abc"}}),
        ("/records/create", {"table": t, "values": {"Kind": "not a choice"}}),
        ("/records/create", {"table": t, "values": {"Name": 5}}),
        ("/records/update", {"id": rid, "values": {"Dur": "abc"}}),
        ("/records/update", {"id": rid, "values": {"Dur": True}}),
        # one good and one bad update in one request: all or nothing
        ("/records/update", {"updates": [{"id": rid, "values": {"Name": "changed"}},
                                         {"id": rid, "values": {"Dur": "abc"}}]}),
    ]
    for path, body in bad:
        err = await error_of(await api.post(path, body), 400, "invalid")
        assert err["message"]
    after = await api.ok("GET", "/workspace/state")
    assert after == before, "a refused command changed the oplog"
    assert await api.values(rid) == {"Name": "a", "Dur": 1.0, "Notes": None, "Kind": None}
    assert len((await api.ok("GET", f"/records/list?table={t}"))["records"]) == 1


async def test_deleted_record_edit_is_409(api: Api) -> None:
    t = await api.table()
    a, b = await api.record(t, Name="a"), await api.record(t, Name="b")
    await api.ok("POST", "/edge-types/create", {"type": "show.link", "label": "Link"})
    await api.ok("POST", "/records/delete", {"ids": [a]})
    head = await api.head()
    err = await error_of(await api.post("/records/update", {"id": a, "values": {"Name": "x"}}),
                         409, "entity_deleted")
    assert err["details"]["entity_id"] == a
    await error_of(await api.post("/records/delete", {"ids": [a]}), 409, "entity_deleted")
    await error_of(await api.post("/edges/create", {"type": "show.link", "src": b, "dst": a}),
                   409, "entity_deleted")
    assert await api.head() == head


async def test_edge_types(api: Api) -> None:
    r = await api.ok("POST", "/edge-types/create",
                     {"type": "show.link", "label": "Link", "props": {"note": "text"}})
    assert r["seq"] > 0
    await api.ok("POST", "/edge-types/create",
                 {"type": "show.next", "label": "Next", "ordered": True})
    types = {e["type"]: e for e in (await api.ok("GET", "/edge-types/list"))["edge_types"]}
    assert types["show.link"] == {"type": "show.link", "ordered": False, "label": "Link",
                                  "props": {"note": "text"}}
    assert types["show.next"]["ordered"] is True
    head = await api.head()
    for body in ({"type": "bad", "label": "X"},  # not module.name
                 {"type": "show.x", "label": "X", "props": {"note": "bogus"}},
                 {"type": "show.next", "label": "Next", "ordered": False}):  # ordered differs
        await error_of(await api.post("/edge-types/create", body), 400, "invalid")
    assert await api.head() == head


async def test_edges_create_list_reorder_delete(api: Api) -> None:
    s = await _edge_setup(api)
    a, b, c, e1, e2 = s["a"], s["b"], s["c"], s["e1"], s["e2"]
    listed = (await api.ok("GET", f"/edges/list?entity={c}&type=show.next"))["edges"]
    assert [e["id"] for e in listed] == [e1, e2]
    assert [(e["src"], e["dst"], e["type"]) for e in listed] == [
        (a, c, "show.next"), (b, c, "show.next")]
    assert (await api.ok("GET", f"/edges/list?entity={c}&direction=out"))["edges"] == []
    assert len((await api.ok("GET", f"/edges/list?entity={a}&direction=out"))["edges"]) == 1
    assert len((await api.ok("GET", "/edges/list"))["edges"]) == 2
    ghost = ids.to_text(ids.new_id())
    assert (await api.ok("GET", f"/edges/list?entity={ghost}"))["edges"] == []

    r = await api.ok("POST", "/edges/reorder", {"id": e2, "before": e1})
    listed = (await api.ok("GET", f"/edges/list?entity={c}&type=show.next&after={r['seq']}"))
    assert [e["id"] for e in listed["edges"]] == [e2, e1]
    r = await api.ok("POST", "/edges/reorder", {"id": e2, "after": e1})
    listed = (await api.ok("GET", f"/edges/list?entity={c}&after={r['seq']}"))
    assert [e["id"] for e in listed["edges"]] == [e1, e2]

    d = await api.ok("POST", "/edges/delete", {"id": e1})
    listed = (await api.ok("GET", f"/edges/list?entity={c}&after={d['seq']}"))
    assert [e["id"] for e in listed["edges"]] == [e2]


async def test_edge_props(api: Api) -> None:
    t = await api.table()
    a, b = await api.record(t, Name="a"), await api.record(t, Name="b")
    await api.ok("POST", "/edge-types/create",
                 {"type": "show.link", "label": "Link", "props": {"note": "text"}})
    e = await api.ok("POST", "/edges/create",
                     {"type": "show.link", "src": a, "dst": b, "props": {"note": "hi"}})
    (edge,) = (await api.ok("GET", f"/edges/list?entity={a}&after={e['seq']}"))["edges"]
    assert edge["id"] == e["id"] and edge["props"] == {"note": "hi"}
    head = await api.head()
    for props in ({"note": 5}, {"nope": "x"}):
        await error_of(await api.post("/edges/create", {"type": "show.link", "src": a, "dst": b,
                                                        "props": props}), 400, "invalid")
    assert await api.head() == head


async def test_edges_errors(api: Api) -> None:
    s = await _edge_setup(api)
    ghost = ids.to_text(ids.new_id())
    head = await api.head()
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/edges/create", {"type": "show.nope", "src": s["a"], "dst": s["b"]},
         404, "not_found"),
        ("POST", "/edges/create", {"type": "show.next", "src": ghost, "dst": s["b"]},
         404, "not_found"),
        ("POST", "/edges/create", {"type": "show.next", "src": "x", "dst": s["b"]},
         400, "invalid"),
        ("POST", "/edges/delete", {"id": ghost}, 404, "not_found"),
        ("POST", "/edges/reorder", {"id": ghost, "before": s["e1"]}, 404, "not_found"),
        ("POST", "/edges/reorder", {"id": s["e2"], "before": ghost}, 404, "not_found"),
        ("GET", f"/edges/list?entity={s['c']}&direction=sideways", None, 400, "invalid"),
        ("GET", "/edges/list?entity=xx", None, 400, "invalid"),
    ]
    for method, path, body, status, code in cases:
        resp = await (api.get(path) if method == "GET" else api.post(path, body))
        await error_of(resp, status, code)
    await api.ok("POST", "/edges/delete", {"id": s["e1"]})
    await error_of(await api.post("/edges/delete", {"id": s["e1"]}), 404, "not_found")
    assert await api.head() == head + 1


async def test_undo_redo(api: Api) -> None:
    empty = await api.ok("POST", "/undo")
    assert empty["status"] == "empty" and empty["bundle_id"] is None
    assert empty["can_undo"] is False and empty["seq"] == await api.head()
    assert (await api.ok("POST", "/redo"))["status"] == "empty"

    t = await api.table()
    rid = await api.record(t, Name="a")
    u = await api.ok("POST", "/records/update", {"id": rid, "values": {"Name": "b"}})
    undone = await api.ok("POST", "/undo")
    assert undone["status"] == "applied" and _is_id(undone["bundle_id"])
    assert undone["seq"] > u["seq"]
    assert undone["can_redo"] is True and undone["can_undo"] is True
    assert undone["skipped"] == [] and undone["edges_not_restored"] == []
    assert (await api.values(rid, after=undone["seq"]))["Name"] == "a"
    cur = await api.ok("GET", "/workspace/current")
    assert cur["can_undo"] is True and cur["can_redo"] is True

    redone = await api.ok("POST", "/redo")
    assert redone["status"] == "applied" and redone["can_redo"] is False
    assert (await api.values(rid, after=redone["seq"]))["Name"] == "b"
    assert (await api.ok("POST", "/redo"))["status"] == "empty"

    # undo the delete of a record brings it back
    d = await api.ok("POST", "/records/delete", {"ids": [rid]})
    await error_of(await api.get(f"/records/{rid}?after={d['seq']}"), 404, "not_found")
    back = await api.ok("POST", "/undo")
    assert (await api.values(rid, after=back["seq"]))["Name"] == "b"


async def test_multi_record_update_is_one_undo_step(api: Api) -> None:
    t = await api.table()
    recs = [await api.record(t, Name=f"r{i}", Dur=float(i)) for i in range(3)]
    head = await api.head()
    r = await api.ok("POST", "/records/update", {"updates": [
        {"id": rid, "values": {"Name": f"pasted {i}", "Dur": 10.0 + i}}
        for i, rid in enumerate(recs)]})
    assert _is_id(r["bundle_id"]) and r["seq"] > head
    for i, rid in enumerate(recs):
        assert await api.values(rid, after=r["seq"]) == {
            "Name": f"pasted {i}", "Dur": 10.0 + i, "Notes": None, "Kind": None}
    u = await api.ok("POST", "/undo")
    assert u["status"] == "applied"
    for i, rid in enumerate(recs):  # one undo reverts all three
        vals = await api.values(rid, after=u["seq"])
        assert (vals["Name"], vals["Dur"]) == (f"r{i}", float(i))
    redo = await api.ok("POST", "/redo")
    for i, rid in enumerate(recs):
        assert (await api.values(rid, after=redo["seq"]))["Name"] == f"pasted {i}"


async def test_read_your_writes(api: Api) -> None:
    t = await api.table()
    rid = await api.record(t, Name="v0")
    for i in range(1, 8):
        r = await api.ok("POST", "/records/update", {"id": rid, "values": {"Name": f"v{i}"}})
        rec = await api.ok("GET", f"/records/{rid}?after={r['seq']}")
        assert f"v{i}" in rec["values"].values()
        rows = await api.ok("GET", f"/records/list?table={t}&after={r['seq']}")
        assert f"v{i}" in rows["records"][0]["values"].values()
        assert rows["seq"] >= r["seq"]
    f = await api.ok("POST", "/tables/add-field", {"table": t, "label": "Page"})
    (tab,) = (await api.ok("GET", f"/tables/list?after={f['seq']}"))["tables"]
    assert "Page" in [x["label"] for x in tab["fields"]]


async def test_after_parameter(api: Api) -> None:
    head = await api.head()
    assert (await api.ok("GET", f"/tables/list?after={head}"))["seq"] == head
    await api.ok("GET", "/tables/list?after=0")
    err = await error_of(await api.get(f"/tables/list?after={head + 1}"), 400, "invalid")
    assert err["details"] == {"field": "after", "head": head}
    await error_of(await api.get("/tables/list?after=abc"), 400, "invalid")
    await error_of(await api.get(f"/edges/list?after={head + 100}"), 400, "invalid")
    await error_of(await api.get(f"/edge-types/list?after={head + 100}"), 400, "invalid")
    t = await api.table()
    rid = await api.record(t)
    await error_of(await api.get(f"/records/{rid}?after=999999"), 400, "invalid")
    await error_of(await api.get(f"/records/list?table={t}&after=999999"), 400, "invalid")


async def test_after_times_out_with_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A projection that cannot reach `after` in time is the engine's problem: 503, retry."""
    monkeypatch.setattr(apimod, "AFTER_TIMEOUT_S", 0.05)
    session = api.node.current
    session.writer.appended += 1  # pretend a write the projection will never apply
    try:
        await error_of(await api.get(f"/tables/list?after={session.writer.appended}"),
                       503, "timeout")
    finally:
        session.writer.appended -= 1


# --- generic refusals on every route ------------------------------------------------------------

@pytest.mark.parametrize("route", POSTS, ids=_key)
async def test_command_malformed_json(api: Api, route: Route) -> None:
    await BODIES[route.path](api)  # same state as a successful call would have
    head = await api.head()
    for raw in (b"{bad", b'{"a": 1', b"\xff\xfe", b"{'single': 'quotes'}",
                b'{"table": NaN}', b'{"x": -Infinity}', b"[" * 100_000 + b"]" * 100_000):
        err = await error_of(await api.request("POST", route.path, data=raw), 400,
                             "malformed_json")
        assert "JSON" in err["message"]
    assert await api.head() == head


@pytest.mark.parametrize("route", POSTS, ids=_key)
async def test_command_body_must_be_an_object(api: Api, route: Route) -> None:
    head = await api.head()
    for body in ([1, 2], "text", 3, True, None):
        raw = json.dumps(body).encode()
        err = await error_of(await api.request("POST", route.path, data=raw), 400, "invalid")
        assert "object" in err["message"]
    assert await api.head() == head


@pytest.mark.parametrize("route", [r for r in POSTS if (r.body or {}).get("required")
                                   or r.path == "/records/update"], ids=_key)
async def test_command_missing_keys(api: Api, route: Route) -> None:
    body = await BODIES[route.path](api)
    required = (route.body or {}).get("required") or ["id", "values"]
    head = await api.head()
    for key in required:
        partial = {k: v for k, v in body.items() if k != key}
        err = await error_of(await api.post(route.path, partial), 400, "invalid")
        assert err["details"].get("field") == key, err
        assert key in err["message"]
        err = await error_of(await api.post(route.path, {**body, key: None}), 400, "invalid")
        assert err["details"].get("field") == key, err
    assert await api.head() == head
    assert len((await api.ok("GET", "/workspace/list"))["workspaces"]) == 1


WRONG = {"string": 12345, "integer": "x", "boolean": "yes", "object": "x", "array": "x"}


@pytest.mark.parametrize("route", [r for r in POSTS if (r.body or {}).get("properties")],
                         ids=_key)
async def test_command_wrong_typed_keys(api: Api, route: Route) -> None:
    body = await BODIES[route.path](api)
    props: dict[str, Any] = (route.body or {})["properties"]
    head = await api.head()
    for key, schema in props.items():
        bad = {**body, key: WRONG[schema["type"]]}
        err = await error_of(await api.post(route.path, bad), 400, "invalid")
        assert err["details"].get("field") == key, (key, err)
    assert await api.head() == head
    assert api.node.ident.display_name == "Tester"


@pytest.mark.parametrize("route", ROUTES, ids=_key)
async def test_route_needs_the_token(api: Api, route: Route) -> None:
    path = await _path(api, route)
    body = await BODIES[route.path](api) if route.method == "POST" else None
    head = await api.head()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": api.token},
                    {"Authorization": "Basic " + api.token}, {"Authorization": "Bearer é"},
                    {"Cookie": f"{COOKIE}=wrong"}, {"Cookie": f"{COOKIE}=é"}):
        resp = await api.request(route.method, path, body=body, headers=headers, auth=False)
        err = await error_of(resp, 401, "unauthorized")
        assert "token" in err["message"]
    assert await api.head() == head
    assert len((await api.ok("GET", "/workspace/list"))["workspaces"]) == 1


@pytest.mark.parametrize("route", ROUTES, ids=_key)
async def test_route_succeeds(api: Api, route: Route) -> None:
    path = await _path(api, route)
    if route.method == "GET":
        data = await api.ok("GET", path)
        assert isinstance(data, dict) and data
        return
    if route.method == "DELETE":
        body = await sync_helpers.prepare_delete(api, route.path)
        resp = await api.request("DELETE", path, body=body)
        assert resp.status_code == 200, await resp.get_json()
        assert isinstance((await resp.get_json())["seq"], int)
        return
    body = await BODIES[route.path](api)
    head = await api.head()
    data = await api.ok("POST", path, body)
    assert isinstance(data["seq"], int)
    if route.path not in ("/workspace/create", "/workspace/open", *co_helpers.NO_WRITE,
                          *sync_helpers.NO_WRITE, *fork_helpers.NO_WRITE,
                          *modules_helpers.NO_WRITE, *rules_helpers.NO_WRITE,
                          *scripts_helpers.NO_WRITE, *views_helpers.NO_WRITE,
                          *csv_helpers.NO_WRITE):
        assert data["seq"] > head, f"{route.path} did not write"


@pytest.mark.parametrize("route", ROUTES, ids=_key)
async def test_wrong_method_is_405(api: Api, route: Route) -> None:
    path = await _path(api, route)
    other = "POST" if route.method == "GET" else "GET"
    methods = ["PUT", "DELETE", "PATCH"]
    if not (other == "GET" and route.path.startswith("/records/")):  # GET /records/<id> exists
        methods.append(other)
    served = {r.method for r in ROUTES if r.path == route.path}  # e.g. GET|POST|DELETE /sync/peers
    for m in (m for m in methods if m not in served):
        err = await error_of(await api.request(m, path), 405, "method_not_allowed")
        assert err["message"]


async def test_unknown_route_is_404_json(api: Api) -> None:
    for path in ("/nope", "/records", "/tables/list/extra", "/api/v2/anything"):
        await error_of(await api.get(path), 404, "not_found")
    await error_of(await api.post("/nope", {}), 404, "not_found")


async def test_oversize_body_is_413(api: Api) -> None:
    t = await api.table()
    head = await api.head()
    big = json.dumps({"table": t, "values": {"Name": "x" * MAX_BODY}}).encode()
    assert len(big) > MAX_BODY
    err = await error_of(await api.request("POST", "/records/create", data=big), 413, "too_large")
    assert str(MAX_BODY) in err["message"]
    assert await api.head() == head
    # just under the limit is accepted
    ok = b" " * (MAX_BODY - 200) + json.dumps({"table": t, "values": {"Name": "y"}}).encode()
    resp = await api.request("POST", "/records/create", data=ok)
    assert resp.status_code == 200, await resp.get_data()


async def test_internal_error_is_500_json(api: Api, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    async def broken(fn: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.node.current.reader, "read", broken)
    with caplog.at_level(logging.ERROR, logger="openprod.api"):
        err = await error_of(await api.get("/tables/list"), 500, "internal")
    assert "secret" not in err["message"]
    assert "secret internals" in caplog.text  # logged for the operator


async def test_shutting_down_is_503(api: Api) -> None:
    t = await api.table()
    head = await api.head()
    api.node.current.writer.close()
    err = await error_of(await api.post("/records/create", {"table": t}), 503, "shutting_down")
    assert "shutting down" in err["message"]
    # queries still answer
    assert [x["id"] for x in (await api.ok("GET", f"/tables/list?after={head}"))["tables"]] == [t]


# --- auth, Host and Origin ----------------------------------------------------------------------

async def test_open_paths_need_no_token(api: Api) -> None:
    for path in ("/", "/static/index.html", "/api/openapi.json"):
        resp = await api.get(path, auth=False)
        assert resp.status_code == 200, path
    page = await api.get("/", auth=False)
    assert "text/html" in page.content_type
    assert (await page.get_data()) == (WEB_DIR / "index.html").read_bytes()
    for path in ("/static/missing.js", "/static/../pyproject.toml",
                 "/static/%2e%2e/pyproject.toml"):
        await error_of(await api.get(path, auth=False), 404, "not_found")


async def test_token_link_sets_cookie_and_redirects(api: Api) -> None:
    resp = await api.get(f"/?token={api.token}", auth=False)
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}={api.home.session_secret()};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    # the test client's cookie jar now carries the token: no Authorization header needed
    assert (await api.get("/identity", auth=False)).status_code == 200


async def test_wrong_token_link_is_401(api: Api) -> None:
    for token in ("not-the-token", "%C3%A9t%C3%A9", api.token[:-1]):
        resp = await api.get(f"/?token={token}", auth=False)
        await error_of(resp, 401, "unauthorized")
        assert "Set-Cookie" not in resp.headers
    await error_of(await api.get("/identity", auth=False), 401, "unauthorized")


async def test_cookie_authorizes(api: Api) -> None:
    resp = await api.get("/identity", auth=False, headers={"Cookie": f"{COOKIE}={api.token}"})
    assert resp.status_code == 200
    t = await api.table()
    resp = await api.post("/records/create", {"table": t}, auth=False,
                          headers={"Cookie": f"{COOKIE}={api.token}", "Origin": ORIGIN})
    assert resp.status_code == 200


async def test_foreign_host_is_403(api: Api) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    for host in ("evil.example", "evil.example:0", "127.0.0.1:1", "127.0.0.2:0", ""):
        for path in ("/identity", "/", "/api/openapi.json", "/static/index.html"):
            err = await error_of(await api.get(path, headers={"Host": host}), 403, "forbidden")
            assert "Host" in err["message"]
    head = await api.head()
    await error_of(await api.post("/tables/create", {"label": "X"},
                                  headers={"Host": "evil.example"}), 403, "forbidden")
    assert await api.head() == head
    assert (await api.get("/identity", headers={"Host": "localhost:0"})).status_code == 200


async def test_foreign_origin_is_403(api: Api) -> None:
    head = await api.head()
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:0",
                   "http://127.0.0.1:0.evil.example"):
        err = await error_of(await api.post("/tables/create", {"label": "X"},
                                            headers={"Origin": origin}), 403, "forbidden")
        assert "Origin" in err["message"]
        await error_of(await api.get("/identity", headers={"Origin": origin}), 403, "forbidden")
    assert await api.head() == head
    for origin in (ORIGIN, "http://localhost:0"):
        resp = await api.post("/tables/create", {"label": f"From {origin}"},
                              headers={"Origin": origin})
        assert resp.status_code == 200


# --- WebSocket /events ----------------------------------------------------------------------------

def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [x for sub in e.exceptions for x in _leaves(sub)]
    return [e]


async def _refused(api: Api, path: str, headers: dict[str, str]) -> int:
    """Connect and expect the server to close before accepting; return the close code."""
    conn: Any = None
    try:
        with trio.fail_after(10):
            async with api.client.websocket(path, headers=headers) as conn:
                await conn.receive()
    except (WebsocketDisconnectError, ExceptionGroup) as exc:
        (leaf,) = _leaves(exc)
        assert isinstance(leaf, WebsocketDisconnectError), leaf
        assert conn is not None and not conn.accepted
        return int(leaf.args[0])
    raise AssertionError("the WebSocket was accepted")


async def test_events_records_changed(api: Api) -> None:
    async with api.client.websocket("/events", headers=api.headers) as conn:
        hello = await ws_json(conn)
        assert hello["type"] == "hello" and hello["workspace_id"] == api.ws_id
        t = await api.table()
        ev = await ws_json(conn)
        assert ev["type"] == "tables_changed" and ev["event_id"] > hello["event_id"]
        r = await api.ok("POST", "/records/create", {"table": t, "values": {"Name": "a"}})
        ev = await ws_json(conn)
        assert ev == {"type": "records_changed", "table": t, "entity_ids": [r["id"]],
                      "seq": r["seq"], "event_id": ev["event_id"]}
        b = await api.record(t, Name="b")
        await ws_json(conn)
        u = await api.ok("POST", "/records/update", {"updates": [
            {"id": r["id"], "values": {"Name": "A"}}, {"id": b, "values": {"Name": "B"}}]})
        ev = await ws_json(conn)
        assert ev["type"] == "records_changed" and ev["seq"] == u["seq"]
        assert sorted(ev["entity_ids"]) == sorted([r["id"], b])


async def test_events_reconnect_since(api: Api) -> None:
    t = await api.table()
    await api.settled()
    async with api.client.websocket("/events", headers=api.headers) as conn:
        hello = await ws_json(conn)
        await api.record(t, Name="seen")
        seen = await ws_json(conn)
        assert seen["type"] == "records_changed"
    missed = [await api.ok("POST", "/records/create", {"table": t, "values": {"Name": str(i)}})
              for i in range(3)]
    await api.settled()  # once the projection applied them, their events are in the buffer
    async with api.client.websocket(f"/events?since={seen['event_id']}",
                                    headers=api.headers) as conn:
        hello = await ws_json(conn)
        assert hello["type"] == "hello"
        got: list[dict[str, Any]] = []
        while not got or got[-1]["event_id"] < hello["event_id"]:
            got.append(await ws_json(conn))
        # the deriver may batch several commits into one event; none is lost or repeated
        assert {e for ev in got for e in ev["entity_ids"]} == {m["id"] for m in missed}
        assert [e["event_id"] for e in got] == list(
            range(seen["event_id"] + 1, hello["event_id"] + 1))
        assert got[-1]["seq"] == missed[-1]["seq"]
        live = await api.record(t, Name="live")
        ev = await ws_json(conn)
        assert ev["entity_ids"] == [live] and ev["event_id"] == hello["event_id"] + 1


async def test_events_too_old_since_resyncs(api: Api) -> None:
    for _ in range(events.BUFFER + 5):
        api.node.hub.publish({"type": "noise"})
    async with api.client.websocket("/events?since=1", headers=api.headers) as conn:
        hello = await ws_json(conn)
        assert await ws_json(conn) == {"type": "resync", "event_id": hello["event_id"]}
        t = await api.table()  # live events continue after the resync
        assert (await ws_json(conn))["type"] == "tables_changed"
        assert t


async def test_events_slow_client_gets_resync(api: Api) -> None:
    async with api.client.websocket("/events", headers=api.headers) as conn:
        await ws_json(conn)
        n = events.SUBSCRIBER_QUEUE + 10
        for i in range(n):  # published without yielding: the subscriber's queue overflows
            api.node.hub.publish({"type": "noise", "i": i})
        got = []
        while (ev := await ws_json(conn))["type"] == "noise":
            got.append(ev["i"])
        assert ev["type"] == "resync"
        # what was queued arrives in order, then resync instead of the rest
        assert events.SUBSCRIBER_QUEUE <= len(got) < n
        assert got == list(range(len(got)))
        assert api.node.hub.subscribers == 0


async def test_events_workspace_opened(api: Api) -> None:
    async with api.client.websocket("/events", headers=api.headers) as conn:
        await ws_json(conn)
        made = await api.ok("POST", "/workspace/create", {"name": "Other"})
        ev = await ws_json(conn)
        assert ev["type"] == "workspace_opened" and ev["workspace_id"] == made["workspace_id"]
        # events of the new workspace flow on the same connection
        await api.table()
        assert (await ws_json(conn))["type"] == "tables_changed"


async def test_events_auth(api: Api) -> None:
    h = {"Host": HOST}
    async with api.client.websocket(f"/events?token={api.token}", headers=h) as conn:
        assert (await ws_json(conn))["type"] == "hello"
    async with api.client.websocket(
            "/events", headers={**h, "Cookie": f"{COOKIE}={api.token}", "Origin": ORIGIN}) as conn:
        assert (await ws_json(conn))["type"] == "hello"
    assert await _refused(api, "/events", h) == 1008
    assert await _refused(api, "/events?token=wrong", h) == 1008
    assert await _refused(api, "/events?token=%C3%A9", h) == 1008
    assert await _refused(api, "/events", {**h, "Authorization": "Bearer wrong"}) == 1008


async def test_events_host_and_origin(api: Api) -> None:
    assert await _refused(api, "/events", {**api.headers, "Origin": "http://evil.example"}) \
        == 1008
    assert await _refused(api, f"/events?token={api.token}",
                          {"Host": HOST, "Origin": "http://evil.example"}) == 1008
    assert await _refused(api, "/events", {**api.headers, "Host": "evil.example"}) == 1008
    assert api.node.hub.subscribers == 0
    async with api.client.websocket("/events",
                                    headers={**api.headers, "Origin": ORIGIN}) as conn:
        assert (await ws_json(conn))["type"] == "hello"


async def test_events_closed_with_1001_on_shutdown(api: Api) -> None:
    async with api.client.websocket("/events", headers=api.headers) as conn:
        await ws_json(conn)
        assert api.node.hub.subscribers == 1
        api.node.shutdown.set()
        with trio.fail_after(10), pytest.raises(WebsocketDisconnectError) as exc:
            await conn.receive()
        assert exc.value.args[0] == 1001
