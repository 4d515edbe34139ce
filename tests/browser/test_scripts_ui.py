"""Browser test of the Scripts panel and run dialog (spec 05 J14; spec 04 §7).

One engine: Crew Calls is adopted in the Modules panel and three crew members are added
through the API. **Scripts** (sidebar) lists *Generate calls* (run by hand, from Crew Calls) and
the on-change *Flag calls changed after publishing* (switched off). *Run…* opens a form for its
typed arguments (a date picker, a date-and-time picker, a text box); the run shows its log and
the staged changes (two new calls and their links); Commit applies them and the Calls grid shows
the two calls. A package installed through the API brings scripts that fail (shown as *The
script stopped at line 2: …*), ask a capability (*Allow once / Always / Never*: Never refuses it
in plain words, *Ask me again* then Allow once runs it and its notification appears) and wait
(Cancel stops it). The on-change switch refuses in plain words to close a loop with a rule, goes
on once the rule is gone, and a published call moved through the API then yields a run whose
notification opens its review. Screenshots land in /tmp/ui-scripts-*.png.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from tests.browser.test_access_ui import no_errors
from tests.browser.test_grid import cell, chromium, open_page, serve
from tests.browser.test_sync_ui import Engine

DESK = """\
manifest_version = 1

[module]
id = "desk"
version = "1.0.0"
name = "Desk tools"
capabilities = ["ui.notify"]

[scripts.hello]
file = "scripts/hello.lua"
label = "Say hello"
capabilities = ["ui.notify"]

[scripts.broken]
file = "scripts/broken.lua"
label = "Check the rig"
args = { rig = "text" }

