"""Fixtures for actor tests: a home with an identity and a workspace, and a running Session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors.events import EventHub
from actors.home import Home
from actors.node import Session
from openprod.core import ids
from openprod.core.identity import Identity


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


@pytest.fixture
def ident(home: Home) -> Identity:
    return home.identity("Tester")


@pytest.fixture
def ws_id(home: Home, ident: Identity) -> str:
    ws = home.create_workspace(ident, "Test")
    try:
        return ids.to_text(ws.ws)
    finally:
        ws.close()


@pytest.fixture
async def session(home: Home, ident: Identity, ws_id: str) -> AsyncIterator[Session]:
    s = Session(home.workspace_path(ws_id), ident, EventHub())
    async with trio.open_nursery() as n:
        await n.start(s.run)
        yield s
        await s.stop()
