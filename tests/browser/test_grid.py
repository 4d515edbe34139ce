"""Browser test: Playwright drives Debian's Chromium against a real `openprod serve` process.

One journey through the first slice of the UI (spec 05 J5, J6, J13): create a table with typed
fields in the New table dialog, add records and type values with the keyboard, edit a cell and
watch a second browser context receive the change live, undo it everywhere, see a rejected value
revert with an inline error, delete a selected row, and see the message for a missing token.
Screenshots land in /tmp/ui-*.png.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import isolated_sync

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
URL_LINE = re.compile(rb"openprod is running \xe2\x80\x94 open (http://\S+)")
START_TIMEOUT_S = 30


def _read_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Read the engine's stdout until it prints its URL (bounded by START_TIMEOUT_S)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(timeout=left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            m = URL_LINE.search(buf)
            if m:
                return m.group(1).decode()
    finally:
        sel.close()
    raise AssertionError(f"openprod serve did not print its URL; stdout={buf!r}; "
                         f"log={log.read_text(errors='replace')[-2000:]}")


@contextmanager
def serve(data: Path, log: Path, extra: Sequence[str] = ()) -> Iterator[str]:
    """A real `openprod serve` on a free port; yields its URL with the token; SIGTERM at the end
    must exit 0."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "serve", "--port", "0", "--data", str(data),
             *isolated_sync(extra), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=err, bufsize=0,
        )
        try:
            yield _read_url(proc, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            if proc.stdout is not None:
                proc.stdout.close()
    assert proc.returncode == 0, log.read_text(errors="replace")[-2000:]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[str]:
    with serve(tmp_path / "data", tmp_path / "engine.log", ["--name", "Alex"]) as url:
        yield url


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright; a missing browser fails the test (never skips)."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: install Debian's `chromium` package "
                    "(apt-get install chromium); the browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() gives every run a fresh temporary profile (user data dir)
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def cell(page: Any, row: int, label: str) -> Any:
    return page.locator("table.grid tbody tr").nth(row).locator(f'td[data-label="{label}"]')


def open_page(browser: Any, url: str, errors: list[str], *, height: int = 760,
              bypass_csp: bool = False) -> Any:
    """A fresh context on `url`; page errors and console errors are collected in `errors`."""
    ctx = browser.new_context(viewport={"width": 1280, "height": height}, bypass_csp=bypass_csp)
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error"
            else None)
    page.goto(url)
    return page


def test_grid_journey(engine: str) -> None:
    with chromium() as browser:
        grid_journey(browser, engine)


