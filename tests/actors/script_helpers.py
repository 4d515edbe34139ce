"""Shared by the script runtime tests: install a module made in a temp folder, reach the
node's ScriptRunner, and await the node's events."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from actors.events import Subscription
from actors.script_runner import ScriptRunner
from tests.api.conftest import Api

END = ("script_completed", "script_failed")


async def install_module(api: Api, root: Path, mid: str, toml: str,
                         scripts: Mapping[str, str]) -> None:
    """Write module `mid` (module.toml + scripts/<name>.lua), install and adopt it."""
    pkg = root / mid
    (pkg / "scripts").mkdir(parents=True)
    (pkg / "module.toml").write_text(toml)
    for name, src in scripts.items():
        (pkg / "scripts" / f"{name}.lua").write_text(src)
    await api.ok("POST", "/modules/install", {"path": str(pkg)})
    await api.ok("POST", "/modules/adopt", {"id": mid})


def runner(a: Api) -> ScriptRunner:
    r = a.node.current.scripts
    assert r is not None
    return r


def events(a: Api) -> Subscription:
    """The node's events from now on."""
    sub, _ = a.node.hub.subscribe(None)
    return sub


async def next_event(sub: Subscription, run_id: str | None = None,
                     types: tuple[str, ...] = END, timeout: float = 10) -> dict[str, Any]:
    """The next event of one of `types` (of run `run_id` if given)."""
    with trio.fail_after(timeout):
        while True:
            ev = await sub.recv.receive()
            if ev["type"] in types and (run_id is None or ev.get("run_id") == run_id):
                return ev
