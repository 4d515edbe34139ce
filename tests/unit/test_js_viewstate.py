"""Runs the browser UI's pure-JS unit tests (tests/js/*.test.mjs, e.g. web/viewstate.js) under
Node's built-in test runner. Node is required: a missing `node` fails, it never skips."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_js_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install Node.js 20.19+ (apt-get install nodejs); the "
                    "UI's JavaScript unit tests in tests/js/ need it")
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "js").glob("*.test.mjs"))
    assert files, "no JavaScript tests found in tests/js/"
    proc = subprocess.run([node, "--test", *files], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout
