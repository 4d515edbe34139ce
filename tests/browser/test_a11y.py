"""Accessibility of the browser workspace (spec 05 §7; issue 9 "Accessibility").

- axe-core (vendored in tests/vendor/axe-core, see its README) runs on every main screen against
  a real engine: the grid of a table with records and conflict markers, the New table dialog,
  the Conflicts panel and the resolver, the staging banner and Review, the Modules, Rules and
  Scripts panels and a script's run dialog, the Sync and peers panel, and a file's preview. No
  violation of impact "serious" or "critical" (WCAG 2.0/2.1 A and AA, and axe's best practices)
  is allowed; each one found is listed with its rule id, impact, elements and help text. Every
  violation (of any impact) is also written to /tmp/ui-a11y-violations.json.
- The same on the screens issue 9 added: the record inspector, the Filters / Sort / Fields
  popovers, Invite… and Switch…, and the welcome screen.
- Keyboard only: from page load, with Tab, Enter, arrows and typing only, the user creates a
  table, adds a record, types a value and undoes it, seeing each step on screen.
Screenshots land in /tmp/ui-a11y-*.png.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any

from tests.browser.test_conflicts_overlays import _prepare
from tests.browser.test_files_ui import make_png
from tests.browser.test_grid import cell, chromium, open_page, serve
from tests.browser.test_sync_ui import Engine

AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
BLOCKING = ("serious", "critical")
RUN_AXE = """async (tags) => {
  const r = await axe.run(document, {runOnly: tags, resultTypes: ['violations']});
  return r.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
    targets: v.nodes.map(n => n.target.join(' ')),
    html: v.nodes.slice(0, 3).map(n => n.html.slice(0, 200)),
    summary: v.nodes.slice(0, 1).map(n => n.failureSummary)}));
}"""


def new_page(browser: Any, url: str, errors: list[str]) -> Any:
    # bypass_csp: axe is injected as an inline script, which a strict CSP would refuse
    return open_page(browser, url, errors, bypass_csp=True)


def axe(page: Any, screen: str, found: list[dict[str, Any]]) -> None:
    """Run axe-core on the whole document as it is now; add its violations to `found`."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate(RUN_AXE, TAGS)
    page.screenshot(path=f"/tmp/ui-a11y-{re.sub(r'[^a-z0-9]+', '-', screen.lower())}.png")
    found.extend({"screen": screen, **v} for v in result)


def report(found: list[dict[str, Any]]) -> str:
    return "\n".join(f"[{v['screen']}] {v['id']} ({v['impact']}): {v['help']} — "
                     f"{', '.join(v['targets'][:6])}" for v in found)


