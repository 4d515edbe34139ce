"""Browser test of LAN sync (spec 05 J3, J15): two real engines linked by a manual peer.

Engine B joins A's workspace by address (`POST /workspace/join {id, host, port}`, as a user
would after reading A's address in the peers panel). Then in the browser: both top bars read
"Connected · 1 peer", a cell edited in A's grid appears in B's grid and one edited in B's grid
in A's, A's peers panel lists B by name and key fingerprint, and B's panel lists the manual peer
with a Remove button that works (B goes "Offline — all changes saved locally"). Screenshots land
in /tmp/ui-sync-*.png.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.browser.test_grid import cell, chromium, open_page, serve

LINK = ["--no-discovery", "--sync-port", "0", "--sync-host", "127.0.0.1"]


class Engine:
    """The engine behind a printed link, driven over HTTP with its launch token."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.port = parts.port or 80
        m = re.search(r"token=([^&]+)", parts.query)
        assert m is not None, url
        self.token = m[1]

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, json.dumps(body).encode() if body is not None else None,
                         {"Authorization": f"Bearer {self.token}",
                          "Content-Type": "application/json"})
            r = conn.getresponse()
            data = json.loads(r.read())
        finally:
            conn.close()
        assert r.status == 200, (method, path, r.status, data)
        return data


def test_sync_between_two_engines(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(tmp_path / "a", tmp_path / "a.log", ["--name", "Alex", *LINK]) as url_a, \
            serve(tmp_path / "b", tmp_path / "b.log", ["--name", "Jordan", *LINK]) as url_b:
        a, b = Engine(url_a), Engine(url_b)
        table = a.ok("POST", "/tables/create", {"label": "Cast", "fields": [
            {"label": "Name"}]})["table"]
        a.ok("POST", "/records/create", {"table": table, "values": {"Name": "Ada"}})
        ws = a.ok("GET", "/workspace/current")["id"]
        a_status = a.ok("GET", "/sync/status")
        b_actor = b.ok("GET", "/identity")["actor_id"]
        b.ok("POST", "/workspace/join", {"id": ws, "host": "127.0.0.1",
                                         "port": a_status["port"]})

        with chromium() as browser:
            errors: list[str] = []
            page_a = open_page(browser, url_a, errors)
            page_b = open_page(browser, url_b, errors)
            for page in (page_a, page_b):
                expect(page.locator("#sync-status")).to_have_text("Connected · 1 peer",
                                                                   timeout=30_000)
            expect(page_b.locator("#table-title")).to_have_text("Cast")
            expect(cell(page_b, 0, "Name")).to_have_text("Ada")
            page_b.screenshot(path="/tmp/ui-sync-joined.png")

            # an edit in A's grid appears in B's, and one in B's grid in A's
            cell(page_a, 0, "Name").dblclick()
            editor = page_a.get_by_role("textbox", name="Name, editing")
            editor.fill("Ada Lovelace")
            editor.press("Enter")
            expect(cell(page_a, 0, "Name")).to_have_text("Ada Lovelace")
            expect(cell(page_b, 0, "Name")).to_have_text("Ada Lovelace", timeout=20_000)
            page_b.locator("#add-record-btn").click()
            expect(cell(page_b, 1, "Name")).to_be_focused()
            page_b.keyboard.type("Grace")
            page_b.keyboard.press("Enter")
            expect(cell(page_b, 1, "Name")).to_have_text("Grace")
            expect(cell(page_a, 1, "Name")).to_have_text("Grace", timeout=20_000)

            # A's peers panel: B by display name and key fingerprint, connected
            page_a.locator("#sync-status").click()
            panel = page_a.get_by_role("dialog", name="Sync and peers")
            peers = panel.get_by_role("list", name="Peers", exact=True)
            expect(peers.get_by_role("listitem")).to_have_count(1)
            item = peers.get_by_role("listitem").first
            expect(item.locator(".peer-name")).to_have_text("Jordan")
            expect(item.locator(".peer-fp")).to_have_text(b_actor[:8])
            expect(item.locator(".peer-state")).to_have_text("Connected")
            expect(panel.locator(".sync-summary")).to_have_text("Connected · 1 peer")
            expect(panel).to_contain_text(f":{a_status['port']}")
            page_a.screenshot(path="/tmp/ui-sync-peers.png")
            panel.get_by_role("button", name="Close").last.click()
            expect(panel).to_be_hidden()

            # B's panel: the peer added by address, removable; a bad address is explained
            page_b.locator("#sync-status").click()
            panel_b = page_b.get_by_role("dialog", name="Sync and peers")
            address = f"127.0.0.1:{a_status['port']}"
            manual = panel_b.get_by_role("list", name="Peers added by address")
            expect(manual.get_by_role("listitem")).to_have_count(1)
            expect(manual).to_contain_text(address)
            panel_b.get_by_label("Add peer by address").fill("not an address")
            panel_b.get_by_role("button", name="Add peer").click()
            expect(panel_b.get_by_role("alert")).to_contain_text("host:port")
            manual.get_by_role("button", name=f"Remove peer {address}").click()
            expect(manual).to_be_hidden()
            expect(page_b.locator("#sync-status")).to_have_text(
                "Offline — all changes saved locally", timeout=20_000)
            page_b.screenshot(path="/tmp/ui-sync-removed.png")
            assert b.ok("GET", "/sync/peers")["manual_peers"] == []
            assert not errors, errors


def test_join_a_workspace_by_address_from_the_panel(tmp_path: Path) -> None:
    """Where discovery does not reach: B types A's sync address, looks up what A serves and
    joins it from the peers panel; A's data appears in B's grid."""
    from playwright.sync_api import expect

    with serve(tmp_path / "a", tmp_path / "a.log", ["--name", "Alex", *LINK]) as url_a, \
            serve(tmp_path / "b", tmp_path / "b.log", ["--name", "Jordan", *LINK]) as url_b:
        a = Engine(url_a)
        table = a.ok("POST", "/tables/create", {"label": "Crew", "fields": [
            {"label": "Name"}]})["table"]
        a.ok("POST", "/records/create", {"table": table, "values": {"Name": "Grace"}})
        port = a.ok("GET", "/sync/status")["port"]

        with chromium() as browser:
            errors: list[str] = []
            page = open_page(browser, url_b, errors)
            page.locator("#sync-status").click()
            page.get_by_label("Add peer by address").fill(f"127.0.0.1:{port}")
            page.get_by_role("button", name="Workspaces there").click()
            item = page.get_by_role("list", name="Workspaces on this network")
            expect(item).to_contain_text(f"at 127.0.0.1:{port}")
            item.get_by_role("button", name=re.compile("^Join ")).click()
            expect(page.locator("#sync-status")).to_have_text("Connected · 1 peer",
                                                              timeout=30_000)
            expect(page.locator("#table-title")).to_have_text("Crew")
            expect(cell(page, 0, "Name")).to_have_text("Grace")
            assert errors == [], errors
