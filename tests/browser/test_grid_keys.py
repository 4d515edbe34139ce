"""Browser tests of the grid's spreadsheet behaviour (spec 05 §4, J6): keyboard navigation,
range selection, copy and paste of rectangles (including a block "from Excel" with a quoted
multi-line cell) as one undo step, per-cell paste errors, clearing a range, column resize and
reorder (kept after a reload), the hover "Last changed by", Shift+Enter opening the record, a
virtualized 10 000-row table, and J8's drag handle in a cue stack (Alt+↑/↓ is covered by
test_view_ui.py).

Tables and records are made through the HTTP API for speed; the 10 000 rows are served to the
page by a stubbed `/records/list` (creating them one by one through the API would take
minutes), since what is under test is the grid, not the engine's list query.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.browser.test_grid import chromium, open_page, serve
from tests.browser.test_sync_ui import Engine

CLIPBOARD = ["clipboard-read", "clipboard-write"]

CLIPBOARD_CHECKS = """async (t) => {
    const C = await import('/static/clipboard.js');
    const f = (type, extra = {}) => ({name: 'x', label: 'X', type, ...extra});
    const attempt = (fn) => {
        try { return fn(); } catch (e) { return 'ERR ' + e.message; }
    };
    const links = [{id: 'id-1', label: 'Juliet'}, {id: 'id-2', label: 'Romeo'},
                   {id: 'id-3', label: 'Romeo'}];
    const choice = f('enum', {options: {choices: [['p', 'Planned'], 'Done']}});
    const v = (type, text, ctx) => C.pasteValue(typeof type === 'string' ? f(type) : type,
                                                text, ctx);
    return {
        excel: C.parseTSV(t.excel), lone: C.parseTSV(t.lone), round: C.formatTSV(t.round),
        csv: C.parseCSV(t.csv),
        values: [v('duration', '1:30'), v('duration', '90'), v('integer', '1,234'),
                 v('float', ' 2.5 '), v('boolean', 'TRUE'), v('boolean', 'no'),
                 v('date', '2024-05-01'), v('date', '5/1/2024', {monthFirst: true}),
                 v('date', '1 May 2024'), v(choice, 'planned'), v(choice, 'Done'),
                 v('entity_ref', 'juliet', {links}), v('text', '')],
        errors: [attempt(() => v('integer', '1.5')), attempt(() => v('boolean', 'maybe')),
                 attempt(() => v('date', '2024-02-30')), attempt(() => v(choice, 'Cancelled')),
                 attempt(() => v('entity_ref', 'Tybalt', {links})),
                 attempt(() => v('entity_ref', 'romeo', {links})),
                 attempt(() => v('blob_ref', 'plot.pdf'))],
    };
}"""



def grant_clipboard(page: Any, url: str) -> None:
    parts = urlsplit(url)
    page.context.grant_permissions(CLIPBOARD, origin=f"{parts.scheme}://{parts.netloc}")


def focused_row(page: Any) -> Any:
    return page.locator("table.grid tbody tr:has(td:focus)")


def row_cell(page: Any, rec_id: str, label: str) -> Any:
    return page.locator(f'table.grid tbody tr[data-id="{rec_id}"] td[data-label="{label}"]')


def header(page: Any, name: str) -> Any:
    return page.locator(f'table.grid thead th[data-field="{name}"]')


def headers(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("table.grid thead th[data-field] .th-label")
            .all_inner_texts()]


def values(engine: Engine, table: str) -> dict[str, dict[str, Any]]:
    recs = engine.ok("GET", f"/records/list?table={table}")["records"]
    return {r["id"]: r["values"] for r in recs}


def test_keyboard_range_copy_paste(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        api = Engine(url)
        table = api.ok("POST", "/tables/create", {"label": "Cues", "fields": [
            {"label": "Name"}, {"label": "Page", "type": "integer"},
            {"label": "Time", "type": "duration"}, {"label": "Called", "type": "boolean"},
            {"label": "Status", "type": "enum",
             "options": {"choices": ["Planned", "Confirmed"]}}]})["table"]
        ids = [api.ok("POST", "/records/create", {"table": table, "values": {
            "Name": f"Cue {n}", "Page": n}})["id"] for n in range(1, 41)]
        fields = {f["label"]: f["name"] for f in next(
            t for t in api.ok("GET", "/tables/list")["tables"] if t["id"] == table)["fields"]}

        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            grant_clipboard(page, url)
            expect(page.locator("#table-title")).to_have_text("Cues")
            grid = page.get_by_role("grid", name="Cues")
            expect(grid).to_have_attribute("aria-rowcount", "41")
            first = row_cell(page, ids[0], "Name")
            expect(first).to_have_text("Cue 1")

            # navigation: End / Home within the row, PgDn a viewport down, Ctrl+End / Ctrl+Home
            first.click()
            expect(first).to_be_focused()
            page.keyboard.press("End")
            expect(row_cell(page, ids[0], "Status")).to_be_focused()
            page.keyboard.press("Home")
            expect(first).to_be_focused()
            page.keyboard.press("ArrowDown")
            page.keyboard.press("ArrowRight")
            expect(row_cell(page, ids[1], "Page")).to_be_focused()
            page.keyboard.press("PageDown")
            expect(focused_row(page)).not_to_have_attribute("aria-rowindex", "3")
            paged = int(focused_row(page).get_attribute("aria-rowindex") or "0")
            assert 8 <= paged - 3 <= 20, paged  # about one viewport of rows
            page.keyboard.press("Control+End")
            last = row_cell(page, ids[-1], "Status")
            expect(last).to_be_focused()
            expect(last).to_be_in_viewport()
            expect(focused_row(page)).to_have_attribute("aria-rowindex", "41")
            page.keyboard.press("Control+Home")
            expect(first).to_be_focused()
            expect(first).to_be_in_viewport()

            # editing: F2 opens the editor, Esc cancels; typing replaces and Enter moves down
            page.keyboard.press("F2")
            editor = page.get_by_role("textbox", name="Name, editing")
            expect(editor).to_be_focused()
            editor.press("End")
            page.keyboard.type(" typo")
            page.keyboard.press("Escape")
            expect(first).to_have_text("Cue 1")
            expect(first).to_be_focused()

            # Shift+arrows select a rectangle; Ctrl+C copies it as spreadsheet text
            page.keyboard.press("Shift+ArrowDown")
            page.keyboard.press("Shift+ArrowRight")
            expect(grid.locator('td[aria-selected="true"]')).to_have_count(4)
            expect(grid.locator("td.in-range")).to_have_count(4)
            page.keyboard.press("Control+c")
            assert page.evaluate("navigator.clipboard.readText()") == "Cue 1\t1\r\nCue 2\t2"

            # dragging the mouse across cells selects a rectangle too
            row_cell(page, ids[0], "Name").hover()
            page.mouse.down()
            row_cell(page, ids[2], "Time").hover()
            page.mouse.up()
            expect(grid.locator('td[aria-selected="true"]')).to_have_count(9)
            expect(row_cell(page, ids[2], "Time")).to_be_focused()
            page.keyboard.press("Escape")
            expect(grid.locator("td.in-range")).to_have_count(0)

            # a 2×3 block "from Excel" (a quoted cell holding a line break) lands as one change
            block = '"Cue A\nsecond line"\t12\t1:30\r\nCue B\t13\t0:45\r\n'
            page.evaluate("t => navigator.clipboard.writeText(t)", block)
            row_cell(page, ids[4], "Name").click()
            page.keyboard.press("Control+v")
            expect(row_cell(page, ids[4], "Time")).to_have_text("1:30:00")
            expect(row_cell(page, ids[5], "Time")).to_have_text("0:45:00")
            expect(row_cell(page, ids[5], "Name")).to_have_text("Cue B")
            expect(row_cell(page, ids[4], "Page")).to_have_text("12")
            expect(page.locator("table.grid .pending")).to_have_count(0)
            expect(grid.locator("td.in-range")).to_have_count(6)  # the pasted block
            now = values(api, table)
            assert now[ids[4]][fields["Name"]] == "Cue A\nsecond line"
            assert now[ids[4]][fields["Time"]] == 90 * 60_000
            assert now[ids[5]][fields["Page"]] == 13

            # one Undo reverts the whole paste
            page.get_by_role("button", name="Undo").click()
            expect(row_cell(page, ids[4], "Name")).to_have_text("Cue 5")
            expect(row_cell(page, ids[5], "Name")).to_have_text("Cue 6")
            expect(row_cell(page, ids[4], "Page")).to_have_text("5")
            expect(row_cell(page, ids[5], "Time")).to_have_text("")
            now = values(api, table)
            assert now[ids[4]][fields["Name"]] == "Cue 5"
            assert now[ids[5]].get(fields["Time"]) is None

            # a cell that can't take its value is reported; the others land
            page.evaluate("t => navigator.clipboard.writeText(t)",
                          "Cue X\tabc\t1:00\tyes\tConfirmed")
            row_cell(page, ids[7], "Name").click()
            page.keyboard.press("Control+v")
            expect(page.locator(".toast").last).to_contain_text(
                "1 cell not pasted: Page row 8: “abc” is not a whole number")
            expect(row_cell(page, ids[7], "Name")).to_have_text("Cue X")
            expect(row_cell(page, ids[7], "Status")).to_have_text("Confirmed")
            expect(row_cell(page, ids[7], "Page")).to_have_text("8")
            expect(row_cell(page, ids[7], "Time")).to_have_text("1:00:00")
            expect(row_cell(page, ids[7], "Called").get_by_role("checkbox")).to_be_checked()

            # one value pasted over a selected range fills it; Delete clears a range at once
            page.evaluate("t => navigator.clipboard.writeText(t)", "7")
            row_cell(page, ids[10], "Page").click()
            page.keyboard.press("Shift+ArrowDown")
            page.keyboard.press("Shift+ArrowDown")
            page.keyboard.press("Control+v")
            for i in (10, 11, 12):
                expect(row_cell(page, ids[i], "Page")).to_have_text("7")
            page.keyboard.press("Delete")
            for i in (10, 11, 12):
                expect(row_cell(page, ids[i], "Page").locator(".cell-value")).to_have_text("")
            page.get_by_role("button", name="Undo").click()
            for i in (10, 11, 12):
                expect(row_cell(page, ids[i], "Page")).to_have_text("7")

            # pasting past the last row says so
            page.evaluate("t => navigator.clipboard.writeText(t)", "Last\r\nBeyond\r\n")
            row_cell(page, ids[0], "Page").click()
            page.keyboard.press("Control+End")
            page.keyboard.press("Home")
            expect(row_cell(page, ids[-1], "Name")).to_be_focused()
            page.keyboard.press("Control+v")
            expect(page.locator(".toast").last).to_contain_text("1 row not pasted: no rows below")
            expect(row_cell(page, ids[-1], "Name")).to_have_text("Last")

            # columns: drag the header's right edge to resize, drag a header to move it
            page.keyboard.press("Control+Home")
            name_th = header(page, fields["Name"])
            box = name_th.bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] + 60, box["y"] + box["height"] / 2, steps=4)
            page.mouse.up()
            wider = name_th.bounding_box()
            assert wider is not None and abs(wider["width"] - (box["width"] + 62)) < 4, wider
            page_th = header(page, fields["Page"])
            pbox = page_th.bounding_box()
            nbox = name_th.bounding_box()
            assert pbox is not None and nbox is not None
            page.mouse.move(pbox["x"] + 20, pbox["y"] + pbox["height"] / 2)
            page.mouse.down()
            page.mouse.move(nbox["x"] + 10, nbox["y"] + nbox["height"] / 2, steps=6)
            page.mouse.up()
            expect(grid.locator("thead th[data-field] .th-label").first).to_have_text("Page")
            assert headers(page) == ["Page", "Name", "Time", "Called", "Status"]
            # the keyboard way: on a header, Ctrl+Shift+→ moves it, Alt+Shift+← narrows it
            header(page, fields["Page"]).focus()
            page.keyboard.press("Control+Shift+ArrowRight")
            expect(grid.locator("thead th[data-field] .th-label").first).to_have_text("Name")
            expect(header(page, fields["Page"])).to_be_focused()
            before = page_th.bounding_box()
            with page.expect_response(lambda r: r.request.method == "POST" and r.ok and
                                      r.url.split("?")[0].endswith("/views/settings")):
                page.keyboard.press("Alt+Shift+ArrowLeft")
            after = page_th.bounding_box()
            assert before is not None and after is not None
            assert abs(after["width"] - (before["width"] - 16)) < 2, (before, after)
            # the view keeps them (per user): after a reload, same order and widths
            name_w = name_th.bounding_box()
            page.reload()
            expect(row_cell(page, ids[0], "Name")).to_have_text("Cue 1")
            assert headers(page) == ["Name", "Page", "Time", "Called", "Status"]
            for th, was in ((name_th, name_w), (page_th, after)):
                expect(th).to_be_visible()
                box_now = th.bounding_box()
                assert box_now is not None and was is not None
                assert abs(box_now["width"] - was["width"]) < 2, (box_now, was)
            # cells follow their columns
            expect(row_cell(page, ids[0], "Name")).to_have_text("Cue 1")
            expect(row_cell(page, ids[0], "Page")).to_have_text("1")
            page.screenshot(path="/tmp/ui-grid-keys.png")

            # hovering a cell says who changed it last; the row's button (or Shift+Enter)
            # opens the record
            row_cell(page, ids[7], "Status").hover()
            expect(page.locator(".grid-tip")).to_have_text(
                re.compile(r"Last changed by Alex · (just now|\d+ min ago)"))
            expect(page.get_by_role("button", name="Open record Cue X")).to_have_count(1)
            row_cell(page, ids[7], "Status").click()
            page.keyboard.press("Shift+Enter")
            expect(page.locator("body")).to_have_class(re.compile(r"\binspector-open\b"))

            # the spreadsheet text rules themselves (web/clipboard.js, pure functions)
            checks = page.evaluate(CLIPBOARD_CHECKS, {
                "excel": 'a\t"b\tc"\t"say ""hi"""\r\n"two\nlines"\t\tz\r\n',
                "lone": '5" pipe\tx',
                "round": [["a\tb", 'say "hi"', "two\nlines", "plain"]],
                "csv": '"Smith, John",42'})
            assert checks["excel"] == [["a", "b\tc", 'say "hi"'], ["two\nlines", "", "z"]]
            assert checks["lone"] == [['5" pipe', "x"]]
            assert checks["round"] == '"a\tb"\t"say ""hi"""\t"two\nlines"\tplain'
            assert checks["csv"] == [["Smith, John", "42"]]
            assert checks["values"] == [5_400_000, 5_400_000, 1234, 2.5, True, False,
                                        "2024-05-01", "2024-05-01", "2024-05-01", "p", "Done",
                                        "id-1", None]
            assert checks["errors"] == [
                "ERR is not a whole number", "ERR is not yes or no", "ERR is not a date",
                "ERR is not one of the choices", "ERR is not the name of a record",
                "ERR matches 2 records", "ERR is a file field (attach files instead)"]

        unexpected = [e for e in errors if not re.search(r"Failed to load resource", e)]
        assert not unexpected, unexpected