def upload(eng: Engine, name: str, data: bytes, mime: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", eng.port, timeout=20)
    try:
        conn.request("POST", f"/blobs/upload?name={name}", data,
                     {"Authorization": f"Bearer {eng.token}", "Content-Type": mime})
        r = conn.getresponse()
        out = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 200, out
    return str(out["hash"])


def test_main_screens_have_no_serious_violations(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Cues (with two field conflicts and a delete conflict), Plots (a picture), Crew Calls
    _prepare(tmp_path / "data", tmp_path / "jordan", conflict=True)
    png = make_png(tmp_path / "plot.png")
    found: list[dict[str, Any]] = []
    errors: list[str] = []
    with serve(tmp_path / "data", tmp_path / "engine.log") as url, chromium() as browser:
        eng = Engine(url)
        plots = eng.ok("POST", "/tables/create", {"label": "Plots", "fields": [
            {"label": "Name"}, {"label": "Plot", "type": "blob_ref"}]})["table"]
        (plot_table,) = [t for t in eng.ok("GET", "/tables/list")["tables"] if t["id"] == plots]
        fields = {f["label"]: f["name"] for f in plot_table["fields"]}
        eng.ok("POST", "/records/create", {"table": plots, "values": {
            fields["Name"]: "Act 1", fields["Plot"]: upload(eng, "plot.png", png, "image/png")}})
        eng.ok("POST", "/modules/adopt", {"id": "crew_calls"})

        page = new_page(browser, url, errors)
        expect(page.locator("#conn")).to_have_text("Live")
        sidebar = page.locator("#table-list")
        sidebar.get_by_role("button", name="Cues", exact=True).click()
        expect(page.locator("#table-title")).to_have_text("Cues")
        time_cell = cell(page, 0, "Time")
        marker = time_cell.get_by_role("button", name="Resolve conflict: Time of Cue 42")
        expect(marker).to_be_visible()
        axe(page, "grid", found)

        page.locator("#new-table-btn").click()
        dlg = page.get_by_role("dialog", name="New table")
        dlg.get_by_role("button", name="Add field").click()
        expect(dlg.get_by_label("Field 2 name")).to_be_visible()
        axe(page, "New table dialog", found)
        page.keyboard.press("Escape")
        expect(dlg).to_be_hidden()

        page.locator("#conflict-badge").click()
        panel = page.get_by_role("dialog", name="Conflicts")
        expect(panel.locator(".conflict-item")).to_have_count(3)
        axe(page, "Conflicts panel", found)
        panel.get_by_role("button", name="Close").last.click()
        expect(panel).to_be_hidden()
        marker.click()
        resolver = page.get_by_role("dialog", name="Resolve conflict")
        expect(resolver.get_by_role("radio", name="Clear the field")).to_be_visible()
        axe(page, "conflict resolver", found)
        page.keyboard.press("Escape")
        expect(resolver).to_be_hidden()

        # staging: the banner with a staged edit, then Review
        page.get_by_role("button", name="Start staging").click()
        ask = page.get_by_role("dialog", name="Start staging")
        ask.get_by_label("Name").fill("Act 2 rework")
        ask.get_by_role("button", name="Start staging").click()
        name_cell = cell(page, 0, "Name")
        name_cell.dblclick()
        editor = name_cell.get_by_role("textbox")
        editor.fill("Cue 42 (Act 2)")
        editor.press("Enter")
        banner = page.get_by_role("region", name="Staging")
        expect(banner).to_contain_text("Staging: Act 2 rework — 1 change")
        axe(page, "staging banner", found)
        banner.get_by_role("button", name="Review").click()
        review = page.get_by_role("dialog", name="Review: Act 2 rework")
        expect(review.locator("tbody tr")).to_have_count(1)
        axe(page, "staging Review", found)
        review.get_by_role("button", name="Done").click()
        banner.get_by_role("button", name="Discard").click()
        page.get_by_role("dialog", name="Discard staged changes?").get_by_role(
            "button", name="Discard").click()
        expect(banner).to_be_hidden()

        page.locator("#modules-btn").click()
        modules = page.get_by_role("dialog", name="Modules")
        expect(modules.locator('li[data-module="crew_calls"]')).to_contain_text("Adopted")
        axe(page, "Modules panel", found)
        modules.get_by_role("button", name="Close").last.click()
        expect(modules).to_be_hidden()

        page.locator("#rules-btn").click()
        rules = page.get_by_role("dialog", name="Rules")
        expect(rules.locator("li[data-rule]")).not_to_have_count(0)
        axe(page, "Rules panel", found)
        rules.get_by_role("button", name="Close").last.click()
        expect(rules).to_be_hidden()

        page.locator("#scripts-btn").click()
        scripts = page.get_by_role("dialog", name="Scripts")
        gen = scripts.locator('li[data-script="crew_calls.generate_calls"]')
        expect(gen).to_contain_text("Generate calls")
        axe(page, "Scripts panel", found)
        gen.get_by_role("button", name="Run Generate calls").click()
        run = page.get_by_role("dialog", name="Generate calls")
        expect(run.get_by_label("Day")).to_be_focused()
        axe(page, "script run dialog", found)
        run.get_by_role("button", name="Close").last.click()
        expect(run).to_be_hidden()
        scripts.get_by_role("button", name="Close").last.click()
        expect(scripts).to_be_hidden()

        page.locator("#sync-status").click()
        sync = page.get_by_role("dialog", name="Sync and peers")
        expect(sync.get_by_label("Add peer by address")).to_be_visible()
        axe(page, "Sync and peers panel", found)
        sync.get_by_role("button", name="Close").last.click()
        expect(sync).to_be_hidden()

        sidebar.get_by_role("button", name="Plots", exact=True).click()
        expect(page.locator("#table-title")).to_have_text("Plots")
        cell(page, 0, "Plot").get_by_role("button", name=re.compile(
            "^Open Plot of Act 1: plot.png")).click()
        preview = page.get_by_role("dialog", name="plot.png")
        picture = preview.get_by_role("img", name="plot.png")
        expect(picture).to_be_visible()
        assert picture.evaluate("img => img.decode().then(() => img.naturalWidth)") == 320
        axe(page, "file preview", found)

    Path("/tmp/ui-a11y-violations.json").write_text(json.dumps(found, indent=2))
    blocking = [v for v in found if v["impact"] in BLOCKING]
    assert not blocking, f"{len(blocking)} serious/critical axe violations:\n{report(blocking)}"
    assert not [e for e in errors if not re.search(r"Failed to load resource.* 409", e)], errors


def _check_popup(page: Any, button: str, popup: Any, what: str, found: list[dict[str, Any]],
                 says: str | None = None) -> None:
    """Open a dialog or menu with its button, run axe on it, close it with Esc."""
    from playwright.sync_api import expect

    page.get_by_role("button", name=button, exact=True).click()
    expect(popup).to_be_visible()
    if says:
        expect(popup).to_contain_text(says)
    axe(page, what, found)
    page.keyboard.press("Escape")
    expect(popup).to_be_hidden()


def test_issue9_screens_have_no_serious_violations(tmp_path: Path) -> None:
    """The screens added by issue 9, same rule: the record inspector (of a record with a
    conflict), the Filters, Sort and Fields popovers, Invite… and Switch…, the CSV import
    dialog and export menu, the Print dialog, and the welcome screen of a first start."""
    from playwright.sync_api import expect

    _prepare(tmp_path / "data", tmp_path / "jordan", conflict=True)
    found: list[dict[str, Any]] = []
    errors: list[str] = []
    with serve(tmp_path / "data", tmp_path / "engine.log") as url, chromium() as browser:
        page = new_page(browser, url, errors)
        expect(page.locator("#conn")).to_have_text("Live")
        expect(page.locator("#table-title")).to_have_text("Cues")

        page.get_by_role("button", name="Open record Cue 42").click()
        panel = page.get_by_role("complementary", name="Cue 42")
        expect(panel.get_by_label("Time", exact=True)).to_have_value("10:45")
        axe(page, "record inspector", found)
        page.keyboard.press("Escape")
        expect(page.locator("#inspector-host")).to_be_hidden()

        for button, dialog in (("Filter", "Filters"), ("Sort", "Sort"), ("Fields", "Fields")):
            _check_popup(page, button, page.get_by_role("dialog", name=dialog),
                         f"{dialog} popover", found)
        _check_popup(page, "Invite…", page.get_by_role("dialog", name=re.compile("^Invite")),
                     "Invite dialog", found, says="everyone who joins can edit")
        _check_popup(page, "Switch…", page.get_by_role("dialog", name="Switch workspace"),
                     "Switch workspace dialog", found)
        _check_popup(page, "Import CSV…",
                     page.get_by_role("dialog", name="Import a CSV file into Cues"),
                     "CSV import dialog", found)
        _check_popup(page, "Export CSV ▾", page.get_by_role("menu", name="Export CSV"),
                     "CSV export menu", found)

        Engine(url).ok("POST", "/modules/adopt", {"id": "crew_calls"})
        page.locator("#table-list").get_by_role("button", name="Calls", exact=True).click()
        expect(page.locator("#table-title")).to_have_text("Calls")
        page.get_by_role("button", name="Print…").click()
        printing = page.get_by_role("dialog", name="Print call sheet")
        expect(printing.get_by_role("region", name="Print preview")).to_contain_text("Call sheet")
        axe(page, "Print dialog", found)
        page.keyboard.press("Escape")
        expect(printing).to_be_hidden()

    with serve(tmp_path / "fresh", tmp_path / "fresh.log") as url, chromium() as browser:
        page = new_page(browser, url, errors)
        welcome = page.get_by_role("dialog", name="Welcome to openprod")
        expect(welcome.get_by_label("What should teammates see as your name?")).to_be_visible()
        axe(page, "welcome screen", found)

    Path("/tmp/ui-a11y-violations-issue9.json").write_text(json.dumps(found, indent=2))
    blocking = [v for v in found if v["impact"] in BLOCKING]
    assert not blocking, f"{len(blocking)} serious/critical axe violations:\n{report(blocking)}"
    assert not errors, errors


def test_keyboard_only_table_record_value_undo(tmp_path: Path) -> None:
    """From page load, only keys: Tab to New table, name it, Enter; a new record; a value;
    Ctrl+Z. What the user sees is checked after every step."""
    from playwright.sync_api import expect

    errors: list[str] = []
    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url, \
            chromium() as browser:
        page = new_page(browser, url, errors)
        expect(page.locator("#conn")).to_have_text("Live")
        expect(page.get_by_role("heading", name="No tables yet")).to_be_visible()
        kb = page.keyboard

        # Tab from the top of the page until the focus is on a "New table" button
        for _ in range(40):
            kb.press("Tab")
            label = page.evaluate("document.activeElement?.textContent?.trim() ?? ''")
            if label == "New table":
                break
        else:
            raise AssertionError("Tab never reached a New table button")
        kb.press("Enter")
        dlg = page.get_by_role("dialog", name="New table")
        expect(dlg).to_be_visible()
        expect(dlg.get_by_label("Table name")).to_be_focused()
        kb.type("Props")
        kb.press("Enter")  # Enter in the name box creates the table with its Name field
        expect(dlg).to_be_hidden()
        expect(page.locator("#table-title")).to_have_text("Props")
        grid = page.get_by_role("grid", name="Props")
        expect(grid.get_by_role("columnheader", name=re.compile("Name"))).to_be_visible()

        # a new record (Ctrl+Enter) focuses its first cell; type a value, Enter commits
        kb.press("Control+Enter")
        expect(page.locator("table.grid tbody tr")).to_have_count(1)
        name = cell(page, 0, "Name")
        expect(name).to_be_focused()
        kb.type("Sword")
        kb.press("Enter")
        expect(name).to_have_text("Sword")
        expect(page.locator("#record-count")).to_have_text("1 record")
        expect(page.locator("table.grid .pending")).to_have_count(0)
        expect(name).to_be_focused()  # the last row: Enter commits and stays
        kb.press("ArrowUp")  # arrows move between the header and the cells
        expect(grid.get_by_role("columnheader", name=re.compile("Name"))).to_be_focused()
        kb.press("ArrowDown")
        expect(name).to_be_focused()
        page.screenshot(path="/tmp/ui-a11y-keyboard.png")

        # undo (Ctrl+Z) takes the value back; the record stays
        kb.press("Control+z")
        expect(name).to_have_text("")
        expect(page.locator("table.grid tbody tr")).to_have_count(1)
        expect(page.get_by_role("button", name="Redo")).to_be_enabled()
        assert not errors, errors
