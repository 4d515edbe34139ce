"""The runtime's actors on their own: OplogWriter, StateDeriver, Session/Node supervision, EventHub.

No HTTP here; commands go straight to `writer.call(fn)` and reads to the session's Reader.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.request
from typing import Any

import pytest
import trio
import trio.testing

from actors import events as eventsmod
from actors.events import EventHub
from actors.home import Home
from actors.node import Node, Session
from actors.oplog_writer import ShuttingDown
from openprod.core import ids
from openprod.core.errors import NotFound, ValidationError
from openprod.core.identity import Identity
from openprod.engine.workspace import Workspace


def _table(ws: Workspace) -> Any:
    return ws.create_table("Cues", [{"label": "Name"}, {"label": "Dur", "type": "float"}])


async def _with_table(s: Session) -> str:
    r = await s.writer.call(_table)
    assert r.facet is not None
    return str(r.facet)


# --- OplogWriter -------------------------------------------------------------------------------

async def test_writer_serialises_concurrent_commands(session: Session) -> None:
    table = await _with_table(session)
    lock = threading.Lock()
    active = [0]
    overlap: list[int] = []
    order: list[int] = []
    results: dict[int, Any] = {}

    def make(i: int) -> Any:
        def fn(ws: Workspace) -> Any:
            with lock:
                active[0] += 1
                overlap.append(active[0])
            try:
                r = ws.create_record(table, {"Name": f"r{i}", "Dur": float(i)})
                order.append(i)
                return r
            finally:
                with lock:
                    active[0] -= 1
        return fn

    async def one(i: int) -> None:
        results[i] = await session.writer.call(make(i))

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(one, i)

    assert sorted(results) == list(range(20))
    assert max(overlap) == 1, "two commands ran at the same time"
    seqs = [results[i].seq for i in order]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    head = max(seqs)
    await session.deriver.wait_applied(head)
    rows = await session.reader.read(lambda v: v.records(v.table(table)))
    names = sorted(r["values"][next(iter(r["values"]))] for r in rows)
    assert names == sorted(f"r{i}" for i in range(20)), "a write was lost"
    assert {r["id"] for r in rows} == {ids.to_text(results[i].id) for i in range(20)}


async def test_read_your_writes(session: Session) -> None:
    table = await _with_table(session)
    r = await session.writer.call(lambda ws: ws.create_record(table, {"Name": "one"}))
    u = await session.writer.call(lambda ws: ws.update_record(r.id, {"Name": "two"}))
    assert u.seq > r.seq
    await session.deriver.wait_applied(u.seq)
    assert session.deriver.applied >= u.seq
    rec = await session.reader.read(lambda v: v.get_record(r.id))
    assert "two" in rec["values"].values()


async def test_command_sees_previous_command_writes(session: Session) -> None:
    """The writer waits for the projection before each command: validation reads its own writes."""
    table = await _with_table(session)
    r = await session.writer.call(lambda ws: ws.create_record(table, {"Name": "a"}))
    # deleting and then editing the same record in back-to-back commands: the second must see
    # the deletion (it is refused), not the stale pre-delete state
    await session.writer.call(lambda ws: ws.delete_records([r.id]))
    with pytest.raises(ValidationError) as exc:
        await session.writer.call(lambda ws: ws.update_record(r.id, {"Name": "b"}))
    assert exc.value.code == "entity_deleted"


async def test_domain_error_is_replied_and_writer_keeps_serving(session: Session) -> None:
    head = session.writer.appended
    with pytest.raises(NotFound):
        await session.writer.call(lambda ws: ws.create_record("no such table", {}))

    def bug(ws: Workspace) -> None:
        raise RuntimeError("a bug in a command")

    with pytest.raises(RuntimeError, match="a bug in a command"):
        await session.writer.call(bug)
    assert session.writer.appended == head, "a refused command wrote something"
    table = await _with_table(session)
    r = await session.writer.call(lambda ws: ws.create_record(table, {"Name": "ok"}))
    assert r.seq > head


async def test_closed_writer_refuses_new_commands(session: Session) -> None:
    table = await _with_table(session)
    session.writer.close()
    with pytest.raises(ShuttingDown) as exc:
        await session.writer.call(lambda ws: ws.create_record(table, {}))
    assert exc.value.code == "shutting_down"


async def test_stop_finishes_inflight_command_and_refuses_queued_ones(session: Session) -> None:
    table = await _with_table(session)
    entered = trio.Event()
    release = threading.Event()

    def slow(ws: Workspace) -> Any:
        trio.from_thread.run_sync(entered.set)
        release.wait(10)
        return ws.create_record(table, {"Name": "in flight"})

    outcomes: dict[str, Any] = {}

    async def call(name: str, fn: Any) -> None:
        try:
            outcomes[name] = await session.writer.call(fn)
        except ShuttingDown as exc:
            outcomes[name] = exc

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(call, "inflight", slow)
            await entered.wait()
            for i in range(3):
                n.start_soon(call, f"queued{i}",
                             lambda ws: ws.create_record(table, {"Name": "queued"}))
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(session.stop)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        await session.done.wait()

    assert not isinstance(outcomes["inflight"], Exception)
    assert outcomes["inflight"].seq > 0
    for i in range(3):
        assert isinstance(outcomes[f"queued{i}"], ShuttingDown), outcomes
    # the in-flight command was committed: it is in the oplog after a reopen
    ws = Workspace.open(session.path, session.ws.ident)
    try:
        names = [next(iter(r["values"].values())) for r in ws.list_records(table)]
    finally:
        ws.close()
    assert names == ["in flight"]


# --- supervision -------------------------------------------------------------------------------

async def test_failing_deriver_brings_the_node_down(home: Home, ident: Identity, ws_id: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(home, ident, home.new_token())

    def boom() -> Any:
        raise RuntimeError("projection exploded")

    session: Session | None = None
    with trio.fail_after(20):
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="projection exploded"),
                                flatten_subgroups=True):
            async with trio.open_nursery() as n:
                node.attach(n)
                session = await node.open_workspace(ws_id)
                monkeypatch.setattr(session.deriver, "_catch_up", boom)
                r = await session.writer.call(_table)
                # never satisfied: the deriver died; the crash must cancel this wait, not hang
                await session.deriver.wait_applied(r.seq)
    assert session is not None
    assert session.done.is_set(), "the session did not close its databases"
    with pytest.raises(ShuttingDown):
        await session.writer.call(_table)


async def test_failing_writer_brings_the_session_down(home: Home, ident: Identity, ws_id: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = Session(home.workspace_path(ws_id), ident, EventHub())

    def head_fails() -> int:
        raise OSError("disk on fire")

    with trio.fail_after(20):
        with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="disk on fire"),
                                flatten_subgroups=True):
            async with trio.open_nursery() as n:
                await n.start(s.run)
                monkeypatch.setattr(s.ws.storage, "head_seq", head_fails)
                await s.writer.call(_table)
    assert s.done.is_set()


async def test_open_workspace_replaces_the_session(home: Home, ident: Identity,
                                                   ws_id: str) -> None:
    node = Node(home, ident, home.new_token())
    other = home.create_workspace(ident, "Other")
    other_id = ids.to_text(other.ws)
    other.close()
    sub, _ = node.hub.subscribe()
    async with trio.open_nursery() as n:
        node.attach(n)
        first = await node.open_workspace(ws_id)
        second = await node.open_workspace(other_id)
        assert node.current is second
        assert first.done.is_set()
        with pytest.raises(ShuttingDown):
            await first.writer.call(_table)
        assert (await second.writer.call(_table)).seq > 0
        assert home.last() == other_id
        opened = [sub.recv.receive_nowait(), sub.recv.receive_nowait()]
        assert [e["workspace_id"] for e in opened] == [ws_id, other_id]
        assert all(e["type"] == "workspace_opened" for e in opened)
        await second.stop()
        n.cancel_scope.cancel()


async def test_graceful_shutdown_answers_the_inflight_command(
        home: Home, ident: Identity, ws_id: str) -> None:
    """node.run on Hypercorn: shutdown during a command still answers it, then everything ends."""
    node = Node(home, ident, home.new_token())
    entered = trio.Event()
    release = threading.Event()
    answer: dict[str, Any] = {}

    def post() -> None:
        req = urllib.request.Request(node.url + "/tables/create", b'{"label": "Cues"}',
                                     {"Authorization": f"Bearer {node.token}"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            answer["status"], answer["body"] = resp.status, json.loads(resp.read())

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            await n.start(node.run, ws_id, "127.0.0.1", 0)
            assert node.url.startswith("http://127.0.0.1:") and node.port > 0
            ws = node.current.ws
            create_table = ws.create_table

            def slow(*args: Any, **kw: Any) -> Any:
                trio.from_thread.run_sync(entered.set)
                release.wait(20)
                return create_table(*args, **kw)

            ws.create_table = slow  # type: ignore[method-assign]
            n.start_soon(trio.to_thread.run_sync, post)
            await entered.wait()
            session = node.current
            node.shutdown.set()
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert answer["status"] == 200 and answer["body"]["seq"] > 0
    assert session.done.is_set()
    ws2 = Workspace.open(session.path, ident)
    try:
        assert [t["label"] for t in ws2.list_tables()] == ["Cues"]
    finally:
        ws2.close()


async def test_node_without_session_refuses(home: Home, ident: Identity) -> None:
    node = Node(home, ident, "t")
    with pytest.raises(ShuttingDown):
        _ = node.current
    assert node.info() == {"workspace_id": None, "url": ""}


# --- StateDeriver events ------------------------------------------------------------------------

async def test_deriver_publishes_what_changed(session: Session) -> None:
    sub, _ = session.deriver.hub.subscribe()
    r = await session.writer.call(_table)
    await session.deriver.wait_applied(r.seq)
    ev = sub.recv.receive_nowait()
    assert ev["type"] == "tables_changed"
    assert ev["seq"] == r.seq
    table = str(r.facet)
    a = await session.writer.call(lambda ws: ws.create_record(table, {"Name": "a"}))
    await session.deriver.wait_applied(a.seq)
    ev = sub.recv.receive_nowait()
    assert ev == {"type": "records_changed", "table": table, "entity_ids": [ids.to_text(a.id)],
                  "seq": a.seq, "event_id": ev["event_id"]}
    b = await session.writer.call(lambda ws: ws.create_record(table, {"Name": "b"}))
    u = await session.writer.call(
        lambda ws: ws.update_records([(a.id, {"Name": "A"}, None), (b.id, {"Name": "B"}, None)]))
    await session.deriver.wait_applied(u.seq)
    evs = []
    with pytest.raises(trio.WouldBlock):
        while True:
            evs.append(sub.recv.receive_nowait())
    changed = {e for ev in evs for e in ev["entity_ids"]}
    assert changed == {ids.to_text(a.id), ids.to_text(b.id)}
    assert evs[-1]["seq"] == u.seq
    assert all(e["table"] == table for e in evs)


# --- EventHub ------------------------------------------------------------------------------------

async def test_hub_publish_and_subscribe(autojump_clock: trio.testing.MockClock) -> None:
    hub = EventHub()
    base = hub.last_id
    early, backlog = hub.subscribe()
    assert backlog == []
    hub.publish({"type": "a"})
    late, backlog = hub.subscribe()
    assert backlog == []
    hub.publish({"type": "b"})
    assert [early.recv.receive_nowait()["type"] for _ in range(2)] == ["a", "b"]
    assert late.recv.receive_nowait() == {"type": "b", "event_id": base + 2}
    assert hub.last_id == base + 2
    assert hub.subscribers == 2
    late.close()
    assert hub.subscribers == 1
    hub.publish({"type": "c"})  # a closed subscriber does not break publishing
    assert early.recv.receive_nowait()["event_id"] == base + 3


async def test_hub_backlog_since(autojump_clock: trio.testing.MockClock) -> None:
    hub = EventHub()
    base = hub.last_id
    for i in range(10):
        hub.publish({"type": "x", "i": i})
    _, backlog = hub.subscribe(since=base + 7)
    assert [e["event_id"] - base for e in backlog] == [8, 9, 10]
    assert [e["i"] for e in backlog] == [7, 8, 9]
    _, backlog = hub.subscribe(since=base)
    assert [e["event_id"] - base for e in backlog] == list(range(1, 11))
    _, backlog = hub.subscribe(since=base + 10)
    assert backlog == []
    _, backlog = hub.subscribe(since=base + 99)  # ahead of this hub: nothing to replay
    assert backlog == []


class _WallClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def time_ns(self) -> int:
        return self.ns


async def test_hub_event_ids_go_on_across_launches(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """A client's `since` from an earlier launch must get resync, not this launch's events."""
    wall = _WallClock(1_700_000_000 * 10**9)
    monkeypatch.setattr(eventsmod, "time", wall)
    before = EventHub()
    for _ in range(1000):
        before.publish({"type": "x"})
    seen = before.last_id
    wall.ns += 10**9  # the engine restarted a second later
    after = EventHub()
    assert after.last_id > seen
    after.publish({"type": "y"})
    _, backlog = after.subscribe(since=seen)
    assert backlog == [{"type": "resync", "event_id": after.last_id}]
    fresh = EventHub()
    _, backlog = fresh.subscribe(since=seen)  # even before the first event
    assert backlog == [{"type": "resync", "event_id": fresh.last_id}]


async def test_hub_too_old_since_means_resync(monkeypatch: pytest.MonkeyPatch,
                                              autojump_clock: trio.testing.MockClock) -> None:
    monkeypatch.setattr(eventsmod, "BUFFER", 16)
    hub = EventHub()
    base = hub.last_id
    for _ in range(40):
        hub.publish({"type": "x"})
    _, backlog = hub.subscribe(since=base + 3)
    assert backlog == [{"type": "resync", "event_id": base + 40}]
    _, backlog = hub.subscribe(since=base + 24)  # the oldest held is 25: still complete
    assert [e["event_id"] - base for e in backlog] == list(range(25, 41))
    _, backlog = hub.subscribe(since=base + 23)  # 24 is gone
    assert backlog == [{"type": "resync", "event_id": base + 40}]


async def test_hub_drops_slow_subscriber(monkeypatch: pytest.MonkeyPatch,
                                         autojump_clock: trio.testing.MockClock) -> None:
    hub = EventHub()
    slow, _ = hub.subscribe()
    fast, _ = hub.subscribe()
    n = eventsmod.SUBSCRIBER_QUEUE + 5
    got = []
    for i in range(n):
        hub.publish({"type": "x", "i": i})
        got.append((await fast.recv.receive())["i"])
    assert got == list(range(n))
    assert slow.overflowed
    assert not fast.overflowed
    assert hub.subscribers == 1
    # the slow one still gets what was queued, then its stream ends (the API then sends resync)
    queued = [e async for e in slow.recv]
    assert [e["i"] for e in queued] == list(range(eventsmod.SUBSCRIBER_QUEUE))
