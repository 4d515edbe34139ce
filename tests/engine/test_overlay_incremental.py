"""What keeps a script's writes into its overlay fast stays exact (spec 02 §2, 04 §7.3):

- `OverlayStore` keeps each overlay's decoded rows and `OverlayState` (with the first-write
  index staging reads its bases from) up to date as rows are appended, and builds them again
  after removals and rewrites: after any sequence of staging, overlay undo/redo, knockouts,
  drift and its resolution, switching and discarding, they equal a state built from the table;
- `deferred()` keeps a running script's rows in memory until the block ends (or something reads
  or changes the table), every read of the store seeing them meanwhile;
- the canonical + overlay state rules evaluate against in an overlay is kept between commands
  and holds every op staged before, and canonical changes;
- the state projection's schema token: `refresh()` and `Views.tables()` reload exactly when the
  schema, slots, redirects or edge types changed, also across connections and rollbacks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.core import ids
from openprod.core.errors import OpenprodError
from openprod.engine import overlays as ovmod
from openprod.engine.state import StateProjection
from openprod.engine.views import Views
from openprod.scripts.session import RunSession, RunSpec
from openprod.storage import db
from tests.helpers import Net, Peer

FIELDS = [{"label": "name", "name": "name"}, {"label": "status", "name": "status"}]


def table_rows(p: Peer, oid: bytes) -> list[ovmod.Row]:
    """An overlay's rows as the table holds them (bypassing the store's memory)."""
    return [ovmod._row(r) for r in p.storage.conn.execute(
        f"SELECT {ovmod._COLS} FROM overlay_ops WHERE overlay_id = ? ORDER BY seq", (oid,))]


def state_dump(st_: ovmod.OverlayState, entities: list[bytes]) -> dict[str, Any]:
    return {"created": st_.created, "deleted": st_.deleted, "facets": st_.facets,
            "writes": {k: r.local_op_id for k, r in st_.writes.items()},
            "first": {k: r.local_op_id for k, r in st_.first_writes.items()},
            "edges_created": st_.edges_created, "edges_deleted": st_.edges_deleted,
            "drifted": st_.drifted, "by_entity": [st_.staged_facets(e) for e in entities]}


def assert_store_exact(p: Peer, entities: list[bytes]) -> None:
    """Every overlay's kept rows and state equal those built from the table."""
    store = p.overlays
    for oid in store.overlay_ids():
        fresh = table_rows(p, oid)
        assert store.rows(oid) == fresh
        assert store.count(oid) == len(fresh)
        assert store.next_seq(oid) == (fresh[-1].seq + 1 if fresh else 1)
        assert state_dump(store.state(oid), entities) == state_dump(
            ovmod.OverlayState(fresh), entities)


STEPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 2), st.sampled_from(["name", "status"]),
              st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("create")),
    st.tuples(st.just("delete"), st.integers(0, 2)),
    st.tuples(st.just("undo")),
    st.tuples(st.just("redo")),
    st.tuples(st.just("knockout"), st.integers(0, 30)),
    st.tuples(st.just("knockout_field"), st.integers(0, 2), st.sampled_from(["name", "status"])),
    st.tuples(st.just("canonical"), st.integers(0, 2), st.sampled_from(["name", "status"])),
    st.tuples(st.just("resolve"), st.sampled_from(["keep_mine", "use_canonical"])),
    st.tuples(st.just("switch")),
), min_size=1, max_size=25)


