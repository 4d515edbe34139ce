"""Edge property conflicts through the API: /conflicts/list shows kind "property" (entity_id =
the edge id, field_name = the property name) and /conflicts/resolve closes it."""

from __future__ import annotations

from typing import Any

from openprod.core import ids
from tests.api.co_helpers import Other, next_event
from tests.api.conftest import Api, error_of


async def _property_conflict(api: Api) -> dict[str, Any]:
    table = await api.table()
    x = await api.record(table, Name="x")
    y = await api.record(table, Name="y")
    await api.ok("POST", "/edge-types/create", {"type": "test.link", "label": "Link",
                                                 "props": {"role": "text"}})
    edge = (await api.ok("POST", "/edges/create", {"type": "test.link", "src": x, "dst": y,
                                                   "props": {"role": "orig"}}))["id"]
    other = Other(api, named=True)
    try:
        await other.pull()
        await api.node.current.writer.call(lambda ws: ws.set_edge_property(edge, "role", "mine"))
        other.ws.set_edge_property(edge, "role", "theirs")
        seq = await other.push()
    finally:
        other.close()
    data = await api.ok("GET", f"/conflicts/list?after={seq}")
    (c,) = data["conflicts"]
    return {"edge": edge, "src": x, "dst": y, "conflict": c, "count": data["count_open"]}


async def test_list_and_resolve_property_conflict(api: Api) -> None:
    pc = await _property_conflict(api)
    c = pc["conflict"]
    assert pc["count"] == 1
    assert c["kind"] == "property" and c["status"] == "open"
    assert c["entity_id"] == pc["edge"] and c["field_name"] == "role"
    assert c["property"] == "role" and c["table"] is None
    assert (c["edge_type"], c["src"], c["dst"]) == ("test.link", pc["src"], pc["dst"])
    assert {t["value"] for t in c["tips"]} == {"mine", "theirs"}
    assert {t["actor_name"] for t in c["tips"]} == {"Tester", "Other"}
    # a value of the wrong type for the declared property type changes nothing
    head = await api.head()
    await error_of(await api.post("/conflicts/resolve", {"conflict_id": c["conflict_id"],
                                                         "value": 12}), 400, "invalid")
    assert await api.head() == head
    sub, _ = api.node.hub.subscribe()
    try:
        r = await api.ok("POST", "/conflicts/resolve", {
            "conflict_id": c["conflict_id"], "value": "agreed",
            "expected_tips": [t["op_id"] for t in c["tips"]]})
        assert r["seq"] > head and ids.from_text(r["bundle_id"])
        ev = await next_event(sub, "conflict_resolved")
    finally:
        sub.close()
    assert (ev["conflict_id"], ev["entity_id"], ev["kind"]) == (c["conflict_id"], pc["edge"],
                                                                "property")
    data = await api.ok("GET", "/conflicts/list?status=all")
    (done,) = data["conflicts"]
    assert done["status"] == "resolved" and done["display_value"] == "agreed"
    assert data["count_open"] == 0
    edges = (await api.ok("GET", f"/edges/list?entity={pc['src']}"))["edges"]
    assert [e["props"] for e in edges if e["id"] == pc["edge"]] == [{"role": "agreed"}]
    await error_of(await api.post("/conflicts/resolve", {"conflict_id": c["conflict_id"],
                                                         "value": "again"}),
                   409, "conflict_resolved")
