"""Every ```python block in docs/*.md runs as written (paths under /tmp/ go to a temp dir)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).parents[2] / "docs").glob("*.md"))
BLOCKS = [
    pytest.param(block, id=f"{doc.name}#{i}")
    for doc in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S))
]


def test_docs_have_examples() -> None:
    assert BLOCKS, "docs/ should show features with runnable examples"


@pytest.mark.parametrize("block", BLOCKS)
def test_doc_example_runs(block: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = block.replace('"/tmp/', f'"{tmp_path}/')
    exec(compile(code, "doc-example", "exec"), {"__name__": "doc_example"})
