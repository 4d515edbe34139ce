"""Browser test: conflicts and staging in the UI (spec 05 J10-J12) against a real engine.

- A conflict between two replicas (sync arrives in a later issue, so the test makes it with the
  engine facade while the engine is stopped: a second replica under another identity, both edit
  the same field, ops exchanged both ways), then `openprod serve` on that data: the top bar
  counts it, the panel describes it in domain terms, the cell's marker opens the resolver, and
  picking a value closes it.
- Staging: start an overlay, stage a cell edit, review it, stash it, edit the same cell
  canonically so the stashed overlay drifts, activate it again: Commit is disabled with the
  reason shown; Keep Mine, then Commit applies the staged value.
Screenshots land in /tmp/ui4-*.png.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.browser import test_grid as base

REPO = base.REPO


def _prepare(data: Path, replica: Path, *, conflict: bool) -> None:
    """A workspace with a table "Cues" (Name, Time) and one record "Cue 42" at 10:00; with
    conflict=True, Alex (this engine) set Time to 10:30 while Jordan (another replica) set it to
    10:45, Alex deleted a second record "Cue 43" while Jordan edited it, and each replica has
    received the other's ops: a field conflict and a delete conflict."""
    subprocess.run([sys.executable, "-m", "actors.cli", "init", "--data", str(data),
                    "--name", "Alex", "--workspace-name", "Spring Tour"],
                   cwd=REPO, check=True, capture_output=True)
    from openprod.core import identity as idm
    from openprod.engine.workspace import OPLOG_FILE, Workspace

    (wsdir,) = [p for p in (data / "workspaces").iterdir() if (p / OPLOG_FILE).exists()]
    a = Workspace.open(wsdir, idm.load(data / "identity.json"))
    try:
        a.create_table("Cues", [{"label": "Name", "type": "text"},
                                {"label": "Time", "type": "text"}])
        (table,) = a.list_tables()
        f = {x["label"]: x["name"] for x in table["fields"]}
        (e,) = a.create_record(table["id"], {f["Name"]: "Cue 42", f["Time"]: "10:00"}).created
        if conflict:
            (e2,) = a.create_record(table["id"], {f["Name"]: "Cue 43", f["Time"]: "10:05"}).created
            (e3,) = a.create_record(table["id"], {f["Name"]: "Cue 44", f["Time"]: "11:00"}).created
            darcy = idm.Identity.generate("Darcy")
            c = Workspace.join(replica.with_name("darcy"), darcy, a.ws)
            c.ingest(a.ops_since(c.vclock()))
            c.put_config("actor", darcy.actor.hex(), {"display_name": "Darcy", "device_name": ""})
            c.update_record(e3, {f["Time"]: "11:40"})  # offline: arrives after a resolution
            jordan = idm.Identity.generate("Jordan")
            b = Workspace.join(replica, jordan, a.ws)
            try:
                b.ingest(a.ops_since(b.vclock()))
                b.put_config("actor", jordan.actor.hex(),
                             {"display_name": "Jordan", "device_name": "laptop"})
                a.update_record(e, {f["Time"]: "10:30"})
                b.update_record(e, {f["Time"]: "10:45"})
                a.delete_entity(e2)  # Alex deletes Cue 43 while Jordan edits it
                b.update_record(e2, {f["Time"]: "10:06"})
                a.update_record(e3, {f["Time"]: "11:30"})
                b.update_record(e3, {f["Time"]: "11:45"})
                b.ingest(a.ops_since(b.vclock()))
                a.ingest(b.ops_since(a.vclock()))
                assert len(a.list_conflicts()) == 3
                (c44,) = [x for x in a.list_conflicts() if x["display_value"] == "11:45"]
                a.resolve_conflict(c44["conflict_id"], "11:30")
                a.ingest(c.ops_since(a.vclock()))  # Darcy's late edit reopens it
                assert len(a.list_conflicts()) == 3
            finally:
                b.close()
                c.close()
    finally:
        a.close()


def _no_errors(errors: list[str]) -> None:
    unexpected = [e for e in errors if not re.search(r"Failed to load resource.* 409", e)]
    assert not unexpected, unexpected


