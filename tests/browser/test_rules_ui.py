"""Browser test of rules and their proposals (spec 05 J4; spec 04 §6).

One engine: adopting `contacts` and `crew_calls` in the Modules panel opens the mapping review,
where People · Name ↔ Crew · Name is confirmed as the same field. Crew Calls' entry then says
"1 rule offered — Open Rules", which opens the Rules panel: "Active crew appear in Contacts"
(Crew → People, offered by Crew Calls, Off) is switched on there. A Crew record typed in the
grid and ticked Active makes the top bar show "1 proposal"; the panel lists "Add Jane Doe to
People?" under its rule, Accept adds her to People. A record created through the API is
proposed live (events) and dismissed; "Apply to existing records" then adds it anyway. A
workspace rule created through the API that would loop with the first one is refused in plain
words when switched on, and deleted. A proposal made while staging says so, and goes with the
discarded overlay. Screenshots land in /tmp/ui-rules-*.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.browser.test_access_ui import no_errors
from tests.browser.test_grid import cell, chromium, open_page, serve
from tests.browser.test_sync_ui import Engine

RULE = "crew_calls.crew_are_contacts"
RULE_LABEL = "Active crew appear in Contacts"


def test_rules_panel_and_proposals(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        eng = Engine(url)
        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url, errors)
            failed: list[str] = []  # URLs the engine refused (the console names no URL)
            page.on("response", lambda r: failed.append(f"{r.status} {urlsplit(r.url).path}")
                    if r.status >= 400 else None)
            expect(page.locator("#conn")).to_have_text("Live")
            # the event stream passes through a route, so the test can add a synced event
            sockets: list[Any] = []

            def through(ws: Any) -> None:
                ws.connect_to_server()
                sockets.append(ws)

            page.route_web_socket(re.compile(r"/events"), through)
            page.reload()
            expect(page.locator("#conn")).to_have_text("Live")
            assert len(sockets) == 1
            badge = page.locator("#proposals-badge")
            expect(badge).to_be_hidden()

            # adopt both modules through the UI and confirm name ↔ full_name
            page.get_by_role("button", name="Modules").click()
            panel = page.get_by_role("dialog", name="Modules")
            modules = panel.get_by_role("list", name="Modules")
            contacts = modules.locator('li[data-module="contacts"]')
            crew = modules.locator('li[data-module="crew_calls"]')
            contacts.get_by_role("button", name="Adopt Contacts").click()
            expect(contacts).to_contain_text("Adopted 1.0.0")
            crew.get_by_role("button", name="Adopt Crew Calls").click()
            review = page.get_by_role("dialog", name="Field mappings")
            expect(review).to_be_visible()
            review.get_by_role("button", name="Same field: People · Name ↔ Crew · Name").click()
            expect(review.get_by_role("list", name="Confirmed mappings")).to_contain_text(
                "People · Name ↔ Crew · Name")
            confirmed = eng.ok("GET", "/field-mappings/list")["confirmed"]
            assert [(p["key_a"], p["key_b"]) for p in confirmed] == [
                ("contacts.People.full_name", "crew_calls.Crew.name")]
            review.get_by_role("button", name="Done").click()
            expect(review).to_be_hidden()

            # J4: the adopted module says it offers a rule, switched off; the link opens Rules
            offer = crew.get_by_role("button",
                                     name="1 rule offered by Crew Calls — Open Rules")
            expect(offer).to_be_visible()
            expect(contacts.locator(".module-rules-offered")).to_have_count(0)
            page.screenshot(path="/tmp/ui-rules-offered.png")
            offer.click()
            rules = page.get_by_role("dialog", name="Rules")
            rule = rules.locator(f'li[data-rule="{RULE}"]')
            expect(rule).to_contain_text(RULE_LABEL)
            expect(rule).to_contain_text("Crew → People")
            expect(rule).to_contain_text("Offered by Crew Calls")
            expect(rule.locator(".rule-status")).to_have_text("Off")
            expect(rule.get_by_role("button", name="Delete rule")).to_have_count(0)
            switch = rule.get_by_role("switch", name=RULE_LABEL)
            expect(switch).not_to_be_checked()
            switch.click()
            expect(rule.locator(".rule-status")).to_have_text("Active")
            expect(switch).to_be_checked()
            expect(rule).to_contain_text("From Crew Calls")
            listed = {r["id"]: r for r in eng.ok("GET", "/rules/list")["rules"]}
            assert listed[RULE]["status"] == "active" and listed[RULE]["enabled"] is True
            page.screenshot(path="/tmp/ui-rules-panel.png")
            rules.get_by_role("button", name="Close").last.click()
            expect(rules).to_be_hidden()
            expect(offer).to_have_count(0)  # switched on: no longer merely offered
            panel.get_by_role("button", name="Close").last.click()
            expect(panel).to_be_hidden()

            # a Crew record typed in the grid: the rule proposes it
            sidebar = page.locator("#table-list")
            sidebar.get_by_role("button", name="Crew").click()
            expect(page.locator("#table-title")).to_have_text("Crew")
            page.locator("#add-record-btn").click()
            expect(page.locator("table.grid tbody tr")).to_have_count(1)
            expect(cell(page, 0, "Name")).to_be_focused()
            page.keyboard.type("Jane Doe")
            page.keyboard.press("Enter")
            expect(cell(page, 0, "Name")).to_have_text("Jane Doe")
            # Active defaults to true (the module's default), so the new crew member matches
            active = cell(page, 0, "Active").get_by_role("checkbox")
            expect(active).to_be_checked()
            expect(badge).to_have_text("1 proposal")
            active.click()  # unticked: the proposal is withdrawn; ticked again: back
            expect(active).not_to_be_checked()
            expect(badge).to_be_hidden()
            active.click()
            expect(active).to_be_checked()
            expect(badge).to_have_text("1 proposal")
            expect(page.locator("#rules-count")).to_have_text("1")

            badge.click()
            proposals = rules.get_by_role("list", name="Proposals")
            items = proposals.locator(".proposal-item")
            expect(items).to_have_count(1)
            expect(items.first.locator(".proposal-question")).to_have_text(
                "Add Jane Doe to People?")
            expect(items.first.locator(".proposal-rule")).to_have_text(RULE_LABEL)
            accept = proposals.get_by_role("button", name="Accept: Add Jane Doe to People?")
            expect(accept).to_be_focused()
            page.screenshot(path="/tmp/ui-rules-proposal.png")
            accept.click()
            expect(items).to_have_count(0)
            expect(proposals).to_contain_text("Nothing waiting")
            expect(badge).to_be_hidden()
            rules.get_by_role("button", name="Close").last.click()
            expect(rules).to_be_hidden()

            # Jane is in People
            sidebar.get_by_role("button", name="People").click()
            expect(page.locator("#table-title")).to_have_text("People")
            expect(page.locator("table.grid tbody tr")).to_have_count(1)
            expect(cell(page, 0, "Name")).to_have_text("Jane Doe")

            # a record made elsewhere is proposed live; Dismiss hides it
            eng.ok("POST", "/records/create", {"table": "crew_calls.Crew",
                                               "values": {"name": "Sam Roe", "active": True}})
            expect(badge).to_have_text("1 proposal")
            badge.click()
            expect(items).to_have_count(1)
            expect(items.first.locator(".proposal-question")).to_have_text(
                "Add Sam Roe to People?")
            proposals.get_by_role("button", name="Dismiss: Add Sam Roe to People?").click()
            expect(items).to_have_count(0)
            expect(badge).to_be_hidden()
            assert eng.ok("GET", "/rules/proposals")["proposals"] == []

            # Apply to existing records adds every current match (Sam) in one change
            rule.get_by_role("button", name=f"Apply to existing records: {RULE_LABEL}").click()
            expect(page.locator("#toasts")).to_contain_text(
                f"“{RULE_LABEL}” applied: the matching records were added to People.")
            expect(page.locator("table.grid tbody tr")).to_have_count(2)

            # a workspace rule that would loop with it: refused in plain words, then deleted
            loop = eng.ok("POST", "/rules/put", {
                "label": "People join the crew", "source": "contacts.People",
                "target": "crew_calls.Crew", "enabled": False})["id"]
            other = rules.locator(f'li[data-rule="{loop}"]')
            expect(other).to_contain_text("People → Crew")  # arrived through rules_changed
            expect(other.locator(".rule-status")).to_have_text("Off")
            other.get_by_role("switch", name="People join the crew").click()
            problem = other.get_by_role("alert")
            expect(problem).to_contain_text(
                "Turning this on would make rules trigger each other:")
            expect(problem).to_contain_text("People join the crew → " + RULE_LABEL)
            expect(other.get_by_role("switch")).not_to_be_checked()
            expect(other.locator(".rule-status")).to_have_text("Off")
            page.screenshot(path="/tmp/ui-rules-cycle.png")
            other.get_by_role("button", name="Delete rule: People join the crew").click()
            sure = page.get_by_role("dialog", name="Delete rule")
            sure.get_by_role("button", name="Delete rule").click()
            expect(other).to_have_count(0)
            assert loop not in {r["id"] for r in eng.ok("GET", "/rules/list")["rules"]}

            # a proposal made while staging says so, and goes with the discarded overlay
            oid = eng.ok("POST", "/overlays/create", {"name": "Act 2 rework"})["overlay_id"]
            eng.ok("POST", "/records/create", {"table": "crew_calls.Crew",
                                               "values": {"name": "Kim Lee", "active": True}})
            expect(items).to_have_count(1)
            expect(items.first).to_contain_text("Add Kim Lee to People?")
            expect(items.first.locator(".proposal-context")).to_have_text(
                "In the staging session “Act 2 rework”: accepting stages it there")
            expect(badge).to_have_text("1 proposal")
            eng.ok("POST", "/overlays/discard", {"id": oid})
            expect(items).to_have_count(0)
            expect(badge).to_be_hidden()
            # rules that loop can only arrive by sync: the engine suspends them and says so
            sockets[0].send(json.dumps({"type": "automation_suspended", "rules": [RULE],
                                        "cycles": [f"{RULE} -> {RULE}"], "seq": 1}))
            expect(page.locator("#toasts")).to_contain_text(
                f"Automation paused: “{RULE_LABEL}” would trigger itself in a loop")
            rules.get_by_role("button", name="Close").last.click()
            expect(rules).to_be_hidden()
            page.locator("#toasts").get_by_role("button", name="Open Rules").click()
            expect(rules).to_be_visible()
            rules.get_by_role("button", name="Close").last.click()
            expect(rules).to_be_hidden()
            # the browser logs the refusal provoked on purpose (409 cycle_detected) and, when
            # the staging banner's refresh was in flight as the API discarded the overlay, its
            # 404 for the changes of the overlay that had just gone; nothing else
            expected = {"409 /rules/put", f"404 /overlays/{oid}/changes"}
            assert "409 /rules/put" in failed and set(failed) <= expected, failed
            no_errors([e for e in errors
                       if not re.search(r"Failed to load resource.* (409|404)", e)])
