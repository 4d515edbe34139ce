"""The `network` fixture: a TestNetwork in the test's tmp_path (spec 03 §9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.network import TestNetwork


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[TestNetwork]:
    async with TestNetwork.open(tmp_path) as net:
        yield net