@settings(max_examples=30, deadline=None)
@given(steps=STEPS)
def test_kept_state_equals_state_built_from_the_table(
        tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[Any, ...]]) -> None:
    net = Net(tmp_path_factory.mktemp("inc"))
    try:
        a, b = net.add_peer("A"), net.add_peer("B")
        a.create_table("Task", FIELDS)
        recs = [a.create_record("Task", {"name": f"r{i}", "status": "todo"}).id
                for i in range(3)]
        net.sync_all()
        mine = [a.create_overlay("one")]
        entities = list(recs)
        for n, s in enumerate(steps):
            oid = a.active_overlay
            assert oid is not None
            if s[0] == "set":
                with contextlib.suppress(OpenprodError):  # deleted here: refused, none staged
                    a.update_record(recs[s[1]], {s[2]: f"{s[3]}{n}"})
            elif s[0] == "create":
                entities.append(a.create_record("Task", {"name": f"new{n}"}).id)
            elif s[0] == "delete":
                with contextlib.suppress(OpenprodError):
                    a.delete_record(recs[s[1]])
            elif s[0] == "undo":
                a.undo()
            elif s[0] == "redo":
                a.redo()
            elif s[0] == "knockout":
                rows = a.overlays.rows(oid)
                if rows:
                    a.knockout(oid, rows[s[1] % len(rows)].local_op_id)
            elif s[0] == "knockout_field":
                a.knockout_field(oid, recs[s[1]], s[2])
            elif s[0] == "canonical":  # B edits, A ingests and re-checks drift
                b.update_record(recs[s[1]], {s[2]: f"theirs{n}"})
                net.sync(b, a)
            elif s[0] == "resolve":
                drift = a.list_drift(oid)
                if drift:
                    a.resolve_drift(oid, drift[0]["entity_id"], drift[0]["field"], s[1])
            elif s[0] == "switch":
                if len(mine) == 1:
                    mine.append(a.create_overlay("two"))
                else:
                    a.activate_overlay(mine[0] if oid == mine[1] else mine[1])
            assert_store_exact(a, entities)
        # reading the record through the overlay agrees with a store that forgot everything
        views = {ids.to_text(e): a.get_record(e)["values"] for e in recs if _live(a, e)}
        a.overlays._staged.clear()
        assert views == {ids.to_text(e): a.get_record(e)["values"] for e in recs if _live(a, e)}
    finally:
        for p in net.peers:
            p.ws.close()


def _live(p: Peer, e: bytes) -> bool:
    try:
        p.get_record(e)
    except OpenprodError:
        return False
    return True


def test_first_write_keeps_the_base_across_commands(net: Net) -> None:
    """The base of a staged field is the canonical value when it was first staged."""
    a, b = net.add_peer("A"), net.add_peer("B")
    a.create_table("Task", FIELDS)
    e = a.create_record("Task", {"name": "orig"}).id
    net.sync_all()
    oid = a.create_overlay("o")
    a.update_record(e, {"name": "one"})
    a.update_record(e, {"name": "two", "status": "x"})
    rows = a.overlays.rows(oid)
    first = a.overlays.state(oid).first_writes
    name_rows = [r for r in rows if r.skey is not None and r.skey.endswith("name")]
    assert [r.base_value for r in name_rows] == [name_rows[0].base_value] * 2
    assert first[(e, name_rows[0].skey)].local_op_id == name_rows[0].local_op_id
    b.update_record(e, {"name": "theirs"})
    net.sync(b, a)
    [d] = [d for d in a.list_drift(oid) if d["field"] == "name"]
    assert d["kind"] == "value"


# --- deferred writes ---------------------------------------------------------------------------

def script_overlay(p: Peer, *, running: bool = True) -> bytes:
    meta: dict[str, Any] = {"script": {"id": "t.x"}, "depth": 0}
    if running:
        meta["running"] = True
    return p.ws.overlays.create("run (script)", ("script", "t.x"), active=False, meta=meta)