def test_conflict_resolved_in_ui(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    _prepare(tmp_path / "data", tmp_path / "jordan", conflict=True)
    errors: list[str] = []
    with base.serve(tmp_path / "data", tmp_path / "engine.log") as url, base.chromium() as browser:
        page = base.open_page(browser, url, errors)
        badge = page.locator("#conflict-badge")
        expect(badge).to_have_text("3 conflicts")
        expect(page.locator("table.grid tbody tr")).to_have_count(2)  # Cue 43 is hidden
        time_cell = base.cell(page, 0, "Time")
        marker = time_cell.get_by_role("button", name="Resolve conflict: Time of Cue 42")
        expect(marker).to_be_visible()
        expect(time_cell).to_have_text("10:45")  # the provisional value: LWW, the later edit
        page.screenshot(path="/tmp/ui4-conflict-cell.png")

        # the panel lists it in domain terms
        badge.click()
        panel = page.get_by_role("dialog", name="Conflicts")
        items = panel.locator(".conflict-item")
        expect(items).to_have_count(3)
        expect(items.filter(has_text="Cue 44")).to_contain_text("Reopened")
        field_item = items.filter(has_text="Cue 42")
        expect(field_item).to_contain_text("Cues · Cue 42 · Time")
        expect(field_item).to_contain_text(
            re.compile(r"Alex “10:30” \(.+\), Jordan “10:45” \(.+\)"))
        delete_item = items.filter(has_text="deleted it")
        expect(delete_item).to_contain_text(re.compile(r"Cues · Deleted record …[0-9a-f]{6}"))
        expect(delete_item).to_contain_text(re.compile(r"Alex deleted it .*Jordan edited it"))
        page.screenshot(path="/tmp/ui4-conflict-panel.png")

        # the delete conflict: Restore brings the record back
        delete_item.get_by_role("button", name=re.compile("^Resolve")).click()
        restore_dlg = page.get_by_role("dialog", name="Resolve: deleted and edited")
        restore_dlg.get_by_role("radio", name=re.compile("^Restore")).check()
        page.screenshot(path="/tmp/ui4-resolver-delete.png")
        restore_dlg.get_by_role("button", name="Resolve").click()
        expect(restore_dlg).to_be_hidden()
        expect(badge).to_have_text("2 conflicts")
        expect(items).to_have_count(2)
        expect(page.locator("table.grid tbody tr")).to_have_count(3)
        expect(page.locator("table.grid tbody tr").filter(has_text="Cue 43")).to_contain_text(
            "10:06")
        panel.get_by_role("button", name="Close").click()
        expect(panel).to_be_hidden()

        # the cell's marker opens the resolver: every value with its author; pick Alex's
        marker.click()
        dlg = page.get_by_role("dialog", name="Resolve conflict")
        expect(dlg).to_contain_text("Cues · Cue 42 · Time")
        alex = dlg.get_by_role("radio", name=re.compile(r"“10:30” Alex"))
        jordan = dlg.get_by_role("radio", name=re.compile(r"“10:45” Jordan .* shown now"))
        expect(jordan).to_be_checked()
        expect(dlg.get_by_role("radio", name="Another value")).to_be_visible()
        expect(dlg.get_by_role("radio", name="Clear the field")).to_be_visible()
        alex.check()
        page.screenshot(path="/tmp/ui4-resolver.png")

        # the engine says the conflict changed meanwhile (one engine cannot race itself, so a
        # stub gives its 409 once): the dialog re-reads it and says so, and stays open
        stale = {"error": {"code": "stale_conflict_state", "message": "changed", "details": {}}}
        page.route("**/conflicts/resolve", lambda route: route.fulfill(status=409, json=stale))
        dlg.get_by_role("button", name="Resolve").click()
        expect(dlg.get_by_role("status")).to_contain_text(
            "Someone changed this conflict while you were deciding")
        page.unroute("**/conflicts/resolve")
        expect(dlg).to_be_visible()
        alex.check()
        dlg.get_by_role("button", name="Resolve").click()
        expect(dlg).to_be_hidden()
        expect(badge).to_have_text("1 conflict")
        expect(time_cell).to_have_text("10:30")
        expect(time_cell.locator(".marker-conflict")).to_have_count(0)
        expect(time_cell).not_to_have_class(re.compile(r"\bconflicted\b"))

        # a reopened conflict: the late edit next to the value it had been resolved to
        cue44 = page.locator("table.grid tbody tr").filter(has_text="Cue 44")
        expect(cue44.locator('td[data-label="Time"]')).to_have_text("11:30")
        expect(cue44.get_by_role("button", name="Resolve conflict: Time of Cue 44")).to_be_visible()
        cue44.locator('td[data-label="Time"] .cell-value').click()
        page.keyboard.press("Alt+Enter")  # the keyboard way to the resolver
        expect(dlg).to_contain_text("Reopened — late edit from Darcy. It had been resolved to "
                                    "“11:30”.")
        darcy = dlg.get_by_role("radio", name=re.compile(r"“11:40” Darcy"))
        expect(darcy).to_be_visible()
        page.screenshot(path="/tmp/ui4-reopened.png")
        darcy.check()
        dlg.get_by_role("button", name="Resolve").click()
        expect(dlg).to_be_hidden()
        expect(badge).to_have_text("No conflicts")
        expect(cue44.locator('td[data-label="Time"]')).to_have_text("11:40")
        expect(page.locator("table.grid .marker-conflict")).to_have_count(0)
        page.screenshot(path="/tmp/ui4-resolved.png")
    _no_errors(errors)


def test_staging_drift_keep_mine_commit(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    _prepare(tmp_path / "data", tmp_path / "unused", conflict=False)
    errors: list[str] = []
    with base.serve(tmp_path / "data", tmp_path / "engine.log") as url, base.chromium() as browser:
        page = base.open_page(browser, url, errors)
        time_cell = base.cell(page, 0, "Time")
        expect(time_cell).to_have_text("10:00")
        banner = page.get_by_role("region", name="Staging")

        # start staging and stage one edit
        page.get_by_role("button", name="Start staging").click()
        ask = page.get_by_role("dialog", name="Start staging")
        ask.get_by_label("Name").fill("Act 2 rework")
        ask.get_by_role("button", name="Start staging").click()
        expect(banner).to_contain_text("Staging: Act 2 rework — 0 changes")
        expect(banner.get_by_role("button", name="Commit")).to_be_disabled()
        edit(page, time_cell, "11:00")
        expect(banner).to_contain_text("Staging: Act 2 rework — 1 change")
        expect(time_cell).to_have_text("11:00")
        expect(time_cell).to_have_class(re.compile(r"\bstaged\b"))
        expect(time_cell.get_by_role("img", name="Staged")).to_have_attribute(
            "title", re.compile("Real value: “10:00”"))
        page.screenshot(path="/tmp/ui4-staged.png")

        # undo and redo while staging act on the staged edit only
        page.get_by_role("button", name="Undo").click()
        expect(banner).to_contain_text("— 0 changes")
        expect(time_cell).to_have_text("10:00")
        expect(time_cell).not_to_have_class(re.compile(r"\bstaged\b"))
        page.get_by_role("button", name="Redo").click()
        expect(banner).to_contain_text("— 1 change")
        expect(time_cell).to_have_text("11:00")

        # a second staged edit, dropped from Review
        name_cell = base.cell(page, 0, "Name")
        edit(page, name_cell, "Cue 42 (Act 2)")
        expect(banner).to_contain_text("— 2 changes")

        # Review lists the change: record, field, old → new
        banner.get_by_role("button", name="Review").click()
        review = page.get_by_role("dialog", name="Review: Act 2 rework")
        rows = review.locator("tbody tr")
        expect(rows).to_have_count(2)
        page.screenshot(path="/tmp/ui4-review.png")
        rows.filter(has_text="Name").get_by_role("button", name=re.compile("^Drop this change")
                                                 ).click()
        expect(rows).to_have_count(1)
        row = rows.first
        expect(row).to_contain_text("Cue 42")
        expect(row).to_contain_text("Time")
        expect(row).to_contain_text("“10:00” → “11:00”")
        expect(row.get_by_role("button", name="Drop this change: Cue 42 · Time")).to_be_visible()
        expect(banner).to_contain_text("— 1 change")
        expect(name_cell).to_have_text("Cue 42")
        review.get_by_role("button", name="Done").click()

        # stash: the canonical value is back; a canonical edit of the same cell drifts it
        banner.get_by_role("button", name="Stash").click()
        expect(banner).to_be_hidden()
        expect(time_cell).to_have_text("10:00")
        expect(time_cell).not_to_have_class(re.compile(r"\bstaged\b"))
        edit(page, time_cell, "10:15")
        expect(time_cell).to_have_text("10:15")

        # the overlays menu shows the drift; activate it
        page.get_by_role("button", name=re.compile(r"^Overlays")).click()
        menu = page.get_by_role("dialog", name="Overlays")
        item = menu.locator(".overlay-item")
        expect(item).to_have_count(1)
        expect(item).to_contain_text("Stashed")
        expect(item).to_contain_text("1 field changed by others")
        page.screenshot(path="/tmp/ui4-overlays.png")
        menu.get_by_role("button", name="Activate Act 2 rework").click()
        expect(menu.locator(".overlay-item")).to_contain_text("Active")
        menu.get_by_role("button", name="Done").click()

        # drift shown: the cell's badge, Commit disabled with the reason
        expect(time_cell).to_have_text(re.compile("11:00"))
        badge = time_cell.get_by_role("button", name=re.compile("Changed while you were staging"))
        expect(badge).to_be_visible()
        commit = banner.get_by_role("button", name="Commit")
        expect(commit).to_be_disabled()
        expect(banner).to_contain_text("Commit waits: 1 field was changed by others")
        page.screenshot(path="/tmp/ui4-drift.png")

        badge.click()
        drift = page.get_by_role("dialog", name="Changed while you were staging")
        expect(drift).to_contain_text("Cue 42 · Time")
        expect(drift).to_contain_text("Changed to “10:15”")
        expect(drift).to_contain_text("Yours: “11:00”")
        page.screenshot(path="/tmp/ui4-drift-dialog.png")
        drift.get_by_role("button", name="Keep mine: Cue 42 · Time").click()
        expect(drift).to_contain_text("Every field is decided")
        drift.get_by_role("button", name="Done").click()
        expect(commit).to_be_enabled()
        expect(badge).to_be_hidden()

        commit.click()
        expect(banner).to_be_hidden()
        expect(time_cell).to_have_text("11:00")
        expect(time_cell).not_to_have_class(re.compile(r"\bstaged\b"))
        expect(page.get_by_role("button", name="Start staging")).to_be_visible()
        page.screenshot(path="/tmp/ui4-committed.png")

        # the commit is one ordinary undo step
        page.get_by_role("button", name="Undo").click()
        expect(time_cell).to_have_text("10:15")

        # Discard asks first, then leaves no trace
        page.get_by_role("button", name="Start staging").click()
        ask = page.get_by_role("dialog", name="Start staging")
        ask.get_by_label("Name").fill("Scratch")
        ask.get_by_role("button", name="Start staging").click()
        edit(page, time_cell, "12:00")
        expect(banner).to_contain_text("Staging: Scratch — 1 change")

        # a second overlay stashes Scratch; activating Scratch again asks to stash the other
        page.get_by_role("button", name=re.compile(r"^Overlays")).click()
        menu.get_by_role("button", name="Start staging…").click()
        ask.get_by_label("Name").fill("Other")
        ask.get_by_role("button", name="Start staging").click()
        expect(banner).to_contain_text("Staging: Other — 0 changes")
        expect(time_cell).to_have_text("10:15")
        page.get_by_role("button", name=re.compile(r"^Overlays")).click()
        expect(menu.locator(".overlay-item")).to_have_count(2)
        menu.get_by_role("button", name="Activate Scratch").click()
        switch = page.get_by_role("dialog", name="Switch overlays?")
        expect(switch).to_contain_text("“Other” is active. Stash it and activate “Scratch”?")
        switch.get_by_role("button", name="Stash and activate").click()
        expect(banner).to_contain_text("Staging: Scratch — 1 change")
        expect(menu.locator(".overlay-item.is-active")).to_contain_text("Scratch")
        menu.get_by_role("button", name="Done").click()
        expect(time_cell).to_have_text("12:00")

        banner.get_by_role("button", name="Discard").click()
        confirm = page.get_by_role("dialog", name="Discard staged changes?")
        expect(confirm).to_contain_text("Discard “Scratch” and its 1 staged change?")
        page.screenshot(path="/tmp/ui4-discard.png")
        confirm.get_by_role("button", name="Discard").click()
        expect(banner).to_be_hidden()
        expect(time_cell).to_have_text("10:15")
        expect(page.locator("#overlays-count")).to_have_text("1")  # "Other", stashed
    _no_errors(errors)


def edit(page: Any, td: Any, text: str) -> None:
    td.dblclick()
    editor = td.get_by_role("textbox")
    editor.fill(text)
    editor.press("Enter")
