"""Browser test of modules and field mappings (spec 05 J4; spec 04 §1, §4).

One engine: the Modules panel lists the built-in modules; adopting `contacts` and then
`crew_calls` adds their tables to the sidebar, and the second adoption opens the mapping
review, which lists the email / name / phone suggestions and the department pair greyed out as
incompatible (enum vs text). Same field moves a pair to the confirmed list, Keep separate to
the kept-separate list, and GET /field-mappings/list agrees. Installing a broken package shows
every problem inline. The contacts People view runs in a sandboxed iframe, reads through the
postMessage bridge, and shows a record created afterwards. Screenshots land in
/tmp/ui-modules-*.png.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.browser.test_access_ui import no_errors
from tests.browser.test_grid import chromium, open_page, serve
from tests.browser.test_sync_ui import Engine

BAD_MANIFEST = """\
manifest_version = 1

[module]
id = "gear"
version = "1.0.0"
name = "Gear"

[tables.Items.fields]
label = { type = "text", shraed_key = "name" }
weight = { type = "weightless" }
"""


def test_adopt_modules_review_mappings_and_view(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    bad = tmp_path / "gear"
    bad.mkdir()
    (bad / "module.toml").write_text(BAD_MANIFEST)

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            expect(page.locator("#conn")).to_have_text("Live")

            page.get_by_role("button", name="Modules").click()
            panel = page.get_by_role("dialog", name="Modules")
            modules = panel.get_by_role("list", name="Modules")
            contacts = modules.locator('li[data-module="contacts"]')
            crew = modules.locator('li[data-module="crew_calls"]')
            expect(contacts).to_contain_text("Contacts")
            expect(contacts).to_contain_text("contacts 1.0.0")
            expect(contacts).to_contain_text("People on the production")
            expect(contacts).to_contain_text("Not adopted")
            expect(modules.locator('li[data-module="lighting_cues"]')).to_contain_text(
                "Lighting Cues")

            # adopt contacts: its table appears in the sidebar (tables_changed); no other
            # module shares keys yet, so no mapping review opens
            contacts.get_by_role("button", name="Adopt Contacts").click()
            expect(contacts).to_contain_text("Adopted 1.0.0")
            expect(contacts.get_by_role("button")).to_have_count(0)
            sidebar = page.locator("#table-list")
            expect(sidebar.get_by_role("button", name="People")).to_be_visible()

            # adopt crew_calls: Crew and Calls appear, and the mapping review opens
            crew.get_by_role("button", name="Adopt Crew Calls").click()
            review = page.get_by_role("dialog", name="Field mappings")
            expect(review).to_be_visible()
            expect(sidebar.get_by_role("button", name="Crew")).to_be_visible()
            expect(sidebar.get_by_role("button", name="Calls")).to_be_visible()
            expect(crew).to_contain_text("Adopted 1.0.0")

            suggested = review.get_by_role("list", name="Suggested mappings")
            for text in ("People · Email ↔ Crew · Email", "People · Name ↔ Crew · Name",
                         "People · Phone ↔ Crew · Phone"):
                expect(suggested).to_contain_text(text)
            expect(suggested).to_contain_text("contacts.People.email ↔ crew_calls.Crew.email")
            odd = suggested.locator(".mapping-item.is-incompatible")
            expect(odd).to_have_count(1)
            expect(odd).to_contain_text("People · Department ↔ Crew · Department")
            expect(odd).to_contain_text("different types (enum vs text)")
            expect(odd.get_by_role("button")).to_have_count(0)
            page.screenshot(path="/tmp/ui-modules-mappings.png")
            # nothing maps itself
            lists = eng.ok("GET", "/field-mappings/list")
            assert lists["confirmed"] == [] and lists["rejected"] == []

            confirmed = review.get_by_role("list", name="Confirmed mappings")
            separate = review.get_by_role("list", name="Kept separate")
            review.get_by_role("button", name="Same field: People · Email ↔ Crew · Email").click()
            expect(confirmed).to_contain_text("People · Email ↔ Crew · Email")
            expect(suggested).not_to_contain_text("People · Email ↔ Crew · Email")
            review.get_by_role("button",
                               name="Keep separate: People · Phone ↔ Crew · Phone").click()
            expect(separate).to_contain_text("People · Phone ↔ Crew · Phone")
            expect(suggested).not_to_contain_text("People · Phone ↔ Crew · Phone")
            expect(suggested).to_contain_text("People · Name ↔ Crew · Name")
            lists = eng.ok("GET", "/field-mappings/list")
            assert [(p["key_a"], p["key_b"]) for p in lists["confirmed"]] == [
                ("contacts.People.email", "crew_calls.Crew.email")]
            assert [(p["key_a"], p["key_b"]) for p in lists["rejected"]] == [
                ("contacts.People.phone", "crew_calls.Crew.phone")]
            review.get_by_role("button", name="Done").click()
            expect(review).to_be_hidden()

            # installing a broken package lists every problem inline
            panel.get_by_label("Install from a folder or .zip").fill(str(bad))
            panel.get_by_role("button", name="Install").click()
            problem = panel.get_by_role("alert")
            expect(problem).to_contain_text("This is not a valid module package")
            problems = problem.get_by_role("list", name="Problems in the package")
            expect(problems.get_by_role("listitem")).to_have_count(
                len(_install_errors(eng, bad)))
            expect(problems).to_contain_text("tables.Items.fields.label.shraed_key")
            page.screenshot(path="/tmp/ui-modules-install-error.png")
            panel.get_by_label("Install from a folder or .zip").fill("/no/such/module")
            panel.get_by_role("button", name="Install").click()
            expect(problems).to_contain_text("/no/such/module")
            expect(modules.locator('li[data-module="gear"]')).to_have_count(0)
            panel.get_by_role("button", name="Close").last.click()
            expect(panel).to_be_hidden()

            # the contacts view: a tab next to the grid, in a sandboxed iframe fed by the bridge
            sidebar.get_by_role("button", name="People").click()
            expect(page.locator("#table-title")).to_have_text("People")
            tabs = page.get_by_role("tablist", name="Show the table as")
            expect(tabs.get_by_role("tab", name="Grid")).to_have_attribute("aria-selected", "true")
            tabs.get_by_role("tab", name="People").click()
            frame_el = page.locator("iframe.module-view-frame")
            expect(frame_el).to_have_attribute("sandbox", "allow-scripts")
            expect(page.locator("#grid-host")).to_be_hidden()
            view = page.frame_locator("iframe.module-view-frame")
            expect(view.locator("table.people-list thead")).to_contain_text("Name")
            expect(view.locator("table.people-list tbody tr")).to_have_count(0)
            eng.ok("POST", "/records/create", {"table": "contacts.People", "values": {
                "full_name": "Jane Doe", "email": "jane@example.org", "role": "SM"}})
            rows = view.locator("table.people-list tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("Jane Doe")
            expect(rows.first).to_contain_text("jane@example.org")
            page.screenshot(path="/tmp/ui-modules-view.png")

            # back to the grid: the record is there too
            tabs.get_by_role("tab", name="Grid").click()
            expect(page.locator("#grid-host")).to_be_visible()
            expect(page.locator("#module-view-host")).to_be_hidden()
            expect(page.locator("table.grid tbody tr")).to_have_count(1)
            expect(page.locator("#record-count")).to_have_text("1 record")
            # a table without a view offers no tabs
            sidebar.get_by_role("button", name="Crew").click()
            expect(page.locator("#table-title")).to_have_text("Crew")
            expect(tabs).to_be_hidden()
            no_errors(errors)


def _install_errors(eng: Engine, path: Path) -> list[dict[str, str]]:
    """The engine's own list of problems with the package (400 invalid_module)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", eng.port, timeout=20)
    try:
        conn.request("POST", "/modules/install", json.dumps({"path": str(path)}).encode(),
                     {"Authorization": f"Bearer {eng.token}",
                      "Content-Type": "application/json"})
        r = conn.getresponse()
        data = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 400 and data["error"]["code"] == "invalid_module", data
    errors: list[dict[str, str]] = data["error"]["details"]["errors"]
    assert len(errors) >= 2 and any(re.search(r"shraed_key", e["path"]) for e in errors)
    return errors
