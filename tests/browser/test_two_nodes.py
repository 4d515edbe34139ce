"""Browser test of two linked engines, one browser each (spec 05 J6 live updates, J10 conflicts).

Engine B joins A's workspace by address (a manual peer at A's sync port, as in test_sync_ui).
- Live update: B's grid is scrolled into the middle of a 40-record table with a cell selected;
  an edit typed in A's grid appears in B's grid without a reload, and B keeps its scroll
  position and its selected (focused) cell.
- Conflict: B removes the peer (both go offline), each browser edits the same cell, B adds the
  peer again; both browsers show the conflict marker with the same provisional value and count
  1 conflict. B resolves it (picks Alex's value); the marker disappears in A's browser too.
- Cue stack (J8): while unlinked, each browser moves a different cue with Alt+↓; linked again,
  both show the same merged order with both moves, and no conflict.
Screenshots land in /tmp/ui-two-*.png.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.browser.test_grid import chromium, open_page, serve
from tests.browser.test_sync_ui import LINK, Engine

ROWS = 40
OFFLINE = "Offline — all changes saved locally"
CONNECTED = "Connected · 1 peer"

# the grid's scroll container: the nearest ancestor of the table that scrolls vertically
SCROLLER = """() => {
  let el = document.querySelector('table.grid');
  while (el && el !== document.body) {
    const s = getComputedStyle(el);
    if (/(auto|scroll)/.test(s.overflowY) && el.scrollHeight > el.clientHeight + 1) return el;
    el = el.parentElement;
  }
  return null;
}"""


def at(page: Any, rec: str, label: str) -> Any:
    """The cell of record `rec` in column `label` (rows found by id, wherever they are)."""
    return page.locator(f'table.grid tbody tr[data-id="{rec}"] td[data-label="{label}"]')


def edit(cell: Any, text: str) -> None:
    cell.dblclick()
    editor = cell.get_by_role("textbox")
    editor.fill(text)
    editor.press("Enter")


def test_live_updates_and_a_conflict_between_two_browsers(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "a", tmp_path / "a.log", ["--name", "Alex", *LINK]) as url_a, \
            serve(tmp_path / "b", tmp_path / "b.log", ["--name", "Jordan", *LINK]) as url_b:
        a, b = Engine(url_a), Engine(url_b)
        table = a.ok("POST", "/tables/create", {"label": "Cues", "fields": [
            {"label": "Name"}, {"label": "Time"}]})["table"]
        ids = [a.ok("POST", "/records/create", {"table": table, "values": {
            "Name": f"Cue {i + 1}", "Time": f"10:{i:02d}"}})["id"] for i in range(ROWS)]
        ws = a.ok("GET", "/workspace/current")["id"]
        port = a.ok("GET", "/sync/status")["port"]
        b.ok("POST", "/workspace/join", {"id": ws, "host": "127.0.0.1", "port": port})

        with chromium() as browser:
            errors: list[str] = []
            page_a = open_page(browser, url_a, errors)
            page_b = open_page(browser, url_b, errors, height=480)  # B must scroll
            for page in (page_a, page_b):
                expect(page.locator("#sync-status")).to_have_text(CONNECTED, timeout=30_000)
                expect(page.locator("#table-title")).to_have_text("Cues", timeout=20_000)
            expect(page_b.locator("#record-count")).to_have_text(re.compile(rf"\b{ROWS} records"),
                                                             timeout=20_000)

            # B scrolls to the middle and selects Cue 21 · Time
            page_b.wait_for_function(f"({SCROLLER})() !== null")  # laid out, taller than B
            scroller = page_b.evaluate_handle(SCROLLER)
            scroller.evaluate("el => { el.scrollTop = el.scrollHeight / 2 - el.clientHeight / 2;"
                              " }")
            target, selected = ids[21], ids[20]
            expect(at(page_b, target, "Name")).to_be_visible()
            at(page_b, selected, "Time").click()
            expect(at(page_b, selected, "Time")).to_be_focused()
            top = scroller.evaluate("el => el.scrollTop")
            assert top > 0

            # A (taller window, no scrolling needed) edits Cue 22: B sees it, keeps its place
            edit(at(page_a, target, "Name"), "Cue 22 — blackout")
            expect(at(page_a, target, "Name")).to_have_text("Cue 22 — blackout")
            expect(at(page_b, target, "Name")).to_have_text("Cue 22 — blackout",
                                                            timeout=20_000)
            expect(at(page_b, selected, "Time")).to_be_focused()
            assert scroller.evaluate("el => el.scrollTop") == top
            page_b.screenshot(path="/tmp/ui-two-live.png")
            page_b.keyboard.press("ArrowDown")  # the selection still moves from where it was
            expect(at(page_b, target, "Time")).to_be_focused()

            # unlinked, both edit Cue 1 · Time; linked again: one conflict, the same value
            b.ok("DELETE", "/sync/peers", {"host": "127.0.0.1", "port": port})
            for page in (page_a, page_b):
                expect(page.locator("#sync-status")).to_have_text(OFFLINE, timeout=20_000)
            for page in (page_a, page_b):  # back to the top (A scrolled to edit Cue 22)
                page.evaluate_handle(SCROLLER).evaluate("el => { el.scrollTop = 0; }")
            edit(at(page_a, ids[0], "Time"), "10:30")
            expect(at(page_a, ids[0], "Time")).to_have_text("10:30")
            edit(at(page_b, ids[0], "Time"), "10:45")
            expect(at(page_b, ids[0], "Time")).to_have_text("10:45")
            for page in (page_a, page_b):
                expect(page.locator("table.grid .pending")).to_have_count(0)
            b.ok("POST", "/sync/peers", {"host": "127.0.0.1", "port": port})
            markers = []
            for page in (page_a, page_b):
                expect(page.locator("#sync-status")).to_have_text(CONNECTED, timeout=30_000)
                expect(page.locator("#conflict-badge")).to_have_text("1 conflict",
                                                                     timeout=20_000)
                marker = at(page, ids[0], "Time").get_by_role(
                    "button", name="Resolve conflict: Time of Cue 1")
                expect(marker).to_be_visible()
                markers.append(marker)
            shown = at(page_a, ids[0], "Time").inner_text().strip()
            assert shown in ("10:30", "10:45"), shown
            expect(at(page_b, ids[0], "Time")).to_have_text(shown)
            page_a.screenshot(path="/tmp/ui-two-conflict-a.png")
            page_b.screenshot(path="/tmp/ui-two-conflict-b.png")

            # B resolves it with Alex's value; A's marker goes, A shows the chosen value
            markers[1].click()
            dlg = page_b.get_by_role("dialog", name="Resolve conflict")
            expect(dlg).to_contain_text("Cues · Cue 1 · Time")
            dlg.get_by_role("radio", name="“10:30” Alex", exact=False).check()
            dlg.get_by_role("button", name="Resolve").click()
            expect(dlg).to_be_hidden()
            for page in (page_b, page_a):
                expect(page.locator("#conflict-badge")).to_have_text("No conflicts",
                                                                     timeout=20_000)
                expect(at(page, ids[0], "Time").locator(".marker-conflict")).to_have_count(0)
                expect(at(page, ids[0], "Time")).to_have_text("10:30")
            page_a.screenshot(path="/tmp/ui-two-resolved-a.png")
            assert a.ok("GET", "/conflicts/list")["conflicts"] == []
            assert not errors, errors


def test_concurrent_reorders_converge(tmp_path: Path) -> None:
    """J8 across two engines (concurrent reorders never conflict; every machine converges on
    the same order), the cue stack picked under **Stack**: while unlinked, A moves cue 1 below
    cue 2 and B moves cue 3 below cue 4; linked again, both browsers show the same merged order
    (both moves kept) and no conflict."""
    from playwright.sync_api import expect

    with serve(tmp_path / "a", tmp_path / "a.log", ["--name", "Alex", *LINK]) as url_a, \
            serve(tmp_path / "b", tmp_path / "b.log", ["--name", "Jordan", *LINK]) as url_b:
        a, b = Engine(url_a), Engine(url_b)
        a.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
        main = a.ok("POST", "/records/create", {"table": "lighting_cues.CueLists",
                                                "values": {"name": "Main"}})["id"]
        cue = {n: a.ok("POST", "/records/create", {"table": "lighting_cues.Cues", "values": {
            "number": n}})["id"] for n in ("4", "1", "3", "2")}  # not in stack order
        for n in ("1", "2", "3", "4"):
            a.ok("POST", "/edges/create", {"type": "lighting_cues.cue_stack", "src": cue[n],
                                           "dst": main})
        ws = a.ok("GET", "/workspace/current")["id"]
        port = a.ok("GET", "/sync/status")["port"]

        with chromium() as browser:
            errors: list[str] = []
            # each page picks the stack before the other engine's ops can reload its table
            pages, cues = [], []
            for url in (url_a, url_b):
                if url == url_b:
                    b.ok("POST", "/workspace/join", {"id": ws, "host": "127.0.0.1",
                                                     "port": port})
                page = open_page(browser, url, errors)
                col = page.locator('table.grid tbody tr td[data-label="Cue"]')
                pages.append(page)
                cues.append(col)
                page.get_by_role("navigation").get_by_role("button", name="Cues",
                                                           exact=True).click(timeout=30_000)
                expect(page.locator("#table-title")).to_have_text("Cues")
                expect(col).to_have_text(["4", "1", "3", "2"], timeout=20_000)  # all cues
                stack = page.get_by_role("combobox", name="Stack")
                with page.expect_response(lambda r: r.request.method == "POST" and r.url.split(
                        "?")[0].endswith("/views/settings")):  # the pick is saved
                    stack.select_option(label="Main")
                expect(col).to_have_text(["1", "2", "3", "4"])
            for page in pages:
                expect(page.locator("#sync-status")).to_have_text(CONNECTED, timeout=30_000)

            b.ok("DELETE", "/sync/peers", {"host": "127.0.0.1", "port": port})
            for page in pages:
                expect(page.locator("#sync-status")).to_have_text(OFFLINE, timeout=20_000)
            for page, col, row, moved in ((pages[0], cues[0], 0, ["2", "1", "3", "4"]),
                                          (pages[1], cues[1], 2, ["1", "2", "4", "3"])):
                col.nth(row).click()
                page.keyboard.press("Alt+ArrowDown")
                expect(col).to_have_text(moved)

            b.ok("POST", "/sync/peers", {"host": "127.0.0.1", "port": port})
            for page, col in zip(pages, cues, strict=True):
                expect(page.locator("#sync-status")).to_have_text(CONNECTED, timeout=30_000)
                expect(col).to_have_text(["2", "1", "4", "3"], timeout=20_000)
                expect(page.locator("#conflict-badge")).to_have_text("No conflicts")
            pages[1].screenshot(path="/tmp/ui-two-reorder-b.png")
            orders = [[e["src"] for e in eng.ok(
                "GET", f"/edges/list?entity={main}&type=lighting_cues.cue_stack&direction=in")[
                "edges"]] for eng in (a, b)]
            assert orders[0] == orders[1]
            assert not errors, errors