def grid_journey(browser: Any, engine: str) -> None:
    from playwright.sync_api import expect

    errors: list[str] = []
    page = open_page(browser, engine, errors)
    expect(page.locator("#conn")).to_have_text("Live")
    expect(page.get_by_role("heading", name="No tables yet")).to_be_visible()
    expect(page.get_by_role("button", name="Undo")).to_be_disabled()
    page.screenshot(path="/tmp/ui-empty.png")

    # New table: a text, an integer, a decimal number and a Yes/No field
    page.locator("#new-table-btn").click()
    dlg = page.get_by_role("dialog", name="New table")
    dlg.get_by_label("Table name").fill("Cast")
    expect(dlg.get_by_label("Field 1 name")).to_have_value("Name")
    for n, (label, kind) in enumerate([("Age", "Integer"), ("Height", "Number (decimal)"),
                                       ("Confirmed", "Yes/No")], start=2):
        dlg.get_by_role("button", name="Add field").click()
        dlg.get_by_label(f"Field {n} name").fill(label)
        dlg.get_by_label(f"Field {n} type").select_option(label=kind)
    page.screenshot(path="/tmp/ui-new-table.png")
    dlg.get_by_role("button", name="Create table").click()
    expect(dlg).to_be_hidden()
    expect(page.locator("#table-title")).to_have_text("Cast")
    expect(page.get_by_role("navigation").get_by_role("button", name="Cast")).to_have_attribute(
        "aria-current", "page")
    grid = page.get_by_role("grid", name="Cast")
    for label in ("Name", "Age", "Height", "Confirmed"):
        expect(grid.get_by_role("columnheader", name=re.compile(label))).to_be_visible()

    # three records, added with the button and Ctrl+Enter, values typed with the keyboard
    rows = page.locator("table.grid tbody tr")
    data = [("Alice", "34", "1.68", True), ("Bob", "41", "1.8", False),
            ("Chiara", "29", "1.72", True)]
    for i, (name, age, height, confirmed) in enumerate(data):
        if i == 0:
            page.locator("#add-record-btn").click()
        else:
            page.keyboard.press("Control+Enter")
        expect(rows).to_have_count(i + 1)
        expect(cell(page, i, "Name")).to_be_focused()
        page.keyboard.type(name)
        page.keyboard.press("Tab")
        page.keyboard.type(age)
        page.keyboard.press("Tab")
        page.keyboard.type(height)
        page.keyboard.press("Tab")
        expect(cell(page, i, "Confirmed")).to_be_focused()
        if confirmed:
            page.keyboard.press("Space")
    for i, (name, age, height, confirmed) in enumerate(data):
        expect(cell(page, i, "Name")).to_have_text(name)
        expect(cell(page, i, "Age")).to_have_text(age)
        expect(cell(page, i, "Height")).to_have_text(height)
        box = cell(page, i, "Confirmed").get_by_role("checkbox")
        expect(box).to_be_checked() if confirmed else expect(box).not_to_be_checked()
    expect(page.locator("#record-count")).to_have_text("3 records")
    expect(page.locator("table.grid .pending")).to_have_count(0)
    page.screenshot(path="/tmp/ui-main.png")

    # a second browser context sees the same data, then an edit live without reloading
    page2 = open_page(browser, engine, errors)
    expect(page2.locator("#table-title")).to_have_text("Cast")
    expect(cell(page2, 0, "Name")).to_have_text("Alice")
    expect(page2.locator("#conn")).to_have_text("Live")

    cell(page, 0, "Name").dblclick()
    editor = page.get_by_role("textbox", name="Name, editing")
    expect(editor).to_be_focused()
    editor.fill("Alicia")
    editor.press("Enter")
    expect(cell(page, 1, "Name")).to_be_focused()  # Enter commits and moves down
    expect(cell(page, 0, "Name")).to_have_text("Alicia")
    expect(cell(page2, 0, "Name")).to_have_text("Alicia")
    page2.screenshot(path="/tmp/ui-live.png")

    # J13: the Undo button's tooltip names the step
    expect(page.get_by_role("button", name="Undo")).to_have_attribute(
        "title", re.compile(r"^Undo: set Alicia · Name \(Ctrl\+Z\)$"))
    # undo with the keyboard on page 1: both pages show the old value; redo from page 2's button
    page.keyboard.press("Control+z")
    expect(cell(page, 0, "Name")).to_have_text("Alice")
    expect(cell(page2, 0, "Name")).to_have_text("Alice")
    redo2 = page2.get_by_role("button", name="Redo")
    expect(redo2).to_be_enabled()
    expect(page.get_by_role("button", name="Redo")).to_have_attribute(
        "title", re.compile(r"^Redo: set Alice · Name "))
    redo2.click()
    expect(cell(page, 0, "Name")).to_have_text("Alicia")
    expect(cell(page2, 0, "Name")).to_have_text("Alicia")
    page.get_by_role("button", name="Undo").click()
    expect(cell(page, 0, "Name")).to_have_text("Alice")
    expect(cell(page2, 0, "Name")).to_have_text("Alice")

    # a value the engine rejects reverts, with the engine's message shown inline
    age = cell(page, 1, "Age")
    age.click()
    page.keyboard.type("abc")
    page.keyboard.press("Enter")
    expect(age.locator(".cell-error-msg")).to_contain_text("expected an integer")
    expect(age.locator(".cell-error-msg")).to_be_visible()
    expect(age.get_by_role("img", name="Error")).to_be_visible()
    expect(age.locator(".cell-value")).to_have_text("41")
    expect(cell(page2, 1, "Age")).to_have_text("41")
    page.screenshot(path="/tmp/ui-error.png")

    # an undo the engine skips (another user changed the data since) is explained in a toast;
    # one engine cannot produce that alone, so page 2 gets the engine's answer from a stub
    bob = rows.nth(1).get_attribute("data-id")
    skipped = {"status": "skipped", "bundle_id": None, "edges_not_restored": [],
               "skipped": [{"entity_id": bob, "field": age.get_attribute("data-field"),
                            "label": "Age", "actor": "ab" * 32}],
               "can_undo": True, "can_redo": False, "seq": 1}
    page2.route("**/undo", lambda route: route.fulfill(json=skipped))
    page2.get_by_role("button", name="Undo").click()
    expect(page2.locator(".toast")).to_contain_text(
        "Can't undo — another user (abababab) changed Bob · Age after you")
    page2.unroute("**/undo")

    # select a row and delete it (after confirming): gone on both pages
    rows.nth(2).get_by_role("checkbox", name=re.compile("Select record")).check()
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete selected (1)").click()
    expect(rows).to_have_count(2)
    expect(page2.locator("table.grid tbody tr")).to_have_count(2)
    expect(page.locator(".toast")).to_contain_text("Record deleted")

    # without the token the page says what to do
    page3 = open_page(browser, engine.split("?")[0], errors)
    expect(page3.get_by_text("Open the link printed by")).to_be_visible()
    page3.screenshot(path="/tmp/ui-unauthorized.png")

    # the refused edit (400) and the page without a token (401) log failed loads; nothing else
    unexpected = [e for e in errors if not re.search(r"Failed to load resource.* (400|401)", e)]
    assert not unexpected, unexpected
