"""Browser test of file fields (spec 05 J9) between two real engines linked on loopback.

Engine B joins A's workspace by address (as in test_sync_ui). In A's browser: a table with a
File field made in the New table dialog; a PNG (drawn with Pillow) attached with the cell's
Attach… picker shows "Uploading…" with a progress bar while the upload is held, then its
thumbnail; a text file dropped on another cell shows its icon and name, and its preview the
name, size, type and a Download link. In B's browser: the record arrives, the PNG's cell reads
"Downloading from Alex…" (B's event stream holds `blob_available` back until the test has seen
it) and then shows the thumbnail, whose preview shows the image. With A unreachable, opening the
text file reads "Not on this device yet"; once A is back it downloads by itself, and B's
Download link serves the same bytes. A refused upload (413) is explained in the cell, and one
Undo detaches a file on both engines.
Screenshots land in /tmp/ui-files-*.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from tests.browser.test_grid import cell, chromium, open_page, serve
from tests.browser.test_sync_ui import LINK, Engine

RIDER = "Get-in at 08:00. Two followspots, one hazer, no pyro.\n"


def make_png(path: Path) -> bytes:
    """A small gradient picture (Pillow), so its thumbnail is a real decoded image."""
    from PIL import Image

    img = Image.new("RGB", (320, 200))
    img.putdata([(x * 255 // 319, y * 255 // 199, 140) for y in range(200) for x in range(320)])
    img.save(path, "PNG")
    return path.read_bytes()


def thumbnail_loaded(locator: Any) -> int:
    """Wait for an <img> to decode; its natural width (a broken image raises)."""
    return int(locator.evaluate("img => img.decode().then(() => img.naturalWidth)"))


def test_files_between_two_engines(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    png_path = tmp_path / "Stage plot.png"
    png = make_png(png_path)
    with serve(tmp_path / "a", tmp_path / "a.log", ["--name", "Alex", *LINK]) as url_a, \
            serve(tmp_path / "b", tmp_path / "b.log", ["--name", "Jordan", *LINK]) as url_b:
        a, b = Engine(url_a), Engine(url_b)
        ws = a.ok("GET", "/workspace/current")["id"]
        port = a.ok("GET", "/sync/status")["port"]
        b.ok("POST", "/workspace/join", {"id": ws, "host": "127.0.0.1", "port": port})

        with chromium() as browser:
            errors: list[str] = []
            page_a = open_page(browser, url_a, errors)
            # a standing listener keeps file-chooser interception on between the pickers
            # (without one, Playwright re-enables it per expect_file_chooser, racing the click)
            page_a.on("filechooser", lambda chooser: None)
            # B's event stream passes through a route that can hold `blob_available` back
            page_b = browser.new_context(viewport={"width": 1280, "height": 760}).new_page()
            page_b.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page_b.on("console", lambda m: errors.append(f"console: {m.text}")
                      if m.type == "error" else None)
            held: list[str] = []
            hold = {"on": True}
            sockets: list[Any] = []

            def through(ws_route: Any) -> None:
                server = ws_route.connect_to_server()
                sockets.append(ws_route)

                def to_page(message: str | bytes) -> None:
                    ev = json.loads(message)
                    if hold["on"] and ev.get("type") == "blob_available":
                        held.append(str(message))
                    else:
                        ws_route.send(message)
                server.on_message(to_page)

            page_b.route_web_socket(re.compile(r"/events"), through)
            page_b.goto(url_b)
            for page in (page_a, page_b):
                expect(page.locator("#sync-status")).to_have_text("Connected · 1 peer",
                                                                   timeout=30_000)
            assert len(sockets) == 1

            # A: a table with a File field, made in the New table dialog
            page_a.locator("#empty-new-table").click()
            dlg = page_a.get_by_role("dialog", name="New table")
            dlg.get_by_label("Table name").fill("Plots")
            dlg.get_by_role("button", name="Add field").click()
            dlg.get_by_label("Field 2 name").fill("Plot")
            dlg.get_by_label("Field 2 type").select_option(label="File")
            dlg.get_by_role("button", name="Create table").click()
            expect(dlg).to_be_hidden()
            grid = page_a.get_by_role("grid", name="Plots")
            expect(grid.get_by_role("columnheader", name=re.compile("Plot.*File"))).to_be_visible()
            page_a.locator("#add-record-btn").click()
            expect(cell(page_a, 0, "Name")).to_be_focused()
            page_a.keyboard.type("Act 1")
            page_a.keyboard.press("Enter")
            expect(cell(page_a, 0, "Name")).to_have_text("Act 1")
            plot_a = cell(page_a, 0, "Plot")
            expect(plot_a).to_contain_text("Drop a file")

            # the Attach… picker; the upload is held so its progress can be seen
            uploads: list[Any] = []
            page_a.route("**/blobs/upload?*", lambda route: uploads.append(route))
            with page_a.expect_file_chooser() as chooser:
                plot_a.get_by_role("button", name="Attach a file to Plot of Act 1").click()
            chooser.value.set_files(png_path)
            expect(plot_a).to_contain_text("Uploading…")
            expect(plot_a).to_contain_text("Stage plot.png")
            expect(plot_a.get_by_role("progressbar", name="Uploading Stage plot.png")) \
                .to_be_visible()
            page_a.screenshot(path="/tmp/ui-files-uploading.png")
            assert len(uploads) == 1
            request = uploads[0].request
            assert request.headers["content-type"] == "image/png"
            uploads[0].continue_()
            page_a.unroute("**/blobs/upload?*")
            thumb_a = plot_a.locator("img.file-thumb")
            expect(thumb_a).to_be_visible()
            assert 0 < thumbnail_loaded(thumb_a) <= 256
            expect(plot_a).to_contain_text("Stage plot.png")
            expect(page_a.locator("table.grid .pending")).to_have_count(0)
            table = a.ok("GET", "/tables/list")["tables"][0]
            field = {f["label"]: f["name"] for f in table["fields"]}
            recs = a.ok("GET", f"/records/list?table={table['id']}")["records"]
            png_hash = recs[0]["values"][field["Plot"]]
            info = a.ok("GET", f"/blobs/{png_hash}/info")
            assert (info["name"], info["mime"], info["size"]) == ("Stage plot.png", "image/png",
                                                                 len(png))
            assert a.ok("GET", "/workspace/current")["can_undo"] is True
            page_a.screenshot(path="/tmp/ui-files-a.png")

            # B: the record arrives; its file is fetched from A, then shows its thumbnail
            expect(page_b.locator("#table-title")).to_have_text("Plots", timeout=20_000)
            expect(cell(page_b, 0, "Name")).to_have_text("Act 1", timeout=20_000)
            plot_b = cell(page_b, 0, "Plot")
            expect(plot_b).to_contain_text("Downloading from Alex…", timeout=20_000)
            expect(plot_b.locator("img")).to_have_count(0)
            page_b.screenshot(path="/tmp/ui-files-b-downloading.png")
            assert [json.loads(m)["hash"] for m in held] == [png_hash]
            hold["on"] = False
            for message in held:
                sockets[0].send(message)
            thumb_b = plot_b.locator("img.file-thumb")
            expect(thumb_b).to_be_visible()
            assert thumbnail_loaded(thumb_b) > 0
            expect(plot_b).not_to_contain_text("Downloading")
            assert b.ok("GET", f"/blobs/{png_hash}/info")["state"] == "present"

            # B: the preview shows the picture itself
            plot_b.get_by_role("button", name=re.compile("^Open Plot of Act 1: Stage plot")) \
                .click()
            preview = page_b.get_by_role("dialog", name="Stage plot.png")
            picture = preview.get_by_role("img", name="Stage plot.png")
            expect(picture).to_have_attribute("src", f"/blobs/{png_hash}")
            assert thumbnail_loaded(picture) == 320
            expect(preview).to_contain_text("image/png")
            page_b.screenshot(path="/tmp/ui-files-b-preview.png")
            preview.get_by_role("button", name="Close").last.click()
            expect(preview).to_be_hidden()

            # A: a text file dropped on a cell shows an icon and its name
            page_a.locator("#add-record-btn").click()
            expect(cell(page_a, 1, "Name")).to_be_focused()
            page_a.keyboard.type("Rider")
            page_a.keyboard.press("Enter")
            expect(cell(page_a, 1, "Name")).to_have_text("Rider")
            rider_a = cell(page_a, 1, "Plot")
            drag = page_a.evaluate_handle(
                """text => { const dt = new DataTransfer();
                    dt.items.add(new File([text], "rider.txt", {type: "text/plain"}));
                    return dt; }""", RIDER)
            rider_a.dispatch_event("dragover", {"dataTransfer": drag})
            expect(rider_a).to_have_class(re.compile(r"\bdrop-over\b"))
            rider_a.dispatch_event("drop", {"dataTransfer": drag})
            expect(rider_a).not_to_have_class(re.compile(r"\bdrop-over\b"))
            opener = rider_a.get_by_role("button", name="Open Plot of Rider: rider.txt")
            expect(opener).to_be_visible()
            expect(opener.locator(".file-icon")).to_be_visible()
            expect(rider_a.locator("img")).to_have_count(0)
            expect(page_a.locator("table.grid .pending")).to_have_count(0)
            recs = a.ok("GET", f"/records/list?table={table['id']}")["records"]
            rider_hash = recs[1]["values"][field["Plot"]]
            assert a.ok("GET", f"/blobs/{rider_hash}/info")["mime"] == "text/plain"
            opener.click()
            preview_a = page_a.get_by_role("dialog", name="rider.txt")
            expect(preview_a).to_contain_text("text/plain")
            expect(preview_a).to_contain_text(f"{len(RIDER)} bytes")
            download = preview_a.get_by_role("link", name="Download")
            expect(download).to_have_attribute("href", f"/blobs/{rider_hash}?download=1")
            page_a.screenshot(path="/tmp/ui-files-a-rider.png")
            preview_a.get_by_role("button", name="Close").last.click()

            # B: with A unreachable, the text file is "Not on this device yet"
            expect(cell(page_b, 1, "Plot")).to_contain_text("rider.txt", timeout=20_000)
            b.ok("DELETE", "/sync/peers", {"host": "127.0.0.1", "port": port})
            expect(page_b.locator("#sync-status")).to_have_text(
                "Offline — all changes saved locally", timeout=20_000)
            cell(page_b, 1, "Plot").get_by_role("button", name=re.compile("rider.txt")).click()
            preview_b = page_b.get_by_role("dialog", name="rider.txt")
            expect(preview_b).to_contain_text("Not on this device yet")
            expect(cell(page_b, 1, "Plot")).to_contain_text("Not on this device yet")
            page_b.screenshot(path="/tmp/ui-files-b-missing.png")
            # A is back: the engine fetches it by itself and the preview offers the download
            b.ok("POST", "/sync/peers", {"host": "127.0.0.1", "port": port})
            download_b = preview_b.get_by_role("link", name="Download")
            expect(page_b.locator("#sync-status")).to_have_text("Connected · 1 peer",
                                                                 timeout=30_000)
            expect(download_b).to_be_visible(timeout=30_000)
            expect(cell(page_b, 1, "Plot")).not_to_contain_text("Not on this device")
            got = page_b.request.get(urljoin(url_b, download_b.get_attribute("href") or ""))
            assert got.status == 200 and got.body() == RIDER.encode()
            assert "attachment" in got.headers["content-disposition"]
            preview_b.get_by_role("button", name="Close").last.click()

            # a refused upload is explained in the cell, and nothing is attached
            page_a.route("**/blobs/upload?*", lambda route: route.fulfill(
                status=413, content_type="application/json", body=json.dumps({"error": {
                    "code": "blob_too_large", "message": "a file may be at most 2147483648 "
                    "bytes", "details": {"limit": 2147483648, "size": 3000000000}}})))
            page_a.locator("#add-record-btn").click()
            expect(cell(page_a, 2, "Name")).to_be_focused()
            page_a.keyboard.press("ArrowRight")
            big = cell(page_a, 2, "Plot")
            expect(big).to_be_focused()
            with page_a.expect_file_chooser() as chooser:
                page_a.keyboard.press("Enter")  # Enter on an empty file cell picks a file
            chooser.value.set_files(files=[{"name": "show.mov", "mimeType": "video/quicktime",
                                            "buffer": b"not really a film"}])
            expect(big.locator(".cell-error-msg")).to_have_text(
                "Not saved: “show.mov” is too large to attach (at most 2.1 GB).")
            expect(big).to_contain_text("Drop a file")
            page_a.screenshot(path="/tmp/ui-files-refused.png")
            page_a.unroute("**/blobs/upload?*")

            # attaching is one undo step: undo the new record, then the attachment
            undo = page_a.locator("#undo-btn")
            undo.click()
            expect(page_a.locator("table.grid tbody tr")).to_have_count(2)
            undo.click()
            expect(cell(page_a, 1, "Plot")).to_contain_text("Drop a file")
            expect(cell(page_a, 1, "Name")).to_have_text("Rider")
            expect(cell(page_b, 1, "Plot")).to_contain_text("Drop a file", timeout=20_000)
            unexpected = [e for e in errors if not re.search(r"Failed to load resource.* 413", e)]
            assert not unexpected, unexpected