def test_deferred_rows_are_read_from_memory_and_written_once(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    recs = [a.create_record("Task", {"name": f"r{i}"}).id for i in range(4)]
    oid = script_overlay(a)
    s = RunSession(a.ws, oid, RunSpec("r", "workspace.x", None))
    task = a.views.table("Task").facet
    store = a.overlays
    with store.deferred():
        for i, e in enumerate(recs):
            ok, err = s.call("set_field", [ids.to_text(e), task, "name", f"n{i}"])
            assert ok, err
        assert table_rows(a, oid) == []  # not written yet
        assert store.count(oid) == 4 and s.staged == 4
        ok, value = s.call("get_field", [ids.to_text(recs[3]), task, "name"])
        assert (ok, value) == (True, "n3")
        assert a.get_record(recs[0], canonical=False)["values"]["name"] == "r0"  # not active
        with a.staging_into(oid):
            assert a.get_record(recs[0])["values"]["name"] == "n0"
        assert store.get(oid)["changes"] == 4  # reading the table writes them first
        assert len(table_rows(a, oid)) == 4
        ok, err = s.call("set_field", [ids.to_text(recs[0]), task, "name", "again"])
        assert ok, err
        assert len(table_rows(a, oid)) == 4
    assert table_rows(a, oid) == store.rows(oid) and len(table_rows(a, oid)) == 5
    assert_store_exact(a, recs)


def test_deferred_block_writes_its_rows_even_when_it_raises(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    e = a.create_record("Task", {"name": "r"}).id
    oid = script_overlay(a)
    s = RunSession(a.ws, oid, RunSpec("r", "workspace.x", None))
    task = a.views.table("Task").facet
    with pytest.raises(RuntimeError), a.overlays.deferred():
        assert s.call("set_field", [ids.to_text(e), task, "name", "x"])[0]
        raise RuntimeError("the burst failed")
    assert [r.payload.t for r in table_rows(a, oid)] == ["SetField"]


def test_only_running_script_overlays_are_deferred(net: Net) -> None:
    """A user overlay and a finished run's overlay are written at once, inside deferred()."""
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    e = a.create_record("Task", {"name": "r"}).id
    done = script_overlay(a, running=False)
    user = a.create_overlay("mine")
    with a.overlays.deferred():
        a.update_record(e, {"name": "user"})
        with a.staging_into(done):
            a.update_record(e, {"name": "script"})
        assert len(table_rows(a, user)) == 1 and len(table_rows(a, done)) == 1
    running = script_overlay(a)
    with a.overlays.deferred():
        with a.staging_into(running):
            a.update_record(e, {"name": "later"})
        assert table_rows(a, running) == []
        a.overlays.set_meta(running, {"script": {"id": "t.x"}, "depth": 0})  # the run ended
    assert len(table_rows(a, running)) == 1
    with a.overlays.deferred():
        with a.staging_into(running):
            a.update_record(e, {"name": "after the end"})
        assert len(table_rows(a, running)) == 2


def test_discarding_a_deferred_overlay_leaves_nothing(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    e = a.create_record("Task", {"name": "r"}).id
    oid = script_overlay(a)
    with a.overlays.deferred():
        with a.staging_into(oid):
            a.update_record(e, {"name": "x"})
        a.discard_overlay(oid)
        assert not a.overlays.exists(oid)
    assert table_rows(a, oid) == []
    assert a.overlays.overlay_ids() == []


# --- schema token ------------------------------------------------------------------------------

def second_projection(p: Peer) -> StateProjection:
    return StateProjection(db.connect(p.ws.path / "oplog.db", synchronous="NORMAL"))


def test_refresh_reloads_exactly_when_the_schema_changed(net: Net,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    other = second_projection(a)
    try:
        loads: list[int] = []
        real = StateProjection._load_schema

        def counting(self: StateProjection) -> None:
            loads.append(1)
            real(self)
        monkeypatch.setattr(StateProjection, "_load_schema", counting)
        other.refresh()
        assert loads == []  # unchanged since it was opened
        a.create_record("Task", {"name": "x"})
        other.refresh()
        assert loads == []  # records are not schema
        a.add_field("Task", "due", "date")
        other.refresh()
        assert loads == [1] and len(other.fdefs) == 3  # name, status and the new one
        other.refresh()
        assert loads == [1]
    finally:
        other.conn.close()


def test_tables_follow_the_schema_on_another_connection(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    other = second_projection(a)
    try:
        views = Views(other)
        assert [t.label for t in views.tables()] == ["Task"]
        a.create_table("Cue", [{"label": "number", "name": "number"}])
        assert [t.label for t in views.tables()] == ["Task", "Cue"]
        a.add_field("Cue", "page", "integer")
        assert [f.label for f in views.table("Cue").fields] == ["number", "page"]
        got = views.tables()
        got.clear()  # the caller's list, not the cache
        assert len(views.tables()) == 2
    finally:
        other.conn.close()


def test_a_rolled_back_schema_change_is_not_kept(net: Net) -> None:
    """The token is random, so a rolled-back change never leaves tables cached under a token
    the database will show again."""
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    other = second_projection(a)
    try:
        views = Views(other)
        assert len(views.tables()) == 1
        other.conn.execute("BEGIN IMMEDIATE")
        other.conn.execute("INSERT INTO schema_tables(facet, label, stamp, module)"
                           " VALUES ('workspace.Ghost', 'Ghost', ?, 'workspace')", (bytes(28),))
        other._schema_changed()
        assert sorted(t.label for t in views.tables()) == ["Ghost", "Task"]
        other.conn.execute("ROLLBACK")
        assert [t.label for t in views.tables()] == ["Task"]
        other.refresh()
        assert "workspace.Ghost" not in {f for f, _ in other.fdefs}
        a.create_table("Real", [])
        assert [t.label for t in views.tables()] == ["Task", "Real"]
    finally:
        other.conn.close()


def test_merge_and_mapping_change_the_token(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Task", FIELDS)
    x = a.create_record("Task", {"name": "x"}).id
    y = a.create_record("Task", {"name": "y"}).id
    other = second_projection(a)
    try:
        tok = other.schema_token()
        a.merge(x, y)
        assert other.schema_token() != tok
        other.refresh()
        assert other.resolve(max(x, y)) == min(x, y)
    finally:
        other.conn.close()


# --- the rule base of an overlay, kept between commands ------------------------------------------

def test_rules_in_an_overlay_see_every_earlier_staged_op(net: Net) -> None:
    """The canonical + overlay state rules evaluate against is kept between commands; it must
    hold every op staged before (rules of this command included), and follow undo, knockout
    and canonical changes."""
    a, b = net.add_peer("A"), net.add_peer("B")
    a.create_table("Task", FIELDS)
    a.create_table("Hot", [{"label": "note", "name": "note"}])
    task, hot = a.views.table("Task").facet, a.views.table("Hot").facet
    a.put_rule(None, {"label": "urgent tasks are hot", "source": task, "target": hot,
                      "auto_accept": True, "on_condition_lost": "auto_detach", "enabled": True,
                      "when": {"field": "status", "op": "eq", "value": "urgent"},
                      "set": [{"field": "note", "copy_from": "name"}]})
    recs = [a.create_record("Task", {"name": f"t{i}", "status": "todo"}).id for i in range(3)]
    net.sync_all()
    oid = script_overlay(a)
    s = RunSession(a.ws, oid, RunSpec("r", "workspace.x", None,
                                      grants=frozenset([f"data.write:{hot}"])))
    a.catch_up_conflicts()  # both projections at the head: the base is kept (as under the writer)

    def tables(e: bytes) -> list[str]:
        ok, value = s.call("tables_of", [ids.to_text(e)])
        assert ok, value
        return list(value)

    def set_status(e: bytes, v: str) -> None:
        ok, err = s.call("set_field", [ids.to_text(e), task, "status", v])
        assert ok, err

    set_status(recs[0], "urgent")  # the rule attaches it in the overlay
    assert hot in tables(recs[0]) and a.ws._rule_layer is not None
    set_status(recs[1], "urgent")
    set_status(recs[0], "todo")  # condition lost against the earlier staged state: detached
    assert hot not in tables(recs[0]) and hot in tables(recs[1])
    a.overlays.undo_step(oid)  # undo the last command (its write and the detach)
    assert hot in tables(recs[0])
    set_status(recs[0], "later")
    assert hot not in tables(recs[0])
    # canonical changes the rule base has to see: the rule read recs[2] (its name) when the
    # script first wrote its status; B renames it; the rule copies the new name
    set_status(recs[2], "waiting")
    b.update_record(recs[2], {"name": "renamed"}, task)
    net.sync(b, a)
    a.catch_up_conflicts()
    set_status(recs[2], "urgent")
    ok, note = s.call("get_field", [ids.to_text(recs[2]), hot, "note"])
    assert (ok, note) == (True, "renamed")
    # the same reads from a state built from scratch agree
    a.ws._rule_layer = None
    a.overlays._staged.clear()
    assert [hot in tables(e) for e in recs] == [False, True, True]
