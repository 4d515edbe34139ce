"""Scripts across peers (spec 04 §7, scenarios §8.17 and §8.19, harness of 03 §9): a script
run's committed overlay travels as one `script` bundle carrying `meta.script`; on-change
triggers are this user's, and fire only on local canonical commits, never on synced ops.

The script host is a real subprocess, so these tests use trio's real clock (no autojump);
every wait is an awaited event or a sync wait, bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.network import TestNetwork
from tests.harness.peer import Peer

TOML = '''manifest_version = 1
[module]
id = "sc"
version = "1.0.0"
name = "Script checks"

[tables.Calls.fields]
label = { type = "text", required = true }
flag = { type = "boolean" }
status = { type = "text" }

[scripts.gen]
file = "scripts/gen.lua"
args = { count = "integer" }

[scripts.flagged]
file = "scripts/flagged.lua"
trigger = "on_change"
watch = { table = "sc.Calls", fields = ["flag"] }
writes = ["sc.Calls.status"]
'''
GEN = '''for i = 1, args.count do
  core.create_entity("sc.Calls", { label = "call " .. i, flag = false })
end
'''
FLAGGED = '''for _, c in ipairs(core.context().changes) do
  core.set_field(c.entity_id, "sc.Calls", "status", c.new and "flagged" or "clear")
end
'''


@pytest.fixture
def package(tmp_path: Path) -> Path:
    pkg = tmp_path / "sc-pkg"
    (pkg / "scripts").mkdir(parents=True)
    (pkg / "module.toml").write_text(TOML)
    (pkg / "scripts" / "gen.lua").write_text(GEN)
    (pkg / "scripts" / "flagged.lua").write_text(FLAGGED)
    return pkg


async def _two_peers(network: TestNetwork, package: Path) -> tuple[Peer, Peer]:
    """a adopts sc; both have it installed; linked and in sync."""
    a = await network.add_peer("a")
    b = await network.add_peer("b")
    for p in (a, b):
        await p.install_module(package)
    await a.adopt_module("sc")
    await network.connect(a, b)
    await network.wait_for_sync()
    await b.settled()
    return a, b


def _runs(p: Peer) -> list[str]:
    """The scripts of this peer's runs so far (queued ones included)."""
    runner = p.node.current.scripts
    assert runner is not None
    return [r.info.id for r in runner.runs.values()]


async def test_committed_run_syncs_as_one_script_bundle(network: TestNetwork,
                                                        package: Path) -> None:
    a, b = await _two_peers(network, package)
    assert {s["id"] for s in await b.list_scripts()} == {"sc.gen", "sc.flagged"}
    async with a.events() as events:
        r = await a.run_script("sc.gen", {"count": 4})
        ev = await a.script_ended(events, r["run_id"])
    assert ev["type"] == "script_completed", ev
    # staged on a only: overlays are local
    assert await b.list_records("sc.Calls") == []
    assert await b.list_overlays() == []
    committed = await a.commit_overlay(ev["overlay_id"])
    await network.wait_for_sync()
    await b.settled()
    await network.assert_converged()
    assert await b.state_hash() == await a.state_hash()
    rows = (await b.get("/records/list", table="sc.Calls"))["records"]
    assert sorted(x["values"]["label"] for x in rows) == [
        f"call {i}" for i in range(1, 5)]
    [bundle] = [x for x in await b.bundles() if x["kind"] == "script"]
    assert bundle["bundle_id"] == committed["bundle_id"]
    assert bundle["actor"] == a.actor_id
    assert bundle["meta"]["script"] == {"source": "module", "id": "sc.gen",
                                        "version": "1.0.0", "run_id": r["run_id"],
                                        "trigger": "manual"}
    assert _runs(b) == []


async def test_on_change_triggers_are_per_user_and_never_fire_on_synced_ops(
        network: TestNetwork, package: Path) -> None:
    a, b = await _two_peers(network, package)
    call = await a.create_record("sc.Calls", {"label": "Focus", "flag": False})
    await a.set_script_trigger("sc.flagged", True)
    assert {s["id"]: s.get("trigger_enabled") for s in await b.list_scripts()}[
        "sc.flagged"] is False
    async with a.events() as events:
        await a.update_record(call, "sc.Calls", {"flag": True})
        ev = await a.script_ended(events)
    assert ev["type"] == "script_completed" and ev["script"] == "sc.flagged", ev
    await network.wait_for_sync()
    await network.assert_converged()  # writer calls on b: its fired listeners have run
    assert _runs(b) == []  # b has not switched the trigger on
    # switched on at b, a's edits arriving by sync still fire nothing there
    await b.set_script_trigger("sc.flagged", True)
    await a.update_record(call, "sc.Calls", {"flag": False})
    await network.wait_for_sync()
    await network.assert_converged()
    assert _runs(b) == []
    assert _runs(a) == ["sc.flagged", "sc.flagged"]
    # ... while b's own edit does
    async with b.events() as events:
        await b.update_record(call, "sc.Calls", {"flag": True})
        ev = await b.script_ended(events)
    assert ev["type"] == "script_completed" and ev["script"] == "sc.flagged", ev
    assert _runs(b) == ["sc.flagged"]
    # b commits its run: a gets the status but runs nothing (its trigger watches flag only,
    # and synced ops never fire)
    await b.commit_overlay(ev["overlay_id"])
    await network.wait_for_sync()
    await network.assert_converged()
    assert (await a.get_record(call))["values"]["status"] == "flagged"
    assert _runs(a) == ["sc.flagged", "sc.flagged"]
