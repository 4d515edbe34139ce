"""CSV import and export through the API in-process (spec 05 §4, issue 9): upload, header
matching, check, import into a new overlay (batches, progress, rules), commit as an `import`
bundle, export of a table and of a view, and the refusals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pytest
import trio

from actors import api_csv
from openprod.core import ids
from openprod.engine.workspace import Workspace
from tests.api.conftest import Api, error_of

FIELDS = [
    {"label": "Name"}, {"label": "Age", "type": "integer"},
    {"label": "Height", "type": "float"}, {"label": "Lead", "type": "boolean"},
    {"label": "First call", "type": "date"}, {"label": "Arrives", "type": "datetime"},
    {"label": "Warm-up", "type": "duration"},
    {"label": "Role", "type": "enum", "options": {"choices": ["Lead", "Chorus", "Swing"]}},
    {"label": "Photo", "type": "blob_ref"},
]


async def cast_table(api: Api, label: str = "Cast") -> tuple[str, dict[str, str]]:
    """A table with a field of every importable type, a file field and a link to itself:
    (table id, label -> field name)."""
    r = await api.ok("POST", "/tables/create", {"label": label, "fields": FIELDS})
    t = r["table"]
    await api.ok("POST", "/tables/add-field", {"table": t, "label": "Partner",
                                               "type": "entity_ref",
                                               "options": {"ref_table": t}})
    tables = (await api.ok("GET", "/tables/list"))["tables"]
    tdef = next(x for x in tables if x["id"] == t)
    return t, {f["label"]: f["name"] for f in tdef["fields"]}


async def upload(api: Api, table: str, data: bytes, name: str = "cast.csv", *,
                 status: int = 200) -> dict[str, Any]:
    resp = await api.request("POST", f"/import/csv/upload?table={quote(table)}"
                             f"&name={quote(name)}", data=data,
                             headers={"Content-Type": "text/csv"})
    body: dict[str, Any] = await resp.get_json()
    assert resp.status_code == status, body
    return body


async def records(api: Api, table: str, canonical: bool = False) -> list[dict[str, Any]]:
    q = "&canonical=1" if canonical else ""
    return list((await api.ok("GET", f"/records/list?table={table}{q}"))["records"])


async def export(api: Api, path: str, body: Any = None) -> tuple[Any, str]:
    """(response, text) of an export that reads everything written so far."""
    path += ("&" if "?" in path else "?") + f"after={api.node.current.writer.appended}"
    if body is None:
        resp = await api.get(path)
    else:
        resp = await api.post(path, body)
    data = await resp.get_data(as_text=True)
    return resp, str(data)


def big_csv(n: int, bad: dict[int, str]) -> bytes:
    """n data rows; rows whose 1-based data index is in `bad` get that Age (not a number)."""
    lines = ["Name,Age,Role"]
    for i in range(1, n + 1):
        age = bad.get(i, str(20 + i % 50))
        lines.append(f"Person {i},{age},{['Lead', 'chorus', 'SWING'][i % 3]}")
    return ("\r\n".join(lines) + "\r\n").encode()


# --- bodies for tests/api/test_api.py (every route, generic refusals) ------------------------

async def _prepared(api: Api) -> dict[str, Any]:
    t, _names = await cast_table(api)
    up = await upload(api, t, b"Name,Age\nAda,36\nBo,41\n")
    return {"upload_id": up["upload_id"], "table": t, "mapping": up["mapping"]}


async def _b_discard(api: Api) -> dict[str, Any]:
    return {"upload_id": (await _prepared(api))["upload_id"]}


BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/import/csv/check": _prepared, "/import/csv": _prepared, "/import/csv/discard": _b_discard}
# check and discard write nothing; an import stages into an overlay (canonical is unchanged)
NO_WRITE = frozenset(BODIES)


# --- upload and matching ----------------------------------------------------------------------

async def test_upload_matches_headers_and_reports_the_file(api: Api) -> None:
    t, names = await cast_table(api)
    data = (b"name;AGE ;first_call;Warm up;role;Photo;Shoe size;\n"
            b"Ada;36;01/05/2024;1:30;lead;;42;\n")
    up = await upload(api, t, data)
    assert up["headers"] == ["name", "AGE", "first_call", "Warm up", "role", "Photo",
                             "Shoe size", "Column 8"]
    assert up["delimiter"] == "semicolon" and up["encoding"] == "UTF-8"
    assert up["encoding_note"] is None and up["rows"] == 1
    assert up["mapping"] == {"name": names["Name"], "AGE": names["Age"],
                             "first_call": names["First call"], "Warm up": names["Warm-up"],
                             "role": names["Role"], "Photo": None, "Shoe size": None,
                             "Column 8": None}
    assert "file field" in up["skipped"]["Photo"]
    assert names["Photo"] in up["unimportable"]
    assert up["sample"] == [["Ada", "36", "01/05/2024", "1:30", "lead", "", "42", ""]]


async def test_excel_cp1252_file_with_bom_less_text_is_read_and_said(api: Api) -> None:
    t, names = await cast_table(api)
    up = await upload(api, t, "Name;Height\nRenée;1,72\n".encode("cp1252"))
    assert up["encoding"] == "Windows-1252" and "Windows-1252" in up["encoding_note"]
    chk = await api.ok("POST", "/import/csv/check", {"upload_id": up["upload_id"], "table": t,
                                                    "mapping": up["mapping"]})
    assert chk["ok"] == 1 and chk["errors"] == []
    r = await api.ok("POST", "/import/csv", {"upload_id": up["upload_id"], "table": t,
                                             "mapping": up["mapping"]})
    assert r["created"] == 1
    [rec] = await records(api, t)
    assert rec["values"][names["Name"]] == "Renée" and rec["values"][names["Height"]] == 1.72


async def test_bom_is_not_part_of_the_first_header(api: Api) -> None:
    t, names = await cast_table(api)
    up = await upload(api, t, "\ufeffName,Age\nAda,36\n".encode())
    assert up["headers"] == ["Name", "Age"] and up["mapping"]["Name"] == names["Name"]


# --- check ------------------------------------------------------------------------------------

async def test_check_lists_bad_cells_with_spreadsheet_row_numbers(api: Api) -> None:
    t, names = await cast_table(api)
    await api.record(t, **{names["Name"]: "Bo"})
    data = (b"Name,Age,Lead,First call,Warm-up,Role,Partner,Arrives\n"
            b"Ada,36,yes,2024-05-01,90,Lead,Bo,2024-05-01 19:30\n"
            b"Cy,old,maybe,31/02/2024,1:99,Villain,Nobody,soon\n"
            b"\n"
            b"Di,,x,,,,,\n")
    up = await upload(api, t, data)
    chk = await api.ok("POST", "/import/csv/check", {"upload_id": up["upload_id"], "table": t,
                                                    "mapping": up["mapping"]})
    assert (chk["rows"], chk["ok"], chk["error_rows"]) == (3, 2, 1)
    errs = {e["column"]: e for e in chk["errors"]}
    assert {e["row"] for e in chk["errors"]} == {3}
    assert set(errs) == {"Age", "Lead", "First call", "Warm-up", "Role", "Partner", "Arrives"}
    assert errs["Age"]["value"] == "old" and errs["Age"]["field"] == "Age"
    assert "whole number" in errs["Age"]["message"]
    assert "Villain" in errs["Role"]["message"] and "Chorus" in errs["Role"]["message"]
    assert errs["Partner"]["message"] == "no record named “Nobody” in Cast"
    assert errs["First call"]["message"] == "no such date"
    assert await records(api, t, canonical=True) != []  # only Bo: check writes nothing
    assert len(await records(api, t)) == 1


async def test_refusals(api: Api) -> None:
    t, names = await cast_table(api)
    head = await api.head()
    # upload: no table, unknown table, empty file, unreadable CSV
    resp = await api.request("POST", "/import/csv/upload", data=b"a\n1\n")
    await error_of(resp, 400, "invalid")
    resp = await api.request("POST", "/import/csv/upload?table=nope.Nope", data=b"a\n1\n")
    await error_of(resp, 404, "not_found")
    resp = await api.request("POST", f"/import/csv/upload?table={t}", data=b"")
    assert "empty" in (await error_of(resp, 400, "bad_csv"))["message"]
    up = await upload(api, t, b"Name,Age,Photo\nAda,36,\n")
    base = {"upload_id": up["upload_id"], "table": t}
    # check/import: unknown upload, unknown column, unknown or unimportable field, twice, none
    await error_of(await api.post("/import/csv/check", {**base, "upload_id": ids.to_text(
        ids.new_id()), "mapping": up["mapping"]}), 404, "not_found")
    for mapping, words in (({"Nope": names["Name"]}, "no column"),
                           ({"Name": "nope"}, "no field"),
                           ({"Photo": names["Photo"]}, "file field"),
                           ({"Name": names["Name"], "Age": names["Name"]}, "both go to"),
                           ({"Name": None, "Age": None}, "at least one")):
        for path in ("/import/csv/check", "/import/csv"):
            err = await error_of(await api.post(path, {**base, "mapping": mapping}), 400,
                                 "invalid")
            assert words in err["message"], (mapping, err)
    # a header without rows, or a file whose every row is bad, imports nothing: no overlay
    bare = await upload(api, t, b"Name,Age\r\n")
    assert bare["rows"] == 0
    err = await error_of(await api.post("/import/csv", {
        "upload_id": bare["upload_id"], "table": t, "mapping": bare["mapping"]}), 400, "invalid")
    assert "no rows" in err["message"]
    bad = await upload(api, t, b"Name,Age\nAda,x\n")
    err = await error_of(await api.post("/import/csv", {
        "upload_id": bad["upload_id"], "table": t, "mapping": bad["mapping"]}), 400, "invalid")
    assert "none of the 1 rows" in err["message"]
    assert (await api.ok("GET", "/overlays/list"))["overlays"] == []
    # export: unknown table, unknown column, bad ids
    resp, _ = await export(api, "/export/csv?table=nope.Nope")
    assert resp.status_code == 404
    resp, _ = await export(api, f"/export/csv?table={t}&columns=Name,Nope")
    assert resp.status_code == 404
    resp, _ = await export(api, "/export/csv", {"table": t, "ids": ["x"]})
    assert resp.status_code == 400
    resp, _ = await export(api, "/export/csv", {"table": t, "columns": "Name"})
    assert resp.status_code == 400
    # discard forgets the upload
    await api.ok("POST", "/import/csv/discard", {"upload_id": up["upload_id"]})
    await error_of(await api.post("/import/csv/check", {**base, "mapping": up["mapping"]}),
                   404, "not_found")
    assert await api.head() == head


# --- import -----------------------------------------------------------------------------------

async def test_ten_thousand_rows_with_three_bad_land_in_a_new_overlay(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # several streamed chunks, but fewer than the 10 the test client buffers before it reads
    monkeypatch.setattr(api_csv, "EXPORT_CHUNK", 1500)
    t, names = await cast_table(api)
    await api.ok("POST", "/overlays/create", {"name": "Act 2 rework"})
    mine = (await api.ok("GET", "/overlays/list"))["active"]
    head = await api.head()
    data = big_csv(10_000, {17: "seventeen", 5000: "4.5", 9999: "lots"})
    up = await upload(api, t, data)
    assert up["rows"] == 10_000
    chk = await api.ok("POST", "/import/csv/check", {"upload_id": up["upload_id"], "table": t,
                                                    "mapping": up["mapping"]})
    assert (chk["ok"], chk["error_rows"]) == (9997, 3)
    assert [e["row"] for e in chk["errors"]] == [18, 5001, 10000]
    sub, _ = api.node.hub.subscribe()
    r = await api.ok("POST", "/import/csv", {"upload_id": up["upload_id"], "table": t,
                                             "mapping": up["mapping"]})
    assert (r["created"], r["errors"], r["rows"]) == (9997, 3, 10_000)
    assert r["name"] == "Import cast.csv"
    assert [e["row"] for e in r["error_details"]] == [18, 5001, 10000]
    events = []
    while True:
        try:
            events.append(sub.recv.receive_nowait())
        except trio.WouldBlock:
            break
    sub.close()
    progress = [e for e in events if e["type"] == "import_progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 10_000
    assert progress[-1]["import_id"] == up["upload_id"] and progress[-1]["created"] == 9997
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert any(e["type"] == "overlays_changed" and e["active"] == r["overlay_id"]
               for e in events)
    # the import's overlay is active, the user's is stashed; canonical has nothing yet
    ovs = await api.ok("GET", "/overlays/list")
    assert ovs["active"] == r["overlay_id"]
    by = {o["id"]: o for o in ovs["overlays"]}
    assert by[mine]["status"] == "stashed"
    assert by[r["overlay_id"]]["source"] == ["import", "cast.csv"]
    assert await api.head() == head
    assert await records(api, t, canonical=True) == []
    staged = await records(api, t)
    assert len(staged) == 9997
    byname = {x["values"][names["Name"]]: x["values"] for x in staged}
    assert "Person 17" not in byname and "Person 9999" not in byname
    assert byname["Person 1"][names["Age"]] == 21
    assert byname["Person 2"][names["Role"]] == "Swing"
    assert byname["Person 3"][names["Role"]] == "Lead"
    # the upload is gone once imported
    await error_of(await api.post("/import/csv/check", {
        "upload_id": up["upload_id"], "table": t, "mapping": up["mapping"]}), 404, "not_found")
    # commit: canonical at last, as one bundle of kind "import"
    c = await api.ok("POST", "/overlays/commit", {"id": r["overlay_id"]})
    assert len(await records(api, t, canonical=True)) == 9997

    def kind(ws: Workspace) -> str:
        row = ws.storage.conn.execute("SELECT kind FROM bundles WHERE bundle_id = ?",
                                      (ids.from_text(c["bundle_id"]),)).fetchone()
        assert row is not None
        return str(row[0])
    assert await api.node.current.writer.call(kind) == "import"
    # exports of more records than one streamed chunk keep their order
    _, text = await export(api, f"/export/csv?table={t}&columns=Name")
    lines = text.split("\r\n")
    assert len(lines) == 9999 and lines[-1] == ""
    assert lines[1:4] == ["Person 1", "Person 2", "Person 3"] and lines[-2] == "Person 10000"
    backwards = [x["id"] for x in staged][::-1]
    _, text = await export(api, "/export/csv", {"table": t, "ids": backwards,
                                                "columns": [names["Age"], names["Name"]]})
    lines = text.split("\r\n")
    assert lines[:3] == ["\ufeffAge,Name", "20,Person 10000", "68,Person 9998"]
    assert len(lines) == 9999


async def test_import_converts_every_type(api: Api) -> None:
    t, names = await cast_table(api)
    bo = await api.record(t, **{names["Name"]: "Bo"})
    data = (b"Name,Age,Height,Lead,First call,Arrives,Warm-up,Role,Partner\n"
            b"Ada,\"1,036\",1.5,x,13/05/2024,2024-05-01T19:30:00Z,1:02:03.5,swing,bo\n"
            b"Cy,-3,,No,2024-12-24,,45,,\n")
    up = await upload(api, t, data)
    r = await api.ok("POST", "/import/csv", {"upload_id": up["upload_id"], "table": t,
                                             "mapping": up["mapping"]})
    assert r["created"] == 2 and r["errors"] == 0
    got = {x["values"][names["Name"]]: x["values"] for x in await records(api, t)}
    ada = got["Ada"]
    assert ada[names["Age"]] == 1036 and ada[names["Height"]] == 1.5
    assert ada[names["Lead"]] is True and ada[names["First call"]] == "2024-05-13"
    assert ada[names["Arrives"]] == 1714591800000
    assert ada[names["Warm-up"]] == 3723500 and ada[names["Role"]] == "Swing"
    assert ada[names["Partner"]] == bo
    assert got["Cy"][names["Warm-up"]] == 45 * 60000 and got["Cy"][names["Lead"]] is False
    assert got["Cy"][names["Height"]] is None
    # while the import is staged, exports show it (as the grid does), canonical=1 does not
    _, text = await export(api, f"/export/csv?table={t}&columns=Name")
    assert text == "\ufeffName\r\nBo\r\nAda\r\nCy\r\n"
    _, text = await export(api, f"/export/csv?table={t}&columns=Name&canonical=1")
    assert text == "\ufeffName\r\nBo\r\n"


async def test_rules_fire_for_imported_rows(api: Api) -> None:
    cues = (await api.ok("POST", "/tables/create", {"label": "Cues", "fields": [
        {"label": "Name"}, {"label": "Called", "type": "boolean"}]}))["table"]
    sm = (await api.ok("POST", "/tables/create", {"label": "SMCues", "fields": [
        {"label": "Name"}, {"label": "Note"}]}))["table"]
    await api.ok("POST", "/rules/put", {
        "label": "Called cues to SM", "source": "Cues", "target": "SMCues", "enabled": True,
        "auto_accept": True,
        "when": {"field": "Called", "op": "eq", "value": True},
        "set": [{"field": "Name", "copy_from": "Name"}]})
    up = await upload(api, cues, b"Name,Called\nQ1,x\nQ2,no\n")
    await api.ok("POST", "/import/csv", {"upload_id": up["upload_id"], "table": cues,
                                         "mapping": up["mapping"]})
    assert await records(api, sm, canonical=True) == []
    staged = await records(api, sm)
    assert [next(iter(r["values"].values())) for r in staged] == ["Q1"]


# --- export -----------------------------------------------------------------------------------

async def test_export_table_and_view(api: Api) -> None:
    t, names = await cast_table(api)
    bo = await api.record(t, **{names["Name"]: "Bo"})
    ada = await api.record(t, **{names["Name"]: "Ada, \"the\" first", names["Age"]: 36,
                                 names["Warm-up"]: 5400000, names["Lead"]: True,
                                 names["Partner"]: bo, names["Role"]: "Chorus",
                                 names["First call"]: "2024-05-01"})
    resp, text = await export(api, f"/export/csv?table={t}")
    assert resp.status_code == 200
    assert resp.content_type == "text/csv; charset=utf-8"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="Cast.csv"'
    assert text.startswith("\ufeffName,Age,Height,Lead,First call,Arrives,Warm-up,Role,Photo,"
                           "Partner\r\n")
    rows = text[1:].split("\r\n")
    assert len(rows) == 4 and rows[-1] == ""  # header, two records, final CRLF
    assert '"Ada, ""the"" first",36,,yes,2024-05-01,,1:30:00,Chorus,,Bo' in rows
    # the current view: these records in this order, these columns
    resp, text = await export(api, "/export/csv", {
        "table": t, "ids": [ada, bo], "columns": [names["Partner"], names["Name"]]})
    assert resp.status_code == 200
    assert text == "\ufeffPartner,Name\r\nBo,\"Ada, \"\"the\"\" first\"\r\n,Bo\r\n"
    resp, text = await export(api, f"/export/csv?table={t}&columns=Name,Age")
    assert text.split("\r\n")[0] == "\ufeffName,Age"


async def test_export_then_import_round_trips(api: Api) -> None:
    t, names = await cast_table(api)
    bo = await api.record(t, **{names["Name"]: "Bo"})
    vals = {"Name": "Zoë  ✓", "Age": -12, "Height": 0.1, "Lead": False,
            "First call": "1999-12-31", "Arrives": 1714591800123, "Warm-up": 1,
            "Role": "Swing", "Partner": bo}
    z = await api.record(t, **{names[k]: v for k, v in vals.items()})
    _, text = await export(api, "/export/csv", {"table": t, "ids": [z]})
    t2, names2 = await cast_table(api, "Cast copy")
    bo2 = await api.record(t2, **{names2["Name"]: "Bo"})
    up = await upload(api, t2, text.encode(), "Cast.csv")
    assert sum(1 for v in up["mapping"].values() if v) == len(vals)
    r = await api.ok("POST", "/import/csv", {"upload_id": up["upload_id"], "table": t2,
                                             "mapping": up["mapping"]})
    assert r["created"] == 1
    got = next(x for x in await records(api, t2) if x["id"] != bo2)
    by_label = {label: got["values"][name] for label, name in names2.items()}
    assert by_label == {**vals, "Partner": bo2, "Photo": None}


def test_routes_are_installed() -> None:
    assert api_csv.UPLOAD_PATH == "/import/csv/upload"