[scripts.wait]
file = "scripts/wait.lua"
label = "Wait for the desk"
"""
HELLO = 'print("hello")\nui.notify("The desk is ready")\n'
BROKEN = 'print("checking " .. args.rig)\nerror(("no rig is called %s"):format(args.rig), 0)\n'
WAIT = 'print("waiting for the desk")\ncore.await(core.sleep(60000))\n'

FLAG = "crew_calls.flag_changed_calls"
FLAG_LABEL = "Flag calls changed after publishing"


def test_scripts_panel_runs_and_reviews(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    desk = tmp_path / "desk"
    (desk / "scripts").mkdir(parents=True)
    (desk / "module.toml").write_text(DESK)
    for name, src in (("hello", HELLO), ("broken", BROKEN), ("wait", WAIT)):
        (desk / "scripts" / f"{name}.lua").write_text(src)

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            failed: list[str] = []  # URLs the engine refused (the console names no URL)
            page.on("response", lambda r: failed.append(f"{r.status} {urlsplit(r.url).path}")
                    if r.status >= 400 else None)
            expect(page.locator("#conn")).to_have_text("Live")

            # adopt Crew Calls in the Modules panel; crew arrive through the API
            page.get_by_role("button", name="Modules").click()
            modules = page.get_by_role("dialog", name="Modules")
            crew = modules.locator('li[data-module="crew_calls"]')
            crew.get_by_role("button", name="Adopt Crew Calls").click()
            expect(crew).to_contain_text("Adopted 1.0.0")
            modules.get_by_role("button", name="Close").last.click()
            expect(modules).to_be_hidden()
            for name, extra in (("Jane Doe", {"role": "LX"}), ("Kim Lee", {}),
                                ("Sam Roe", {"active": False})):
                eng.ok("POST", "/records/create", {"table": "crew_calls.Crew",
                                                   "values": {"name": name, **extra}})
            eng.ok("POST", "/modules/install", {"path": str(desk)})

            # the panel lists the module's scripts
            page.locator("#scripts-btn").click()
            panel = page.get_by_role("dialog", name="Scripts")
            scripts = panel.get_by_role("list", name="Scripts")
            gen = scripts.locator('li[data-script="crew_calls.generate_calls"]')
            expect(gen).to_contain_text("Generate calls")
            expect(gen).to_contain_text("From Crew Calls")
            expect(gen).to_contain_text("Asks for: Day, Call time, Location")
            flag = scripts.locator(f'li[data-script="{FLAG}"]')
            expect(flag).to_contain_text("On change")
            expect(flag).to_contain_text("Runs after you commit a change to Calls · Call time "
                                         "or Location, when Published is Yes.")
            switch = flag.get_by_role("switch", name=FLAG_LABEL)
            expect(switch).not_to_be_checked()
            expect(scripts.locator('li[data-script="desk.hello"]')).to_contain_text(
                "Asks to show you notifications — asks you first")
            page.screenshot(path="/tmp/ui-scripts-panel.png")

            # Run… opens the form of its typed arguments
            gen.get_by_role("button", name="Run Generate calls").click()
            run = page.get_by_role("dialog", name="Generate calls")
            expect(run.get_by_label("Day")).to_have_attribute("type", "date")
            expect(run.get_by_label("Call time")).to_have_attribute("type", "datetime-local")
            expect(run.get_by_label("Day")).to_be_focused()
            run.get_by_role("button", name="Run", exact=True).click()
            expect(run.get_by_role("alert").filter(has_text="Fill in Day.")).to_be_visible()
            run.get_by_label("Day").fill("2025-03-01")
            run.get_by_label("Call time").fill("2025-03-01T09:00")
            run.get_by_label("Location").fill("Stage")
            run.get_by_label("Location").press("Enter")
            status = run.locator(".script-status")
            expect(status).to_contain_text("changes staged. Nothing applies until you commit.")
            output = run.get_by_role("list", name="Output lines")
            expect(output).to_contain_text("2 calls for 2025-03-01 at Stage; 0 already called.")
            changes = run.locator(".script-change-table tbody tr")
            expect(run.locator(".script-changes-summary")).to_have_text(
                "2 new records · 2 links. Nothing applies until you commit.")
            jane = changes.filter(has_text="Jane Doe")
            expect(jane).to_contain_text("New")
            expect(jane).to_contain_text("Location: “Stage”")
            expect(jane).to_contain_text("Day: “Mar 1, 2025”")
            expect(changes.filter(has_text="Kim Lee")).to_have_count(1)
            expect(changes.filter(has_text="Sam Roe")).to_have_count(0)
            expect(changes.filter(has_text="Links")).to_contain_text("2 new links")
            assert eng.ok("GET", "/records/list?table=crew_calls.Calls")["records"] == []
            n = eng.ok("GET", "/scripts/runs")["runs"][-1]["op_count"]
            expect(page.locator("#scripts-count")).to_have_text("1")
            page.screenshot(path="/tmp/ui-scripts-run.png")
            run.get_by_role("button", name="Commit").click()
            expect(status).to_have_text(f"Committed: {n} changes applied.")
            expect(page.locator("#toasts")).to_contain_text(f"Generate calls: {n} changes "
                                                            "committed")
            expect(page.locator("#scripts-count")).to_be_hidden()
            run.get_by_role("button", name="Close").last.click()
            expect(run).to_be_hidden()
            runs = panel.get_by_role("list", name="Recent runs")
            expect(runs.locator(".script-run").first).to_contain_text(
                f"Committed: {n} changes applied.")
            panel.get_by_role("button", name="Close").last.click()
            expect(panel).to_be_hidden()

            # the calls are in the grid
            page.locator("#table-list").get_by_role("button", name="Calls").click()
            expect(page.locator("#table-title")).to_have_text("Calls")
            expect(page.locator("table.grid tbody tr")).to_have_count(2)
            expect(cell(page, 0, "Call")).to_have_text("Jane Doe")
            expect(cell(page, 1, "Call")).to_have_text("Kim Lee")
            expect(cell(page, 0, "Location")).to_have_text("Stage")

            # a failing run, in plain words, with its output
            page.locator("#scripts-btn").click()
            scripts.locator('li[data-script="desk.broken"]').get_by_role(
                "button", name="Run Check the rig").click()
            run = page.get_by_role("dialog", name="Check the rig")
            run.get_by_label("Rig").fill("Main rig")
            run.get_by_role("button", name="Run", exact=True).click()
            expect(run.locator(".script-failure")).to_have_text(
                "The script stopped at line 2: no rig is called Main rig. Nothing was changed.")
            expect(run.get_by_role("list", name="Output lines")).to_have_text("checking Main rig")
            page.screenshot(path="/tmp/ui-scripts-failed.png")
            # Run again… keeps what was typed
            run.get_by_role("button", name="Run again…").click()
            run = page.get_by_role("dialog", name="Check the rig")
            expect(run.get_by_label("Rig")).to_have_value("Main rig")
            run.get_by_role("button", name="Cancel").click()
            expect(run).to_be_hidden()

            # a capability: Never refuses it in plain words; Ask me again, then Allow once
            scripts.locator('li[data-script="desk.hello"]').get_by_role(
                "button", name="Run Say hello").click()
            run = page.get_by_role("dialog", name="Say hello", exact=True)
            run.get_by_role("button", name="Run", exact=True).click()
            ask = page.get_by_role("dialog", name="Say hello asks for permission")
            expect(ask.get_by_role("group")).to_have_accessible_name(
                "Say hello wants to show you notifications")
            ask.get_by_role("radio", name="Never").check()
            ask.get_by_role("button", name="Continue").click()
            expect(ask).to_be_hidden()
            refused = run.get_by_role("alert").filter(has_text="Not run")
            expect(refused).to_contain_text("Not run: Say hello needs to show you "
                                            "notifications, and you chose Never for that.")
            expect(scripts.locator('li[data-script="desk.hello"]')).to_contain_text(
                "never allowed")
            refused.get_by_role("button", name="Ask me again").click()
            expect(refused).to_be_hidden()
            expect(scripts.locator('li[data-script="desk.hello"]')).to_contain_text(
                "asks you first")
            run.get_by_role("button", name="Run", exact=True).click()
            ask.get_by_role("radio", name="Allow once").check()
            ask.get_by_role("button", name="Continue").click()
            expect(run.locator(".script-status")).to_have_text("Done: nothing to change.")
            expect(page.locator("#toasts")).to_contain_text("Say hello: The desk is ready")
            run.get_by_role("button", name="Close").last.click()
            expect(scripts.locator('li[data-script="desk.hello"]')).to_contain_text(
                "asks you first")  # once is not remembered

            # Cancel while it runs
            scripts.locator('li[data-script="desk.wait"]').get_by_role(
                "button", name="Run Wait for the desk").click()
            run = page.get_by_role("dialog", name="Wait for the desk")
            run.get_by_role("button", name="Run", exact=True).click()
            expect(run.get_by_role("list", name="Output lines")).to_have_text(
                "waiting for the desk")
            expect(run.locator(".script-status")).to_contain_text("Running")
            run.get_by_role("button", name="Cancel run").click()
            expect(run.locator(".script-failure")).to_have_text(
                "Cancelled. Nothing was changed.")
            run.get_by_role("button", name="Close").last.click()

            # the on-change switch: a loop with a rule is refused in plain words
            eng.ok("POST", "/field-mappings/confirm", {"key_a": "crew_calls.Calls.location",
                                                       "key_b": "crew_calls.Crew.department"})
            loop = eng.ok("POST", "/rules/put", {
                "label": "Changed calls go TBC", "source": "crew_calls.Calls",
                "when": {"field": "changed_after_publish", "op": "eq", "value": True},
                "target": "crew_calls.Crew", "enabled": True,
                "set": [{"field": "department", "value": "TBC", "mode": "always"}]})["id"]
            switch.click()
            problem = flag.get_by_role("alert")
            expect(problem).to_have_text(
                "Turning this on would make it trigger itself through rules or other scripts: "
                f"{FLAG_LABEL} → Changed calls go TBC → {FLAG_LABEL}. Switch one of them off "
                "first.")
            expect(switch).not_to_be_checked()
            eng.ok("POST", "/rules/delete", {"id": loop})
            switch.click()
            expect(switch).to_be_checked()
            expect(problem).to_have_count(0)
            expect(flag).to_contain_text("On for you.")
            panel.get_by_role("button", name="Close").last.click()
            expect(panel).to_be_hidden()

            # a published call moved elsewhere: the run's notice opens its review
            calls = {r["values"]["label"]: r["id"] for r in eng.ok(
                "GET", "/records/list?table=crew_calls.Calls")["records"]}
            eng.ok("POST", "/records/update", {"id": calls["Jane Doe"],
                                               "values": {"published": True}})
            eng.ok("POST", "/records/update", {"id": calls["Jane Doe"],
                                               "values": {"location": "Studio B"}})
            notice = page.locator("#toasts .toast").filter(
                has_text=f"{FLAG_LABEL} staged 1 change")
            expect(page.locator("#scripts-count")).to_have_text("1")
            notice.get_by_role("button", name="Review").click()
            run = page.get_by_role("dialog", name=FLAG_LABEL)
            expect(run.get_by_role("list", name="Output lines")).to_have_text(
                "Jane Doe: location “Stage” → “Studio B”")
            row = run.locator(".script-change-table tbody tr")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("Jane Doe")
            expect(row).to_contain_text("Changed after publish: “No” → “Yes”")
            run.get_by_role("button", name="Commit").click()
            expect(run.locator(".script-status")).to_have_text("Committed: 1 change applied.")
            expect(cell(page, 0, "Location")).to_have_text("Studio B")
            expect(cell(page, 0, "Changed after publish").get_by_role("checkbox")).to_be_checked()
            page.screenshot(path="/tmp/ui-scripts-on-change.png")
            run.get_by_role("button", name="Close").last.click()

            # the browser logs the refusals provoked on purpose, nothing else
            expected = {"409 /scripts/run", "403 /scripts/run",
                        "409 /scripts/triggers"}
            assert set(failed) == expected, failed
            no_errors([e for e in errors
                       if not re.search(r"Failed to load resource.* (409|403)", e)])
