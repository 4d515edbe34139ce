"""Browser test of workspace scripts (spec 05 J14: "module scripts (read-only) and workspace
scripts"): **New script…** in the Scripts panel writes one (name, a value it asks for, Lua
source), it is listed as a workspace script with **Edit…** and **Delete**, runs like a module
script (its changes staged, then committed into the grid), a bad source line is reported in
plain words, and Delete removes it after a confirmation. Module scripts say *read-only*.
"""

from __future__ import annotations

from pathlib import Path

from tests.browser.test_access_ui import no_errors
from tests.browser.test_grid import chromium, open_page, serve
from tests.browser.test_sync_ui import Engine


def test_write_run_edit_and_delete_a_workspace_script(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        made = eng.ok("POST", "/tables/create", {"label": "Cast", "fields": [{"label": "Name"}]})
        tid = made["table"]
        (t,) = [x for x in eng.ok("GET", f"/tables/list?after={made['seq']}")["tables"]
                if x["id"] == tid]
        name_field = t["fields"][0]["name"]
        eng.ok("POST", "/modules/adopt", {"id": "contacts"})
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            expect(page.locator("#conn")).to_have_text("Live")
            page.locator("#scripts-btn").click()
            panel = page.get_by_role("dialog", name="Scripts")
            scripts = panel.get_by_role("list", name="Scripts")
            expect(scripts.locator('li[data-script="contacts.normalize_phones"]')).to_contain_text(
                "(read-only)")

            panel.get_by_role("button", name="New script…").click()
            editor = page.get_by_role("dialog", name="New workspace script")
            expect(editor.get_by_label("Name")).to_be_focused()
            editor.get_by_label("Name").fill("Add understudies")
            editor.get_by_role("button", name="Add a value to ask for").click()
            editor.get_by_label("Value 1 name").fill("count")
            editor.get_by_label("Value 1 type").select_option("integer")
            expect(editor).to_contain_text(tid)  # the reference lists this workspace's tables
            editor.get_by_label("Lua source").fill(
                f'for i = 1, args.count do\n'
                f'  core.create_entity("{tid}", {{ {name_field} = "Understudy " .. i }})\n'
                f'end\n')
            editor.get_by_role("button", name="Save script").click()
            expect(editor).to_be_hidden()
            item = scripts.locator("li.script-item").filter(has_text="Add understudies")
            expect(item).to_contain_text("Workspace script · anyone in this workspace can "
                                         "change it")
            expect(item).to_contain_text("Asks for: Count")

            item.get_by_role("button", name="Run Add understudies").click()
            run = page.get_by_role("dialog", name="Add understudies")
            run.get_by_label("Count").fill("2")
            run.get_by_label("Count").press("Enter")
            expect(run.locator(".script-status")).to_contain_text(
                "changes staged. Nothing applies until you commit.")
            assert eng.ok("GET", f"/records/list?table={tid}")["records"] == []
            run.get_by_role("button", name="Commit").click()
            expect(run.locator(".script-status")).to_contain_text("Committed")
            names = sorted(r["values"][name_field] for r in eng.ok(
                "GET", f"/records/list?table={tid}")["records"])
            assert names == ["Understudy 1", "Understudy 2"]
            run.get_by_role("button", name="Close").last.click()

            # editing it: a broken line is reported with its number
            item.get_by_role("button", name="Edit Add understudies").click()
            editor = page.get_by_role("dialog", name="Edit “Add understudies”")
            expect(editor.get_by_label("Value 1 name")).to_have_value("count")
            editor.get_by_label("Lua source").fill('print("ok")\nerror("no stage", 0)\n')
            editor.get_by_role("button", name="Save script").click()
            expect(editor).to_be_hidden()
            item.get_by_role("button", name="Run Add understudies").click()
            run = page.get_by_role("dialog", name="Add understudies")
            run.get_by_label("Count").fill("1")
            run.get_by_label("Count").press("Enter")
            expect(run).to_contain_text("line 2")
            expect(run).to_contain_text("no stage")
            run.get_by_role("button", name="Close").last.click()

            item.get_by_role("button", name="Delete Add understudies").click()
            confirm = page.get_by_role("dialog", name="Delete script")
            confirm.get_by_role("button", name="Delete").click()
            expect(item).to_have_count(0)
            assert all(s["source_kind"] == "module"
                       for s in eng.ok("GET", "/scripts/list")["scripts"])
            no_errors(errors)


def test_review_in_staging_then_return_to_your_session(tmp_path: Path) -> None:
    """J14: *Open in staging* stashes the user's own session (after asking); once the script's
    changes are committed, a notice offers *Return to your staging session*."""
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        made = eng.ok("POST", "/tables/create", {"label": "Cast", "fields": [{"label": "Name"}]})
        tid = made["table"]
        (t,) = [x for x in eng.ok("GET", f"/tables/list?after={made['seq']}")["tables"]
                if x["id"] == tid]
        field = t["fields"][0]["name"]
        sid = eng.ok("POST", "/scripts/put", {
            "label": "Add a swing",
            "source": f'core.create_entity("{tid}", {{ {field} = "Swing" }})\n'})["id"]
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            expect(page.locator("#conn")).to_have_text("Live")
            page.get_by_role("button", name="Start staging").click()
            ask = page.get_by_role("dialog", name="Start staging")
            ask.get_by_label("Name").fill("Act 2 rework")
            ask.get_by_label("Name").press("Enter")
            expect(page.locator("#staging-text")).to_contain_text("Staging: Act 2 rework")

            page.locator("#scripts-btn").click()
            panel = page.get_by_role("dialog", name="Scripts")
            panel.locator(f'li[data-script="{sid}"]').get_by_role(
                "button", name="Run Add a swing").click()
            run = page.get_by_role("dialog", name="Add a swing")
            run.get_by_role("button", name="Run", exact=True).click()
            expect(run.locator(".script-status")).to_contain_text("changes staged")
            run.get_by_role("button", name="Open in staging").click()
            page.get_by_role("dialog", name="Switch overlays?").get_by_role(
                "button", name="Stash and activate").click()
            expect(page.locator("#staging-text")).to_contain_text("Staging: Add a swing")
            page.locator("#staging-commit").click()
            offer = page.locator("#toasts").get_by_role(
                "button", name="Return to your staging session")
            expect(offer).to_be_visible()
            offer.click()
            expect(page.locator("#staging-text")).to_contain_text("Staging: Act 2 rework")
            assert [r["values"][field] for r in eng.ok(
                "GET", f"/records/list?table={tid}&canonical=1")["records"]] == ["Swing"]
            no_errors(errors)
