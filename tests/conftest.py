from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import Net

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the long randomized runs (e.g. more sync schedules)")


@pytest.fixture
def runslow(request: pytest.FixtureRequest) -> bool:
    """Whether `--runslow` was given (tests scale their randomized runs up with it)."""
    return bool(request.config.getoption("--runslow"))


@pytest.fixture
def net(tmp_path: Path) -> Net:
    n = Net(tmp_path)
    yield n
    for p in n.peers:
        p.ws.close()


@pytest.fixture(autouse=True)
def _openprod_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENPROD_HOME", str(tmp_path / "home"))
