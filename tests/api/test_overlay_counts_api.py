"""Overlays in words for people (an import of 47 rows reads "47 new records") and the change
list paged for the banner: `new_records`/`records` on `/overlays/list`, `limit`/`total` on
`GET /overlays/<id>/changes`."""

from __future__ import annotations

from tests.api.conftest import Api, error_of


async def test_counts_and_a_limited_change_list(api: Api) -> None:
    tid = (await api.ok("POST", "/tables/create", {
        "label": "Cast", "fields": [{"label": "Name"}, {"label": "Role"}]}))["table"]
    old = (await api.ok("POST", "/records/create", {"table": tid,
                                                    "values": {"Name": "Ada"}}))["id"]
    oid = (await api.ok("POST", "/overlays/create", {"name": "Act 2"}))["overlay_id"]
    for name in ("Bo", "Cy", "Di"):
        await api.ok("POST", "/records/create", {"table": tid,
                                                 "values": {"Name": name, "Role": "Swing"}})
    await api.ok("POST", "/records/update", {"id": old, "values": {"Role": "Lead"}})
    (o,) = (await api.ok("GET", "/overlays/list"))["overlays"]
    assert (o["new_records"], o["records"]) == (3, 4)
    full = await api.ok("GET", f"/overlays/{oid}/changes")
    assert full["total"] == o["changes"] == len(full["changes"]) > 4
    some = await api.ok("GET", f"/overlays/{oid}/changes?limit=2")
    assert some["total"] == full["total"] and some["changes"] == full["changes"][:2]
    for bad in ("0", "x", "100001"):
        err = await error_of(await api.get(f"/overlays/{oid}/changes?limit={bad}"), 400,
                             "invalid")
        assert err["details"]["field"] == "limit"
