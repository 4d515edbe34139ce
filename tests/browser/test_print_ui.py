"""Browser test of printable paperwork (issue 9): a call sheet and a cue sheet.

One engine with the Crew Calls and Lighting Cues modules adopted over the API. **Print…**
(toolbar, shown on the modules' tables) opens the dialog (web/print.js), which asks for the
day, previews the call sheet (calls of that day in call-time order with person, role, time,
location and notes, the workspace name and the "Rev" stamp of
GET /workspace/revision); under print media only the sheet is shown and the app is hidden; the
cue sheet lists a cue list's cues in stack order (not creation order). Screenshots land in
/tmp/ui-print-*.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.test_access_ui import no_errors
from tests.browser.test_grid import chromium, open_page, serve
from tests.browser.test_sync_ui import Engine

DAY, OTHER_DAY = "2026-11-21", "2026-11-22"

# the browser's print dialog cannot be driven headless: count the calls instead
STUB_PRINT = "() => { window.__printed = 0; window.print = () => { window.__printed += 1; }; }"


def _open_table(page: Any, label: str) -> None:
    page.locator("#table-list").get_by_role("button", name=label, exact=True).click()
    from playwright.sync_api import expect

    expect(page.locator("#table-title")).to_have_text(label)


def _rows(dialog: Any) -> Any:
    return dialog.locator(".print-preview table.print-table tbody tr")


def test_call_sheet_and_cue_sheet(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        for mid in ("crew_calls", "lighting_cues"):
            eng.ok("POST", "/modules/adopt", {"id": mid})
        ws_name = eng.ok("GET", "/workspace/current")["name"]
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            expect(page.locator("#conn")).to_have_text("Live")
            at = page.evaluate("([h, m]) => new Date(2026, 10, 21, h, m).getTime()", [9, 30])
            later = page.evaluate("([h, m]) => new Date(2026, 10, 21, h, m).getTime()", [14, 5])
            early = page.evaluate("([h, m]) => new Date(2026, 10, 21, h, m).getTime()", [7, 45])

            # crew and their calls; one call is on another day
            ada = eng.ok("POST", "/records/create", {"table": "crew_calls.Crew", "values": {
                "name": "Ada Lovelace", "role": "Electrician"}})["id"]
            bo = eng.ok("POST", "/records/create", {"table": "crew_calls.Crew", "values": {
                "name": "Bo Diddley", "role": "Sound"}})["id"]
            calls = [
                ("Focus", DAY, at, "Stage", "Bring gloves", ada, None),
                ("Fit-up", DAY, early, "Loading dock", "", bo, "Rigger"),
                ("Show call", DAY, later, "Stage door", "", ada, None),
                ("Strike", OTHER_DAY, at, "Stage", "", bo, None),
            ]
            for label, day, when, where, notes, who, role in calls:
                c = eng.ok("POST", "/records/create", {"table": "crew_calls.Calls", "values": {
                    "label": label, "day": day, "call_time": when, "location": where,
                    "notes": notes or None}})["id"]
                body: dict[str, Any] = {"type": "crew_calls.for_person", "src": c, "dst": who}
                if role:
                    body["props"] = {"role_today": role}
                eng.ok("POST", "/edges/create", body)
            rev = eng.ok("GET", "/workspace/revision")
            assert rev["stamp"].startswith(f"Rev {rev['revision']} · ")

            page.evaluate(STUB_PRINT)
            _open_table(page, "Crew")
            expect(page.get_by_role("button", name="Print…")).to_be_visible()
            _open_table(page, "Calls")
            page.get_by_role("button", name="Print…").click()
            dialog = page.get_by_role("dialog", name="Print call sheet")
            expect(dialog).to_be_visible()
            day = dialog.get_by_label("Day")
            expect(day).to_have_value(DAY)  # the next day with calls (the test's days are ahead)
            preview = dialog.get_by_role("region", name="Print preview")
            expect(preview).to_contain_text(ws_name)
            expect(preview).to_contain_text("Call sheet — Saturday, November 21, 2026")
            expect(preview).to_contain_text("3 calls")
            expect(preview.locator(".print-rev")).to_have_text(rev["stamp"])
            expect(preview).to_contain_text("Printed ")
            rows = _rows(dialog)
            expect(rows).to_have_count(3)
            for i, (time_, person, role, call, where) in enumerate([
                    ("07:45", "Bo Diddley", "Rigger", "Fit-up", "Loading dock"),
                    ("09:30", "Ada Lovelace", "Electrician", "Focus", "Stage"),
                    ("14:05", "Ada Lovelace", "Electrician", "Show call", "Stage door")]):
                row = rows.nth(i)
                expect(row.locator('td[data-col="Time"]')).to_have_text(time_)
                expect(row.locator('td[data-col="Person"]')).to_have_text(person)
                expect(row.locator('td[data-col="Role"]')).to_have_text(role)
                expect(row.locator('td[data-col="Call"]')).to_have_text(call)
                expect(row.locator('td[data-col="Location"]')).to_have_text(where)
            expect(rows.nth(1).locator('td[data-col="Notes"]')).to_have_text("Bring gloves")
            expect(preview).not_to_contain_text("Strike")
            page.screenshot(path="/tmp/ui-print-call-preview.png")

            # in print, only the sheet shows: the app and the dialog are hidden
            sheet = page.locator("#print-sheet")
            expect(sheet).to_be_hidden()
            page.emulate_media(media="print")
            expect(sheet).to_be_visible()
            expect(sheet.locator("table.print-table tbody tr")).to_have_count(3)
            expect(sheet.locator(".print-rev")).to_have_text(rev["stamp"])
            expect(sheet).to_contain_text(ws_name)
            expect(page.locator("#app")).to_be_hidden()
            expect(dialog).to_be_hidden()
            page.screenshot(path="/tmp/ui-print-call-paper.png", full_page=True)
            page.emulate_media(media="screen")
            expect(page.locator("#app")).to_be_visible()
            expect(sheet).to_be_hidden()

            # another day; then Print opens the browser's print dialog
            day.fill(OTHER_DAY)
            expect(rows).to_have_count(1)
            expect(preview).to_contain_text("Strike")
            expect(preview).to_contain_text("1 call")
            dialog.get_by_role("button", name="Print").click()
            assert page.evaluate("window.__printed") == 1
            dialog.get_by_role("button", name="Cancel").click()
            expect(dialog).to_be_hidden()
            page.emulate_media(media="print")  # closed: printing the page prints the app again
            expect(page.locator("#app")).to_be_visible()
            page.emulate_media(media="screen")

            # a cue sheet: three cues whose stack order differs from their creation order
            lst = eng.ok("POST", "/records/create", {"table": "lighting_cues.CueLists",
                                                     "values": {"name": "Main"}})["id"]
            eng.ok("POST", "/records/create", {"table": "lighting_cues.CueLists",
                                               "values": {"name": "Preshow"}})
            cue = {}
            for num, label, secs, pg in (("3", "Blackout", 0, 40), ("1", "House to half", 5, 1),
                                         ("2", "Warm wash", 12, 3)):
                cue[num] = eng.ok("POST", "/records/create", {
                    "table": "lighting_cues.Cues", "values": {
                        "number": num, "label": label, "time": secs * 1000, "page": pg,
                        "notes": "Slow" if num == "2" else None}})["id"]
            g3 = eng.ok("POST", "/edges/create", {"type": "lighting_cues.cue_stack",
                                                  "src": cue["3"], "dst": lst})["id"]
            g1 = eng.ok("POST", "/edges/create", {"type": "lighting_cues.cue_stack",
                                                  "src": cue["1"], "dst": lst,
                                                  "before": g3})["id"]
            eng.ok("POST", "/edges/create", {"type": "lighting_cues.cue_stack",
                                             "src": cue["2"], "dst": lst, "after": g1,
                                             "before": g3})
            rev = eng.ok("GET", "/workspace/revision")

            _open_table(page, "Cues")
            page.get_by_role("button", name="Print…").click()
            dialog = page.get_by_role("dialog", name="Print cue sheet")
            dialog.get_by_label("Cue list").select_option(label="Main")
            expect(dialog.get_by_label("Cue list")).to_have_value(lst)
            preview = dialog.get_by_role("region", name="Print preview")
            expect(preview).to_contain_text("Cue sheet — Main")
            expect(preview).to_contain_text("3 cues")
            expect(preview.locator(".print-rev")).to_have_text(rev["stamp"])
            rows = _rows(dialog)
            expect(rows).to_have_count(3)
            expect(rows.locator('td[data-col="Cue"]')).to_have_text(["1", "2", "3"])
            expect(rows.locator('td[data-col="Label"]')).to_have_text(
                ["House to half", "Warm wash", "Blackout"])
            expect(rows.locator('td[data-col="Time"]')).to_have_text(
                ["0:00:05", "0:00:12", "0:00:00"])
            expect(rows.locator('td[data-col="Page"]')).to_have_text(["1", "3", "40"])
            expect(rows.locator('td[data-col="Notes"]')).to_have_text(["", "Slow", ""])
            page.emulate_media(media="print")
            sheet_rows = page.locator("#print-sheet table.print-table tbody tr")
            expect(sheet_rows.locator('td[data-col="Cue"]')).to_have_text(["1", "2", "3"])
            expect(page.locator("#app")).to_be_hidden()
            page.screenshot(path="/tmp/ui-print-cue-paper.png", full_page=True)
            page.emulate_media(media="screen")
            # the other list is empty
            dialog.get_by_label("Cue list").select_option(label="Preshow")
            expect(preview).to_contain_text("This cue list has no cues yet.")
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
            no_errors(errors)
