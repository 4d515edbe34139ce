"""Browser tests of the app shell (spec 05 §2; J1, J2, J3, J15; issue 9 robustness).

- J1/J2: a fresh home started without `--name` welcomes the user and asks for the name teammates
  see (it then shows in the top bar), offers Create / Join / Open recent; creating a workspace
  with the Contacts module ticked lands on it with People in the sidebar; one without modules
  shows "Add a table" and "Adopt a module" (which opens Modules); Open recent goes back.
- J3: Invite… shows the workspace name, its ID fingerprint, this computer's address and "In this
  version everyone who joins can edit."; a second engine joins through Switch… by typing that
  address, its tables arrive, the sidebar names the workspace (not "Joining workspace"), and a
  catch-up summary ("… changes from Alex") appears.
- J15: the status reads "Fetching files · 1" while a file downloads from the peer.
- Restarts: with the page open the engine stops ("Reconnecting…") and starts again on the same
  port and home: the page goes "Live" without a new link and shows a record made after the
  restart, without a reload.
Screenshots land in /tmp/ui-shell-*.png.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from tests.browser.test_grid import cell, chromium, open_page, serve
from tests.browser.test_sync_ui import LINK, Engine


def _no_errors(errors: list[str]) -> None:
    # a stopped engine makes the browser log refused connections; nothing else may be logged
    real = [e for e in errors if "ERR_CONNECTION_REFUSED" not in e
            and "WebSocket connection" not in e and "Failed to load resource" not in e]
    assert not real, real


def test_first_start_welcome_and_create_workspace(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "data", tmp_path / "engine.log") as url, chromium() as browser:
        eng = Engine(url)
        me = eng.ok("GET", "/identity")
        assert me["name_chosen"] is False
        errors: list[str] = []
        page = open_page(browser, url, errors)

        # J1: the welcome screen asks for the name teammates will see
        welcome = page.get_by_role("dialog", name="Welcome to openprod")
        expect(welcome).to_be_visible()
        name = welcome.get_by_label("What should teammates see as your name?")
        expect(name).to_be_focused()
        welcome.get_by_role("button", name="Continue").click()
        expect(welcome.get_by_role("alert")).to_contain_text("Type the name")
        name.fill("Alex")
        page.screenshot(path="/tmp/ui-shell-welcome.png")
        name.press("Enter")
        expect(welcome).to_be_hidden()
        expect(page.locator("#me")).to_have_text("Alex")
        assert eng.ok("GET", "/identity")["display_name"] == "Alex"

        # then: Create workspace, Join on this network, Open recent (the workspace made for
        # this first start is open)
        choose = page.get_by_role("dialog", name="Choose a workspace")
        expect(choose).to_be_visible()
        expect(choose.get_by_role("heading", name="Join on this network")).to_be_visible()
        recent = choose.get_by_role("list", name="Workspaces on this computer")
        expect(recent.get_by_role("listitem")).to_have_count(1)
        expect(recent).to_contain_text("My Workspace")
        expect(recent).to_contain_text("Open now")
        page.screenshot(path="/tmp/ui-shell-choose.png")

        # J2: create a workspace with the Contacts module ticked
        choose.get_by_role("button", name="Create workspace…").click()
        create = page.get_by_role("dialog", name="New workspace")
        create.get_by_label("Workspace name").fill("Summer tour")
        contacts = create.get_by_role("checkbox", name=re.compile("^Contacts"))
        expect(contacts).not_to_be_checked()
        contacts.check()
        page.screenshot(path="/tmp/ui-shell-create.png")
        create.get_by_role("button", name="Create workspace").click()
        page.get_by_role("dialog", name="Save the recovery key") \
            .get_by_role("button", name="I have saved it").click()
        expect(page.locator("#ws-name")).to_have_text("Summer tour")
        expect(page.locator("#table-list").get_by_role("button", name="People")).to_be_visible()
        expect(page.locator("#table-title")).to_have_text("People")
        expect(page.locator("#me")).to_have_text("Alex")

        # a workspace without modules: Add a table / Adopt a module
        page.get_by_role("button", name="Switch…").click()
        switch = page.get_by_role("dialog", name="Switch workspace")
        expect(switch.get_by_role("list", name="Workspaces on this computer")
               .get_by_role("listitem")).to_have_count(2)
        switch.get_by_role("button", name="Create workspace…").click()
        create = page.get_by_role("dialog", name="New workspace")
        create.get_by_label("Workspace name").fill("Empty show")
        create.get_by_role("button", name="Create workspace").click()
        page.get_by_role("dialog", name="Save the recovery key") \
            .get_by_role("button", name="I have saved it").click()
        expect(page.locator("#ws-name")).to_have_text("Empty show")
        expect(page.get_by_role("heading", name="No tables yet")).to_be_visible()
        expect(page.get_by_role("button", name="Add a table")).to_be_visible()
        page.screenshot(path="/tmp/ui-shell-empty.png")
        page.get_by_role("button", name="Adopt a module").click()
        modules = page.get_by_role("dialog", name="Modules")
        expect(modules).to_be_visible()
        modules.get_by_role("button", name="Close").last.click()
        expect(modules).to_be_hidden()

        # Open recent goes back to the first one
        page.get_by_role("button", name="Switch…").click()
        switch = page.get_by_role("dialog", name="Switch workspace")
        switch.get_by_role("button", name="Open Summer tour").click()
        expect(switch).to_be_hidden()
        expect(page.locator("#ws-name")).to_have_text("Summer tour")
        expect(page.locator("#table-title")).to_have_text("People")

        # the name is not asked again
        page.reload()
        expect(page.locator("#conn")).to_have_text("Live")
        expect(page.locator("#me")).to_have_text("Alex")
        expect(page.get_by_role("dialog", name="Welcome to openprod")).to_have_count(0)

        # the name can change later: the top bar's name opens the dialog
        page.get_by_role("button", name="Your name: Alex (change)").click()
        ask = page.get_by_role("dialog", name="Your name")
        expect(ask.get_by_label("Name teammates see")).to_have_value("Alex")
        ask.get_by_label("Name teammates see").fill("Alex Moreno")
        ask.get_by_label("Name teammates see").press("Enter")
        expect(page.locator("#me")).to_have_text("Alex Moreno")
        assert eng.ok("GET", "/identity")["display_name"] == "Alex Moreno"
        _no_errors(errors)


def _upload(eng: Engine, name: str, data: bytes) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", eng.port, timeout=120)
    try:
        conn.request("POST", f"/blobs/upload?name={name}", data, {
            "Authorization": f"Bearer {eng.token}", "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert r.status == 200, body
    return str(json.loads(body)["hash"])


def test_invite_and_join_by_address(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "a", tmp_path / "a.log", ["--name", "Alex", *LINK]) as url_a, \
            serve(tmp_path / "b", tmp_path / "b.log", ["--name", "Jordan", *LINK]) as url_b:
        a, b = Engine(url_a), Engine(url_b)
        a.ok("POST", "/workspace/create", {"name": "Tour"})
        table = a.ok("POST", "/tables/create", {"label": "Cast", "fields": [
            {"label": "Name"}]})["table"]
        for who in ("Ada", "Grace", "Linus"):
            a.ok("POST", "/records/create", {"table": table, "values": {"Name": who}})
        st = a.ok("GET", "/sync/status")
        address = f"127.0.0.1:{st['port']}"
        fp = st["genesis"][:8]

        with chromium() as browser:
            errors: list[str] = []
            page_a = open_page(browser, url_a, errors)
            page_b = open_page(browser, url_b, errors)
            expect(page_a.locator("#ws-name")).to_have_text("Tour")

            # J3 Invite: name, ID fingerprint, address, access mode, who can edit
            page_a.get_by_role("button", name="Invite…").click()
            invite = page_a.get_by_role("dialog", name="Invite teammates")
            expect(invite.locator(".invite-name")).to_have_text("Tour")
            expect(invite.locator(".invite-fp")).to_have_text(fp)
            expect(invite.locator(".invite-addr")).to_contain_text(address)
            expect(invite).to_contain_text("Open — anyone on this network can join.")
            expect(invite).to_contain_text("In this version everyone who joins can edit.")
            page_a.screenshot(path="/tmp/ui-shell-invite.png")
            invite.get_by_role("button", name="Close").last.click()
            expect(invite).to_be_hidden()

            # B joins through Switch…: the address typed, the workspace found, Join
            expect(page_b.locator("#conn")).to_have_text("Live")
            page_b.get_by_role("button", name="Switch…").click()
            switch = page_b.get_by_role("dialog", name="Switch workspace")
            addr = switch.get_by_label("Or type the address of a teammate's computer")
            addr.fill("not an address")
            switch.get_by_role("button", name="Find workspaces").click()
            expect(switch.get_by_role("alert")).to_contain_text("host:port")
            addr.fill(address)
            switch.get_by_role("button", name="Find workspaces").click()
            found = switch.get_by_role("list", name="Workspaces on this network")
            expect(found.get_by_role("listitem")).to_have_count(1)
            expect(found).to_contain_text("Tour")
            expect(found).to_contain_text(fp)
            page_b.screenshot(path="/tmp/ui-shell-join.png")
            found.get_by_role("button", name="Join Tour").click()
            expect(switch).to_be_hidden()

            # the workspace arrives: its tables and records, its name, the catch-up summary
            expect(page_b.locator("#table-title")).to_have_text("Cast", timeout=30_000)
            expect(cell(page_b, 2, "Name")).to_have_text("Linus", timeout=20_000)
            expect(page_b.locator("#ws-name")).to_have_text("Tour")
            expect(page_b.locator("#sync-status")).to_have_text("Connected · 1 peer",
                                                                timeout=20_000)
            expect(page_b.locator("#toasts")).to_contain_text(
                re.compile(r"\d+ changes from Alex"))
            page_b.screenshot(path="/tmp/ui-shell-joined.png")
            assert b.ok("GET", "/workspace/current")["name"] == "Tour"

            # the owner in access-code mode: Invite… has a New access code shortcut
            a.ok("POST", "/workspace/join-mode", {"mode": "key"})
            page_a.get_by_role("button", name="Invite…").click()
            invite = page_a.get_by_role("dialog", name="Invite teammates")
            expect(invite).to_contain_text("Access code — people need a code you give them.")
            invite.get_by_role("button", name="New access code").click()
            expect(invite.locator(".access-code-big")).to_have_text(
                re.compile(r"^[0-9A-Z]{3}-[0-9A-Z]{3}$"))
            codes = a.ok("GET", "/access-keys/list")["keys"]
            assert len(codes) == 1 and codes[0]["live"]
            _no_errors(errors)


def test_fetching_files_status(tmp_path: Path) -> None:
    """J15 "Fetching files · 1" while a file downloads; a join by address without a name ends
    with the workspace's real name in the sidebar (not "Joining workspace")."""
    from playwright.sync_api import expect

    with serve(tmp_path / "a", tmp_path / "a.log", ["--name", "Alex", *LINK]) as url_a, \
            serve(tmp_path / "b", tmp_path / "b.log", ["--name", "Jordan", *LINK]) as url_b:
        a, b = Engine(url_a), Engine(url_b)
        a.ok("POST", "/workspace/create", {"name": "Tour"})
        table = a.ok("POST", "/tables/create", {"label": "Plots", "fields": [
            {"label": "Name"}, {"label": "File", "type": "blob_ref"}]})["table"]
        data = os.urandom(64 * 1024 * 1024)  # a few seconds of download on loopback
        h = _upload(a, "show.mov", data)
        a.ok("POST", "/records/create", {"table": table, "values": {"Name": "Act 1",
                                                                    "File": h}})
        ws = a.ok("GET", "/workspace/current")["id"]
        port = a.ok("GET", "/sync/status")["port"]

        with chromium() as browser:
            errors: list[str] = []
            page_b = open_page(browser, url_b, errors)
            expect(page_b.locator("#conn")).to_have_text("Live")
            b.ok("POST", "/workspace/join", {"id": ws, "host": "127.0.0.1", "port": port})
            expect(cell(page_b, 0, "Name")).to_have_text("Act 1", timeout=30_000)
            expect(page_b.locator("#ws-name")).to_have_text("Tour")
            expect(page_b.locator("#sync-status")).to_have_text("Connected · 1 peer",
                                                                timeout=20_000)
            # the file is not here yet; asking for it starts the download from A
            status = page_b.evaluate(f"fetch('/blobs/{h}').then(r => r.status)")
            assert status == 202
            expect(page_b.locator("#sync-status")).to_have_text("Fetching files · 1",
                                                                timeout=20_000)
            page_b.screenshot(path="/tmp/ui-shell-fetching.png")
            expect(page_b.locator("#sync-status")).to_have_text("Connected · 1 peer",
                                                                timeout=60_000)
            assert b.ok("GET", f"/blobs/{h}/info")["state"] == "present"
            _no_errors(errors)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_page_survives_an_engine_restart(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    port = _free_port()
    extra = ["--name", "Alex", "--port", str(port)]
    with chromium() as browser:
        errors: list[str] = []
        with serve(tmp_path / "data", tmp_path / "engine1.log", extra) as url:
            eng = Engine(url)
            table = eng.ok("POST", "/tables/create", {"label": "Cast", "fields": [
                {"label": "Name"}]})["table"]
            eng.ok("POST", "/records/create", {"table": table, "values": {"Name": "Ada"}})
            page = open_page(browser, url, errors)
            expect(page.locator("#conn")).to_have_text("Live")
            expect(cell(page, 0, "Name")).to_have_text("Ada")
            assert "token=" not in page.url
            # the shell is loaded (its Invite dialog opens) before the engine goes away
            page.get_by_role("button", name="Invite…").click()
            invite = page.get_by_role("dialog", name="Invite teammates")
            expect(invite).to_contain_text("everyone who joins can edit")
            invite.get_by_role("button", name="Close").last.click()
            expect(invite).to_be_hidden()
        # the engine has stopped (SIGTERM, exit 0): the page keeps its data and retries
        expect(page.locator("#conn")).to_have_text("Reconnecting…")
        page.screenshot(path="/tmp/ui-shell-reconnecting.png")
        with serve(tmp_path / "data", tmp_path / "engine2.log", extra) as url2:
            eng2 = Engine(url2)
            assert eng2.token != eng.token  # a new launch token, yet no new link is needed
            expect(page.locator("#conn")).to_have_text("Live", timeout=30_000)
            eng2.ok("POST", "/records/create", {"table": table, "values": {"Name": "Grace"}})
            expect(cell(page, 1, "Name")).to_have_text("Grace", timeout=20_000)
            expect(page.locator("#blocker")).to_be_hidden()
            assert "token=" not in page.url
            page.screenshot(path="/tmp/ui-shell-restarted.png")
        _no_errors(errors)