def test_ten_thousand_rows_are_virtualized(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    n = 10_000
    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        api = Engine(url)
        labels = ["Name", "Page", "Time", "Called", "Scene", "Notes", "Colour", "Level"]
        types = ["text", "integer", "duration", "boolean", "text", "text", "text", "float"]
        table = api.ok("POST", "/tables/create", {"label": "Big", "fields": [
            {"label": lab, "type": typ} for lab, typ in zip(labels, types, strict=True)]})["table"]
        api.ok("POST", "/records/create", {"table": table, "values": {"Name": "Cue 1"}})
        tdef = next(t for t in api.ok("GET", "/tables/list")["tables"] if t["id"] == table)
        names = {f["label"]: f["name"] for f in tdef["fields"]}
        records = [{"id": str(uuid.UUID(int=i + 1)), "tables": [table], "values": {
            names["Name"]: f"Cue {i + 1}", names["Page"]: i + 1, names["Time"]: 1000 * i,
            names["Called"]: i % 2 == 0, names["Scene"]: f"Scene {i // 50}",
            names["Notes"]: "standby", names["Colour"]: "R02", names["Level"]: 0.5}}
            for i in range(n)]

        def fake_list(route: Any) -> None:
            q = parse_qs(urlsplit(route.request.url).query)
            if q.get("table") != [table] or "ids" in q:
                route.continue_()
                return
            real = route.fetch().json()
            route.fulfill(status=200, content_type="application/json",
                          body=json.dumps({**real, "records": records}))

        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            page.route(re.compile(r".*/records/list\?.*"), fake_list)
            page.reload()
            expect(page.locator("#table-title")).to_have_text("Big")
            grid = page.get_by_role("grid", name="Big")
            expect(grid).to_have_attribute("aria-rowcount", str(n + 1))
            rows = page.locator("table.grid tbody tr")
            first = rows.first.locator('td[data-label="Name"]')
            expect(first).to_have_text("Cue 1")
            assert rows.count() < 200

            # Ctrl+End reaches record 10 000, visible; still only a window of rows in the DOM
            first.click()
            page.keyboard.press("Control+End")
            last = page.locator(f'tr[data-id="{records[-1]["id"]}"] td[data-label="Level"]')
            expect(last).to_be_focused()
            expect(last).to_be_in_viewport()
            expect(focused_row(page)).to_have_attribute("aria-rowindex", str(n + 1))
            expect(page.locator(f'tr[data-id="{records[-1]["id"]}"] td[data-label="Name"]')
                   ).to_have_text(f"Cue {n}")
            assert rows.count() < 200

            # scrolling to the middle renders the rows there (aria-rowindex stays absolute)
            page.locator(".grid-wrap").evaluate("w => { w.scrollTop = w.scrollHeight / 2; }")
            mid = page.locator('table.grid tbody tr[aria-rowindex="5001"]')
            expect(mid.locator('td[data-label="Name"]')).to_have_text("Cue 5000")
            assert rows.count() < 200

            # focus follows the active cell when its row scrolls out and back in
            page.keyboard.press("Control+Home")
            expect(first).to_be_focused()
            page.locator(".grid-wrap").evaluate("w => { w.scrollTop = 200000; }")
            expect(page.locator(f'tr[data-id="{records[0]["id"]}"]')).to_have_count(0)
            page.locator(".grid-wrap").evaluate("w => { w.scrollTop = 0; }")
            expect(first).to_be_focused()
            page.keyboard.press("ArrowDown")
            expect(rows.nth(1).locator('td[data-label="Name"]')).to_be_focused()

            # dragging a selection past the bottom edge scrolls and keeps extending it
            box = page.locator(".grid-wrap").bounding_box()
            assert box is not None
            first.hover()
            page.mouse.down()
            page.mouse.move(box["x"] + 300, box["y"] + box["height"] + 40, steps=3)
            page.wait_for_function("""() => +document.activeElement.closest('tr')
                                          .getAttribute('aria-rowindex') > 60""")
            page.mouse.up()
            expect(page.locator("td:focus")).to_have_class(re.compile(r"\bin-range\b"))
            assert page.locator("td.in-range").count() > 20  # in every rendered row
            assert rows.count() < 200

        unexpected = [e for e in errors if not re.search(r"Failed to load resource", e)]
        assert not unexpected, unexpected


def test_drag_handle_moves_a_cue(tmp_path: Path) -> None:
    """J8 with the mouse: a cue stack shown in the grid (the view package's Stack picker); the
    row's drag handle moves a cue, and a move made elsewhere re-orders the rows live."""
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        api = Engine(url)
        api.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
        main = api.ok("POST", "/records/create", {"table": "lighting_cues.CueLists",
                                                  "values": {"name": "Main"}})["id"]
        # made out of order, so that the stack's order is not creation order
        cues = {n: api.ok("POST", "/records/create", {"table": "lighting_cues.Cues",
                                                      "values": {"number": n}})["id"]
                for n in ("3", "1", "4", "2")}
        for n in ("1", "2", "3", "4"):
            api.ok("POST", "/edges/create", {"type": "lighting_cues.cue_stack",
                                             "src": cues[n], "dst": main})

        def stack_order() -> list[str]:
            edges = api.ok("GET", f"/edges/list?entity={main}&type=lighting_cues.cue_stack"
                                  "&direction=in")["edges"]
            by_id = {v: k for k, v in cues.items()}
            return [by_id[e["src"]] for e in edges]

        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            page.get_by_role("navigation").get_by_role("button", name="Cues", exact=True).click()
            expect(page.locator("#table-title")).to_have_text("Cues")
            stack = page.get_by_role("combobox", name="Stack")
            expect(stack.locator("option")).to_have_text(["All cues", "Main"])
            expect(page.locator("#record-count")).to_have_text("4 records")
            with page.expect_response(lambda r: r.request.method == "POST" and r.ok and
                                      r.url.split("?")[0].endswith("/views/settings")):
                stack.select_option(label="Main")
            expect(page.locator(".grid-ordered")).to_have_count(1)
            rows = page.locator("table.grid tbody tr")
            expect(rows).to_have_count(4)
            numbers = rows.locator('td[data-label="Cue"]')
            expect(numbers).to_have_text(["1", "2", "3", "4"])

            # drag cue 4 by its handle above cue 1
            handle = page.get_by_role("button", name="Move 4")
            hbox = handle.bounding_box()
            top = rows.first.bounding_box()
            assert hbox is not None and top is not None
            page.mouse.move(hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2)
            page.mouse.down()
            page.mouse.move(hbox["x"] + 4, top["y"] + 3, steps=8)
            expect(page.locator(".grid-drop-line")).to_be_visible()
            page.mouse.up()
            expect(numbers).to_have_text(["4", "1", "2", "3"])
            expect(page.locator(".grid-drop-line")).to_be_hidden()
            assert stack_order() == ["4", "1", "2", "3"]

            # a move made elsewhere (another user, through the API) re-orders the rows live
            edges = {e["src"]: e["id"] for e in api.ok(
                "GET", f"/edges/list?entity={main}&type=lighting_cues.cue_stack"
                       "&direction=in")["edges"]}
            api.ok("POST", "/edges/reorder", {"id": edges[cues["1"]],
                                              "after": edges[cues["3"]]})
            expect(numbers).to_have_text(["4", "2", "3", "1"])
            rows.nth(1).hover()
            page.screenshot(path="/tmp/ui-grid-stack.png")

        unexpected = [e for e in errors if not re.search(r"Failed to load resource", e)]
        assert not unexpected, unexpected
