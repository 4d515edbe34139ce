"""Browser test of the record inspector (spec 05 §2 "Right: the record inspector"; J6, J7, J9).

One engine (display name Alex) with the Lighting Cues module adopted over the API, a cue list
"Main" and a cue "Q1". In the browser: the grid's open button shows Q1 in the right-hand panel;
two fields edited in the form and one Save change both grid cells, and one Undo reverts both;
the history drawer lists "Alex changed …" entries with the old and new values (filterable by
field); hovering a grid cell says who last changed it; Add link… with the searchable picker links
Q1 into the cue list Main, the link shows in Q1's panel ("In cue list →" Main) and, from the
other direction, in Main's ("← In cue list" Q1); a field changed elsewhere while being edited
keeps the draft with a hint; deleting the cue removes the link and one Undo brings both back;
Remove takes the link away; Esc closes the panel; Shift+Enter on a
cell opens a record, a file dropped on its Attachments is attached, and its long history comes
in pages (Show more).
Screenshots land in /tmp/ui-inspector-*.png.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.browser.test_grid import cell, chromium, open_page, serve
from tests.browser.test_sync_ui import Engine


def _drop_file(page: Any, target: Any, name: str, mime: str, text: str) -> None:
    """Drop a file from "the desktop" on an element (a DataTransfer built in the page)."""
    dt = page.evaluate_handle(
        """([name, mime, text]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], name, { type: mime }));
            return dt;
        }""", [name, mime, text])
    target.dispatch_event("dragenter", {"dataTransfer": dt})
    target.dispatch_event("dragover", {"dataTransfer": dt})
    target.dispatch_event("drop", {"dataTransfer": dt})


def test_record_inspector_journey(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        eng.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
        main = eng.ok("POST", "/records/create",
                      {"table": "lighting_cues.CueLists", "values": {"name": "Main"}})["id"]
        eng.ok("POST", "/records/create", {"table": "lighting_cues.Cues", "values": {
            "number": "Q1", "label": "House out", "time": 5000}})
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            expect(page.locator("#conn")).to_have_text("Live")
            page.locator("#table-list").get_by_role("button", name="Cues", exact=True).click()
            expect(cell(page, 0, "Label")).to_have_text("House out")

            # open Q1 from the grid: the panel is a landmark named after the record
            page.get_by_role("button", name="Open record Q1").click()
            panel = page.get_by_role("complementary", name="Q1")
            expect(panel.get_by_role("heading", name="Q1")).to_be_visible()
            expect(panel.get_by_label("Label", exact=True)).to_have_value("House out")
            expect(panel.get_by_label("Time", exact=True)).to_have_value("0:00:05")
            expect(panel.get_by_role("button", name="Save")).to_be_disabled()

            # J6: two fields in the form, one Save = one change in the grid and one undo step
            panel.get_by_label("Label", exact=True).fill("Blackout")
            panel.get_by_label("Time", exact=True).fill("0:00:08")
            expect(panel.get_by_text("2 unsaved changes")).to_be_visible()
            page.screenshot(path="/tmp/ui-inspector-form.png")
            panel.get_by_role("button", name="Save 2 changes").click()
            expect(cell(page, 0, "Label")).to_have_text("Blackout")
            expect(cell(page, 0, "Time")).to_have_text("0:00:08")
            expect(panel.get_by_role("button", name="Save")).to_be_disabled()
            expect(panel.get_by_label("Time", exact=True)).to_have_value("0:00:08")

            page.locator("#undo-btn").click()
            expect(cell(page, 0, "Label")).to_have_text("House out")
            expect(cell(page, 0, "Time")).to_have_text("0:00:05")
            expect(panel.get_by_label("Label", exact=True)).to_have_value("House out")
            expect(panel.get_by_label("Time", exact=True)).to_have_value("0:00:05")

            # the history drawer: who changed what, from what to what, newest first
            panel.get_by_role("button", name="History").click()
            history = panel.get_by_role("list", name="Changes, newest first")
            expect(history).to_contain_text(
                "Alex changed Label from “Blackout” to “House out”")
            expect(history).to_contain_text(
                "Alex changed Label from “House out” to “Blackout”")
            expect(history).to_contain_text("Alex changed Time from “0:00:05” to “0:00:08”")
            expect(history.locator("li").first).to_contain_text("(undo)")
            panel.get_by_label("Show changes to").select_option(label="Time")
            expect(history.locator("li", has_text="Label")).to_have_count(0)
            expect(history).to_contain_text("Alex changed Time from “0:00:08” to “0:00:05”")
            page.screenshot(path="/tmp/ui-inspector-history.png")

            # the grid's hover names who last changed a cell
            cell(page, 0, "Label").hover()
            expect(page.get_by_role("tooltip")).to_contain_text("Last changed by Alex")

            # J7: link Q1 into the cue list Main with the searchable picker
            panel.get_by_role("button", name="Add link…").click()
            panel.get_by_label("Relationship").select_option(label="In cue list → …")
            search = panel.get_by_role("combobox", name="Record to link")
            expect(search).to_be_focused()
            search.fill("mai")
            found = panel.get_by_role("listbox", name="Records").get_by_role("option")
            expect(found).to_have_count(1)
            expect(found).to_contain_text("Main")
            search.press("Enter")
            links = panel.get_by_role("list", name="In cue list →")
            expect(links).to_contain_text("Main")
            page.screenshot(path="/tmp/ui-inspector-links.png")
            edges = eng.ok("GET", f"/edges/list?entity={main}")["edges"]
            assert [e["type"] for e in edges] == ["lighting_cues.cue_stack"]

            # the other direction, in the cue list's own panel
            links.get_by_role("button", name="Open Main (In cue list: Main)").click()
            panel = page.get_by_role("complementary", name="Main")
            expect(panel.get_by_role("heading", name="Main")).to_be_visible()
            back = panel.get_by_role("list", name="← In cue list")
            expect(back).to_contain_text("Q1")

            # a field changed elsewhere while it is being edited keeps the draft, with a hint
            name = panel.get_by_label("Name", exact=True)
            name.fill("Main (draft)")
            eng.ok("POST", "/records/update", {"id": main, "values": {"name": "Main list"}})
            expect(panel.get_by_text("Changed elsewhere to “Main list”")).to_be_visible()
            expect(name).to_have_value("Main (draft)")
            panel.get_by_role("button", name="Revert").click()
            expect(name).to_have_value("Main list")
            expect(panel.get_by_role("heading", name="Main list")).to_be_visible()

            # J7: deleting the cue removes its link in the same step; one undo restores both
            page.once("dialog", lambda d: d.accept())
            page.get_by_role("button", name="Delete record Q1").click()
            expect(page.locator("table.grid tbody tr")).to_have_count(0)
            expect(panel.get_by_text("No links yet.")).to_be_visible()
            page.locator("#undo-btn").click()
            expect(cell(page, 0, "Cue")).to_have_text("Q1")
            expect(back).to_contain_text("Q1")

            back.get_by_role("button", name="Remove link: Q1 In cue list this").click()
            expect(panel.get_by_text("No links yet.")).to_be_visible()
            assert eng.ok("GET", f"/edges/list?entity={main}")["edges"] == []

            # Esc closes the panel
            panel.get_by_role("heading", name="Main list").focus()
            page.keyboard.press("Escape")
            expect(page.locator("#inspector-host")).to_be_hidden()

            # J9: a file dropped on Attachments is attached to the record
            r = eng.ok("POST", "/tables/create", {"label": "Plots", "fields": [
                {"label": "Name", "type": "text"}, {"label": "Drawing", "type": "blob_ref"}]})
            plot = eng.ok("POST", "/records/create", {"table": r["table"], "values": {}})["id"]
            page.locator("#table-list").get_by_role("button", name="Plots").click()
            cell(page, 0, "Name").click()
            page.keyboard.press("Shift+Enter")  # the keyboard way to open a record
            panel = page.locator("#inspector-host")
            expect(panel.get_by_role("heading", level=2)).to_be_focused()
            panel.get_by_label("Name", exact=True).fill("Stage plot")
            panel.get_by_label("Name", exact=True).press("Enter")
            expect(cell(page, 0, "Name")).to_have_text("Stage plot")
            drop = panel.locator(".insp-file-drop")
            expect(drop).to_contain_text("Drop a file")
            _drop_file(page, drop, "plot.txt", "text/plain", "downstage left")
            expect(panel.get_by_role("button", name="Open Drawing of Stage plot: plot.txt")) \
                .to_be_visible()
            expect(cell(page, 0, "Drawing")).to_contain_text("plot.txt")
            page.screenshot(path="/tmp/ui-inspector-files.png")

            # a long history comes in pages: the newest 20, then Show more
            for i in range(20):
                eng.ok("POST", "/records/update", {"id": plot, "values": {"Name": f"Plot {i}"}})
            expect(panel.get_by_label("Name", exact=True)).to_have_value("Plot 19")
            # (the drawer stays open from record to record)
            expect(panel.get_by_role("button", name="History")).to_have_attribute(
                "aria-expanded", "true")
            entries = panel.get_by_role("list", name="Changes, newest first").locator("li")
            expect(entries).to_have_count(20)
            expect(entries.first).to_contain_text("Alex changed Name from “Plot 18” to “Plot 19”")
            panel.get_by_role("button", name="Show more").click()
            expect(entries).to_have_count(23)
            expect(entries.last).to_contain_text("Alex created this record in Plots")
            expect(panel.get_by_role("button", name="Show more")).to_be_hidden()
            assert errors == []


def test_inspector_conflict_and_its_history(tmp_path: Path) -> None:
    """A field conflict (Alex and Jordan set Cue 42's Time at the same time) in the inspector:
    the field is marked with Resolve…, the history marks both writes as conflicting edits, and
    resolving from the panel adds "(resolved the conflict)"."""
    from playwright.sync_api import expect

    from tests.browser.test_conflicts_overlays import _prepare

    _prepare(tmp_path / "data", tmp_path / "jordan", conflict=True)
    with serve(tmp_path / "data", tmp_path / "engine.log") as url, chromium() as browser:
        errors: list[str] = []
        page = open_page(browser, url, errors)
        expect(page.locator("#conflict-badge")).to_have_text("3 conflicts")
        page.get_by_role("button", name="Open record Cue 42").click()
        panel = page.get_by_role("complementary", name="Cue 42")
        resolve = panel.get_by_role("button", name="Resolve the conflict on Time")
        expect(resolve).to_contain_text("Conflict · Resolve…")
        expect(panel.get_by_label("Time", exact=True)).to_have_value("10:45")

        panel.get_by_role("button", name="History").click()
        history = panel.get_by_role("list", name="Changes, newest first")
        alex = history.locator("li", has_text="Alex changed Time from “10:00” to “10:30”")
        jordan = history.locator("li", has_text="Jordan changed Time from “10:00” to “10:45”")
        expect(alex).to_contain_text("(conflicting edit)")
        expect(jordan).to_contain_text("(conflicting edit)")
        page.screenshot(path="/tmp/ui-inspector-conflict.png")

        resolve.click()
        dlg = page.get_by_role("dialog", name="Resolve conflict")
        dlg.get_by_role("radio", name=re.compile(r"“10:30” Alex")).check()
        dlg.get_by_role("button", name="Resolve").click()
        expect(dlg).to_be_hidden()
        expect(resolve).to_be_hidden()
        expect(panel.get_by_label("Time", exact=True)).to_have_value("10:30")
        expect(history.locator("li").first).to_contain_text("(resolved the conflict)")
        assert errors == []
