"""Browser test of CSV import and export (spec 05 §4, issue 9) against a real engine.

A table Cast with three records and an active staging session. **Import CSV…** opens the
dialog; an empty file dropped on it is refused with the reason; a generated 10 000-row file
with 3 bad rows is picked and uploaded; the mapping shows
each column matched to its field; **Check** says "9,997 rows ready, 3 with errors" and lists
the three rows by their spreadsheet row numbers; **Import 9,997 rows** asks before stashing the
staging session, shows progress, then "Import cast.csv — 9,997 new, 3 errors". The staging
banner names the import, the grid counts 10,000 records with the imported rows after the
existing ones, nothing is canonical until **Commit**, after which all are. **Export CSV ▾**
downloads the current view and the whole table; the files' contents are checked. A second,
browserless test uploads a file larger than the API's JSON body limit to the real server.
Screenshots land in /tmp/ui-csv-*.png.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.browser.test_grid import chromium, serve
from tests.browser.test_sync_ui import Engine

BAD = {17: "seventeen", 5000: "4.5", 9999: "lots"}  # data row -> a bad Age


def make_csv(path: Path, n: int = 10_000) -> None:
    lines = ["Name,age,ROLE"]
    for i in range(1, n + 1):
        lines.append(f"Person {i},{BAD.get(i, 20 + i % 50)},{['Lead', 'chorus', 'SWING'][i % 3]}")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


def test_csv_import_and_export(tmp_path: Path) -> None:
    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url, \
            chromium() as browser:
        csv_journey(browser, url, tmp_path)


def test_upload_larger_than_the_json_body_limit_streams(tmp_path: Path) -> None:
    """The upload route streams (Hypercorn, not the test client): a file over the API's 16 MiB
    JSON body limit is accepted and read whole."""
    import http.client

    from actors.api import MAX_BODY

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        eng.ok("POST", "/tables/create", {"label": "Cast", "fields": [{"label": "Name"}]})
        row = "Person with a name long enough to make the rows of this file rather wide\r\n"
        n = MAX_BODY // len(row) + 1000
        data = ("Name\r\n" + row * n).encode()
        assert len(data) > MAX_BODY
        conn = http.client.HTTPConnection("127.0.0.1", eng.port, timeout=60)
        try:
            conn.request("POST", "/import/csv/upload?table=Cast&name=big.csv", data,
                         {"Authorization": f"Bearer {eng.token}", "Content-Type": "text/csv"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == 200, body
        assert body["rows"] == n and body["headers"] == ["Name"]
        eng.ok("POST", "/import/csv/discard", {"upload_id": body["upload_id"]})


def csv_journey(browser: Any, url: str, tmp_path: Path,
                prepare: Callable[[Any], None] | None = None) -> None:
    from playwright.sync_api import expect

    eng = Engine(url)
    made = eng.ok("POST", "/tables/create", {"label": "Cast", "fields": [
        {"label": "Name"}, {"label": "Age", "type": "integer"},
        {"label": "Role", "type": "enum", "options": {"choices": ["Lead", "Chorus", "Swing"]}},
    ]})
    table = made["table"]
    tdef = next(t for t in eng.ok("GET", f"/tables/list?after={made['seq']}")["tables"]
                if t["id"] == table)
    names = {f["label"]: f["name"] for f in tdef["fields"]}
    for i in (1, 2, 3):
        eng.ok("POST", "/records/create", {"table": table, "values": {
            "Name": f"Existing {i}", "Age": 30 + i, "Role": "Lead"}})
    eng.ok("POST", "/overlays/create", {"name": "Act 2 rework"})
    src = tmp_path / "cast.csv"
    make_csv(src)

    errors: list[str] = []
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    if prepare is not None:
        prepare(ctx)
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error"
            else None)
    page.goto(url)
    expect(page.locator("#table-title")).to_have_text("Cast")
    expect(page.locator("#staging-text")).to_contain_text("Act 2 rework")

    # --- import: pick the file, see the mapping ---
    page.locator("#import-csv-btn").click()
    dlg = page.get_by_role("dialog", name="Import a CSV file into Cast")
    expect(dlg).to_be_visible()
    # a file dropped on the dialog is uploaded too; an empty one is refused, with the reason
    drop = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File([""], "empty.csv", { type: "text/csv" }));
        return dt;
    }""")
    dlg.dispatch_event("dragenter", {"dataTransfer": drop})
    dlg.dispatch_event("drop", {"dataTransfer": drop})
    expect(dlg.get_by_role("alert")).to_contain_text("the file is empty")
    with page.expect_file_chooser() as fc:
        dlg.get_by_role("button", name="Choose a CSV file…").click()
    fc.value.set_files(str(src))
    expect(dlg.get_by_role("alert")).to_be_hidden()
    expect(dlg.locator(".csv-summary")).to_contain_text("cast.csv · 10,000 rows · UTF-8 · "
                                                        "comma-separated", timeout=30_000)
    expect(dlg.get_by_label("Name", exact=True)).to_have_value(names["Name"])
    expect(dlg.get_by_label("age", exact=True)).to_have_value(names["Age"])
    expect(dlg.get_by_label("ROLE", exact=True)).to_have_value(names["Role"])
    expect(dlg.get_by_label("age", exact=True).locator("option:checked")).to_have_text(
        "Age (Integer (whole number))")
    import_btn = dlg.get_by_role("button", name=re.compile(r"^Import"))
    expect(import_btn).to_be_disabled()

    # --- check: the three bad rows, by spreadsheet row number ---
    dlg.get_by_role("button", name="Check").click()
    expect(dlg.locator(".csv-check-summary")).to_have_text(
        "9,997 rows ready, 3 with errors (they will be skipped)", timeout=60_000)
    err_rows = dlg.locator("table.csv-errors tbody tr")
    expect(err_rows).to_have_count(3)
    for i, (row, value) in enumerate([(18, "seventeen"), (5001, "4.5"), (10000, "lots")]):
        cells = err_rows.nth(i).locator("td")
        expect(cells.nth(0)).to_have_text(str(row))
        expect(cells.nth(1)).to_have_text("age")
        expect(cells.nth(2)).to_have_text(value)
        expect(cells.nth(3)).to_have_text("not a whole number")
    page.screenshot(path="/tmp/ui-csv-check.png")

    # --- import: asks before stashing the staging session, then lands in a new overlay ---
    expect(import_btn).to_have_text("Import 9,997 rows")
    import_btn.click()
    ask = page.get_by_role("dialog", name="Stash your staging session?")
    expect(ask).to_contain_text("Your staging session “Act 2 rework” will be stashed")
    ask.get_by_role("button", name="Stash it and import").click()
    expect(dlg.locator(".csv-progress-text, .csv-done-title").first).to_be_visible()
    expect(dlg.locator(".csv-done-title")).to_have_text(
        "Import cast.csv — 9,997 new, 3 errors", timeout=180_000)
    page.screenshot(path="/tmp/ui-csv-done.png")
    dlg.locator(".dialog-foot").get_by_role("button", name="Close").click()
    expect(dlg).to_be_hidden()

    expect(page.locator("#staging-text")).to_contain_text("Staging: Import cast.csv",
                                                          timeout=60_000)
    expect(page.locator("#record-count")).to_have_text(re.compile(r"10,?000 records"),
                                                       timeout=60_000)
    rows = page.locator("table.grid tbody tr")
    for i, name in enumerate(["Existing 1", "Existing 2", "Existing 3", "Person 1",
                              "Person 2"]):
        expect(rows.nth(i).locator('td[data-label="Name"]')).to_have_text(name)
    expect(rows.nth(3).locator('td[data-label="Age"]')).to_have_text("21")
    expect(rows.nth(4).locator('td[data-label="Role"]')).to_have_text("Swing")
    page.screenshot(path="/tmp/ui-csv-staged.png")
    head = eng.ok("GET", "/workspace/current")["seq"]
    assert len(eng.ok("GET", f"/records/list?table={table}&canonical=1&after={head}")[
        "records"]) == 3

    # --- commit: all canonical, as one import ---
    page.locator("#staging-commit").click()
    expect(page.locator("#staging-banner")).to_be_hidden(timeout=120_000)
    expect(page.locator("#record-count")).to_have_text(re.compile(r"10,?000 records"))
    head = eng.ok("GET", "/workspace/current")["seq"]
    canonical = eng.ok("GET", f"/records/list?table={table}&canonical=1&after={head}")
    assert len(canonical["records"]) == 10_000
    overlays = eng.ok("GET", "/overlays/list")["overlays"]
    assert [o["name"] for o in overlays] == ["Act 2 rework"]  # stashed, still there

    # --- export: the current view, then the whole table ---
    page.locator("#export-csv-btn").click()
    menu = page.get_by_role("menu", name="Export CSV")
    expect(menu.get_by_role("menuitem")).to_have_count(2)
    with page.expect_download() as dl:
        menu.get_by_role("menuitem", name=re.compile("Current view")).click()
    path = dl.value.path()
    assert dl.value.suggested_filename == "Cast.csv"
    text = Path(path).read_bytes().decode("utf-8-sig")
    lines = text.split("\r\n")
    assert lines[0] == "Name,Age,Role"
    assert lines[1:5] == ["Existing 1,31,Lead", "Existing 2,32,Lead", "Existing 3,33,Lead",
                          "Person 1,21,Chorus"]
    assert len(lines) == 10_002 and lines[-1] == ""
    assert "Person 17," not in text and "Person 10000," in text

    page.locator("#export-csv-btn").click()
    with page.expect_download() as dl2:
        page.get_by_role("menu", name="Export CSV").get_by_role(
            "menuitem", name=re.compile("Whole table")).click()
    whole = Path(dl2.value.path()).read_bytes().decode("utf-8-sig")
    assert whole == text
    # the one refusal the journey provokes (the empty file's 400) is the browser's only complaint
    assert errors == ["console: Failed to load resource: the server responded with a status of "
                      "400 ()"], errors
    ctx.close()
