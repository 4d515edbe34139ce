"""Browser tests of the table view (spec 05 §4 "Search, filter, sort"; J8 "Reorder a cue stack").

`test_search_filter_sort_fields`: quick search narrows the rows and the count reads "2 of 5
records"; a filter and a two-level sort give the expected order; a field hidden and another
moved in the Fields popover; after a reload every setting is back (saved per user through
/views/settings).

`test_cue_stack`: lighting-cues adopted through the API, a cue list with four cues linked in
order; picking the cue list under **Stack** shows its cues in stack order; Alt+↓ on the first
row moves it, the order survives a reload, and a second browser context on the same engine
sees the move live. Screenshots land in /tmp/ui-view-*.png.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.browser.test_access_ui import no_errors
from tests.browser.test_grid import cell, chromium, open_page, serve
from tests.browser.test_sync_ui import Engine

CAST = [("Alice", 34, "Sound"), ("Bob", 41, "Lights"), ("Chiara", 29, "Lights"),
        ("Dan", 41, "Sound"), ("Ali", 22, "Props")]


def names(page: Any, label: str = "Name") -> list[str]:
    return [t.strip() for t in page.locator(
        f'table.grid tbody tr td[data-label="{label}"]').all_text_contents()]


def headers(page: Any) -> list[str]:
    return [t.strip() for t in page.locator(
        "table.grid thead th[data-field] .th-label").all_text_contents()]


def saved(page: Any, check: Callable[[dict[str, Any]], bool] = lambda s: True) -> Any:
    """Wait for the view-settings save (they are debounced) whose settings pass `check`."""
    def match(r: Any) -> bool:
        if not (r.url.split("?")[0].endswith("/views/settings") and r.request.method == "POST"
                and r.ok):
            return False
        return check(r.request.post_data_json["settings"])
    return page.expect_response(match)


def test_search_filter_sort_fields(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        table = eng.ok("POST", "/tables/create", {"label": "Cast", "fields": [
            {"label": "Name"}, {"label": "Age", "type": "integer"},
            {"label": "Dept", "type": "enum",
             "options": {"choices": ["Sound", "Lights", "Props"]}}]})["table"]
        for name, age, dept in CAST:
            eng.ok("POST", "/records/create", {"table": table, "values": {
                "Name": name, "Age": age, "Dept": dept}})
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            expect(page.locator("#table-title")).to_have_text("Cast")
            count = page.locator("#record-count")
            expect(count).to_have_text("5 records")

            # quick search: Ctrl+F from the grid, case-insensitive; Esc clears it
            cell(page, 0, "Name").click()
            page.keyboard.press("Control+f")
            search = page.get_by_role("searchbox", name="Search this table")
            expect(search).to_be_focused()
            page.keyboard.type("ALI")
            expect(count).to_have_text("2 of 5 records")
            expect(page.locator("table.grid tbody tr")).to_have_count(2)
            assert names(page) == ["Alice", "Ali"]
            page.keyboard.type("ce")
            expect(count).to_have_text("1 of 5 records")
            page.keyboard.press("Escape")
            expect(search).to_have_value("")
            expect(count).to_have_text("5 records")

            # filter: Age ≥ 29
            page.get_by_role("button", name="Filter").click()
            filters = page.get_by_role("dialog", name="Filters")
            filters.get_by_role("button", name="Add filter").click()
            filters.get_by_label("Filter 1: field").select_option(label="Age")
            filters.get_by_label("Filter 1: condition").select_option(label="≥")
            filters.get_by_label("Filter 1: value").fill("29")
            expect(count).to_have_text("4 of 5 records")
            page.keyboard.press("Escape")
            expect(filters).to_be_hidden()
            expect(page.get_by_role("button", name="Filter (1)")).to_be_focused()

            # sort: Age descending, then Name ascending
            page.get_by_role("button", name="Sort").click()
            sort = page.get_by_role("dialog", name="Sort")
            sort.get_by_role("button", name="Add a sort level").click()
            sort.get_by_label("Sort level 1: field").select_option(label="Age")
            sort.get_by_label("Sort level 1: direction").select_option("desc")
            sort.get_by_role("button", name="Add another sort level").click()
            sort.get_by_label("Sort level 2: field").select_option(label="Name")
            expect(sort.get_by_label("Sort level 2: direction")).to_have_value("asc")
            page.keyboard.press("Escape")
            expect(page.get_by_role("button", name="Sort (2)")).to_be_visible()
            expect(page.locator("table.grid tbody tr")).to_have_count(4)
            assert names(page) == ["Bob", "Dan", "Alice", "Chiara"]

            # fields: hide Dept, move Age first (keyboard: the move buttons)
            page.get_by_role("button", name="Fields").click()
            fields = page.get_by_role("dialog", name="Fields")
            fields.get_by_role("checkbox", name="Dept").uncheck()
            expect(page.get_by_role("button", name="Fields (1 hidden)")).to_be_visible()
            by_label = {f["label"]: f["name"] for t in eng.ok("GET", "/tables/list")["tables"]
                        if t["id"] == table for f in t["fields"]}
            with saved(page, lambda s: s["columns"][0]["name"] == by_label["Age"]
                       and any(c["hidden"] for c in s["columns"])):
                fields.get_by_role("button", name="Move Age up").click()
            expect(fields.get_by_role("button", name="Move Age up")).to_be_disabled()
            page.keyboard.press("Escape")
            assert headers(page) == ["Age", "Name"]
            # a column resized from the keyboard in the grid is remembered too
            name_th = page.locator('table.grid thead th[data-field]').nth(1)
            width = name_th.evaluate("th => th.getBoundingClientRect().width")
            name_th.focus()
            with saved(page, lambda s: any(c["name"] == by_label["Name"] and c.get("width")
                                           for c in s["columns"])):
                page.keyboard.press("Alt+Shift+ArrowRight")
            wider = name_th.evaluate("th => th.getBoundingClientRect().width")
            assert wider > width
            page.screenshot(path="/tmp/ui-view-settings.png")

            # reload: every setting is back
            page.reload()
            expect(page.locator("#table-title")).to_have_text("Cast")
            expect(count).to_have_text("4 of 5 records")
            expect(page.locator("table.grid tbody tr")).to_have_count(4)
            assert names(page) == ["Bob", "Dan", "Alice", "Chiara"]
            assert headers(page) == ["Age", "Name"]
            expect(page.locator('table.grid thead th[data-field]').nth(1)).to_be_visible()
            assert page.locator('table.grid thead th[data-field]').nth(1).evaluate(
                "th => th.getBoundingClientRect().width") == wider
            expect(page.get_by_role("button", name="Filter (1)")).to_be_visible()
            expect(page.get_by_role("button", name="Sort (2)")).to_be_visible()
            saved_settings = eng.ok("GET", f"/views/settings?table={table}")["settings"]
            assert saved_settings["filters"][0]["op"] == "ge"
            assert saved_settings["filters"][0]["value"] == 29

            # a live change: a teammate's edit moves a row under the sort, a new one appears
            bob = next(r["id"] for r in eng.ok("GET", f"/records/list?table={table}")["records"]
                       if r["values"] and "Bob" in r["values"].values())
            eng.ok("POST", "/records/update", {"id": bob, "values": {"Age": 30}})
            expect(cell(page, 2, "Name")).to_have_text("Bob")
            assert names(page) == ["Dan", "Alice", "Bob", "Chiara"]
            eng.ok("POST", "/records/create", {"table": table, "values": {
                "Name": "Eve", "Age": 50}})
            expect(count).to_have_text("5 of 6 records")
            expect(cell(page, 0, "Name")).to_have_text("Eve")

            # the row being edited stays (with the draft) when a change filters it out
            alice = cell(page, 2, "Name")
            expect(alice).to_have_text("Alice")
            alice.dblclick()
            editor = page.get_by_role("textbox", name="Name, editing")
            editor.fill("Alicia")
            alice_id = next(r["id"] for r in eng.ok(
                "GET", f"/records/list?table={table}")["records"]
                if "Alice" in r["values"].values())
            eng.ok("POST", "/records/update", {"id": alice_id, "values": {"Age": 10}})
            expect(count).to_have_text("4 of 6 records")
            expect(editor).to_be_focused()
            expect(editor).to_have_value("Alicia")
            expect(page.locator("table.grid tbody tr")).to_have_count(5)
            editor.press("Enter")  # saved; now it leaves the filtered view
            expect(page.locator("table.grid tbody tr")).to_have_count(4)
            assert names(page) == ["Eve", "Dan", "Bob", "Chiara"]
            assert eng.ok("GET", f"/records/{alice_id}")["values"] and "Alicia" in eng.ok(
                "GET", f"/records/{alice_id}")["values"].values()
            no_errors(errors)


def test_cue_stack(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        eng.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
        main = eng.ok("POST", "/records/create", {"table": "lighting_cues.CueLists",
                                                  "values": {"name": "Main"}})["id"]
        eng.ok("POST", "/records/create", {"table": "lighting_cues.CueLists",
                                           "values": {"name": "Act 2"}})
        # made in a different order than the stack's, so stack order is not creation order
        cues = {}
        for n in ("4", "1", "3", "2"):
            cues[n] = eng.ok("POST", "/records/create", {"table": "lighting_cues.Cues",
                                                         "values": {"number": n}})["id"]
        loose = eng.ok("POST", "/records/create", {"table": "lighting_cues.Cues",
                                                   "values": {"number": "99"}})["id"]
        for n in ("1", "2", "3", "4"):
            eng.ok("POST", "/edges/create", {"type": "lighting_cues.cue_stack",
                                             "src": cues[n], "dst": main})
        assert loose

        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            page.get_by_role("navigation").get_by_role("button", name="Cues", exact=True).click()
            expect(page.locator("#table-title")).to_have_text("Cues")
            count = page.locator("#record-count")
            expect(count).to_have_text("5 records")
            stack = page.get_by_role("combobox", name="Stack")
            expect(stack).to_be_visible()
            expect(stack.locator("option")).to_have_text(["All cues", "Act 2", "Main"])

            # a sort is set, then the stack is picked: its own order wins, with a hint
            page.get_by_role("button", name="Sort").click()
            sort = page.get_by_role("dialog", name="Sort")
            sort.get_by_role("button", name="Add a sort level").click()
            sort.get_by_label("Sort level 1: direction").select_option("desc")
            page.keyboard.press("Escape")
            assert names(page, "Cue") == ["99", "4", "3", "2", "1"]
            with saved(page, lambda s: s["stack"] is not None):
                stack.select_option(label="Main")
            expect(count).to_have_text("4 records")
            expect(page.locator("table.grid tbody tr")).to_have_count(4)
            assert names(page, "Cue") == ["1", "2", "3", "4"]
            expect(page.locator(".vb-hint")).to_contain_text("Sorting is off")

            # a second browser context on the same engine, showing the same stack
            page2 = open_page(browser, url, errors)
            expect(page2.locator("#table-title")).to_have_text("Cues")
            expect(page2.locator("#record-count")).to_have_text("4 records")
            assert names(page2, "Cue") == ["1", "2", "3", "4"]

            # Alt+↓ on the first row moves cue 1 below cue 2
            cell(page, 0, "Cue").click()
            page.keyboard.press("Alt+ArrowDown")
            expect(cell(page, 0, "Cue")).to_have_text("2")
            expect(cell(page, 1, "Cue")).to_have_text("1")
            expect(cell(page, 1, "Cue")).to_be_focused()
            expect(cell(page2, 0, "Cue")).to_have_text("2")  # live, no reload
            expect(cell(page2, 1, "Cue")).to_have_text("1")
            edges = eng.ok("GET", f"/edges/list?entity={main}&type=lighting_cues.cue_stack"
                                  "&direction=in")["edges"]
            assert [e["src"] for e in edges] == [cues[n] for n in ("2", "1", "3", "4")]
            page.screenshot(path="/tmp/ui-view-stack.png")

            # New record joins the stack at its end
            page.locator("#add-record-btn").click()
            expect(count).to_have_text("5 records")
            expect(cell(page, 4, "Cue")).to_be_focused()
            page.keyboard.type("5")
            page.keyboard.press("Enter")
            expect(cell(page2, 4, "Cue")).to_have_text("5")

            page.reload()
            expect(page.locator("#table-title")).to_have_text("Cues")
            expect(count).to_have_text("5 records")
            assert names(page, "Cue") == ["2", "1", "3", "4", "5"]

            # All cues again: the sort applies
            stack.select_option(label="All cues")
            expect(count).to_have_text("6 records")
            assert names(page, "Cue") == ["99", "5", "4", "3", "2", "1"]
            no_errors(errors)
