"""web/index.html preloads every ES module app.js reaches, so the browser fetches them at once
instead of one import level after another (first paint, bench/ui.py)."""

from __future__ import annotations

import re
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "web"


def test_index_preloads_every_module_app_js_imports() -> None:
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += re.findall(r'from "\./([\w.]+)"', (WEB / f).read_text())
    html = (WEB / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/([\w.]+)">', html))
    assert preloaded == seen - {"app.js"}
    assert all((WEB / m).is_file() for m in preloaded)
