"""ConflictManager and OverlayManager as actors of a Session (no HTTP).

Concurrent writes come from a second replica with its own identity whose bundles are ingested
through the session's writer, as a sync peer's would be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from actors.events import EventHub, Subscription
from actors.home import Home
from actors.node import Node, Session
from actors.oplog_writer import ShuttingDown
from openprod.core import ids
from openprod.core.identity import Identity
from openprod.engine.workspace import Workspace


@pytest.fixture
def other(tmp_path: Path, ws_id: str) -> Any:
    ws = Workspace.join(tmp_path / "other", Identity.generate("Other"), ids.from_text(ws_id))
    yield ws
    ws.close()


async def _pull(s: Session, other: Workspace) -> None:
    vc = other.vclock()
    recs = await s.writer.call(lambda ws: ws.ops_since(vc))
    assert not other.ingest(recs).rejected


async def _push(s: Session, other: Workspace) -> int:
    vc = await s.writer.call(lambda ws: ws.vclock())
    recs = other.ops_since(vc)
    report = await s.writer.call(lambda ws: ws.ingest(recs))
    assert not report.rejected
    return report.seq


async def _record(s: Session) -> tuple[str, bytes]:
    r = await s.writer.call(lambda ws: ws.create_table("Cues", [{"label": "Name"}]))
    table = str(r.facet)
    rec = await s.writer.call(lambda ws: ws.create_record(table, {"Name": "orig"}))
    return table, rec.id


async def _concurrent_edit(s: Session, other: Workspace) -> tuple[bytes, int]:
    """Name edited here and (unseen) on the other replica; returns (entity, seq of ingest)."""
    _, e = await _record(s)
    await _pull(s, other)
    await s.writer.call(lambda ws: ws.update_record(e, {"Name": "mine"}))
    other.update_record(e, {"Name": "theirs"})
    return e, await _push(s, other)


async def _next(sub: Subscription, kind: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            ev = await sub.recv.receive()
            if ev["type"] == kind:
                return ev


async def test_conflict_event_after_commit(session: Session, other: Workspace) -> None:
    sub, _ = session.conflicts.hub.subscribe()
    e, seq = await _concurrent_edit(session, other)
    ev = await _next(sub, "conflict_opened")
    assert ev["entity_id"] == ids.to_text(e) and ev["reopened"] is False
    assert ev["seq"] >= seq
    # published after the commit: a fresh reader sees the record at that point
    listed = await session.conflict_reader.read(lambda c: c.list("open"))
    assert [c["conflict_id"] for c in listed] == [ev["conflict_id"]]
    assert session.conflicts.applied >= seq


async def test_read_your_writes_for_conflicts(session: Session, other: Workspace) -> None:
    e, seq = await _concurrent_edit(session, other)
    # the next command sees the conflict without waiting: the writer waits for the manager
    (c,) = await session.writer.call(lambda ws: ws.list_conflicts())
    assert c["entity_id"] == ids.to_text(e)
    assert session.conflicts.applied >= seq
    cid = c["conflict_id"]
    r = await session.writer.call(lambda ws: ws.resolve_conflict(cid, "agreed"))
    await session.conflicts.wait_applied(r.seq)
    assert await session.conflict_reader.read(lambda c: c.count_open()) == 0
    assert (await session.writer.call(lambda ws: ws.get_conflict(cid)))["status"] == "resolved"


async def test_drift_event_after_canonical_change(session: Session) -> None:
    sub, _ = session.conflicts.hub.subscribe()
    _, e = await _record(session)
    oid = await session.writer.call(lambda ws: ws.create_overlay("Plan B"))
    r = await session.writer.call(lambda ws: ws.update_record(e, {"Name": "staged"}))
    assert r.staged
    await session.writer.call(lambda ws: ws.stash_overlay(oid))
    u = await session.writer.call(lambda ws: ws.update_record(e, {"Name": "canon"}))
    ev = await _next(sub, "overlay_drift")
    assert ev["overlay_id"] == ids.to_text(oid) and ev["seq"] >= u.seq
    (f,) = ev["fields"]
    assert (f["entity_id"], f["overlay_value"], f["canonical_value"], f["kind"]) == (
        ids.to_text(e), "staged", "canon", "value")
    with trio.fail_after(10):
        await session.overlays.wait_checked(u.seq)
    drift = await session.writer.call(lambda ws: ws.list_drift(oid))
    assert [d["kind"] for d in drift] == ["value"]


async def test_no_drift_check_without_staged_ops(session: Session,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    call = session.writer.call

    async def spy(fn: Any, label: str = "") -> Any:
        calls.append(label)
        return await call(fn, label)

    monkeypatch.setattr(session.writer, "call", spy)
    _, e = await _record(session)
    u = await session.writer.call(lambda ws: ws.update_record(e, {"Name": "x"}))
    with trio.fail_after(10):
        await session.overlays.wait_checked(u.seq)
    assert "check_drift" not in calls


async def test_failing_conflict_manager_brings_the_node_down(
        home: Home, ident: Identity, ws_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(home, ident, home.new_token())

    def boom() -> Any:
        raise RuntimeError("conflicts exploded")

    session: Session | None = None
    with trio.fail_after(20):
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="conflicts exploded"),
                                flatten_subgroups=True):
            async with trio.open_nursery() as n:
                node.attach(n)
                session = await node.open_workspace(ws_id)
                monkeypatch.setattr(session.conflicts, "_catch_up", boom)
                r = await session.writer.call(
                    lambda ws: ws.create_table("Cues", [{"label": "Name"}]))
                await session.conflicts.wait_applied(r.seq)  # cancelled by the crash
    assert session is not None and session.done.is_set()
    with pytest.raises(ShuttingDown):
        await session.writer.call(lambda ws: ws.list_conflicts())


async def test_session_startup_catches_up_conflicts(home: Home, ident: Identity,
                                                    ws_id: str, tmp_path: Path) -> None:
    """Conflicts already in the oplog are projected before the session serves."""
    path = home.workspace_path(ws_id)
    ws = Workspace.open(path, ident)
    other = Workspace.join(tmp_path / "o2", Identity.generate("O"), ws.ws)
    try:
        t = ws.create_table("Cues", [{"label": "Name"}]).facet
        assert t is not None
        e = ws.create_record(t, {"Name": "a"}).id
        other.ingest(ws.ops_since(other.vclock()))
        ws.update_record(e, {"Name": "b"})
        other.update_record(e, {"Name": "c"})
        ws.ingest(other.ops_since(ws.vclock()))
    finally:
        other.close()
        ws.close()
    s = Session(path, ident, EventHub())
    async with trio.open_nursery() as n:
        await n.start(s.run)
        assert s.conflicts.applied == s.writer.appended
        assert await s.conflict_reader.read(lambda c: c.count_open()) == 1
        await s.stop()


async def test_failing_overlay_manager_brings_the_node_down(
        home: Home, ident: Identity, ws_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(home, ident, home.new_token())

    def boom() -> bool:
        raise RuntimeError("drift check exploded")

    session: Session | None = None
    with trio.fail_after(20):
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="drift check exploded"),
                                flatten_subgroups=True):
            async with trio.open_nursery() as n:
                node.attach(n)
                session = await node.open_workspace(ws_id)
                monkeypatch.setattr(session.overlays, "_staging", boom)
                r = await session.writer.call(
                    lambda ws: ws.create_table("Cues", [{"label": "Name"}]))
                await session.overlays.wait_checked(r.seq)  # cancelled by the crash
    assert session is not None and session.done.is_set()
