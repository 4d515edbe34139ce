"""The engine side of scripts on a plain `Workspace` (spec 04 §7.3-7.5): `RunSession` calls in a
script overlay (reads of its own writes, error codes, write scope, declared writes, limits, rules
in the overlay, never raising), `triggers.match` (events, fields, `when`, mapped slots), and the
workspace hooks (what fires on which commit, at which depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.core import ids
from openprod.core.ops import open_bundle
from openprod.engine import overlays as ovmod
from openprod.engine import rules as rulemod
from openprod.engine.manifest import load_package
from openprod.scripts import triggers as trigmod
from openprod.scripts.session import RunSession, RunSpec
from tests.helpers import Net, Peer

BUILTIN = Path(__file__).resolve().parents[2] / "modules"
TOML = '''manifest_version = 1
[module]
id = "sc"
version = "1.0.0"
name = "Script checks"

[tables.Calls.fields]
label = { type = "text", required = true }
flag = { type = "boolean" }
status = { type = "text" }
n = { type = "integer" }
notes = { type = "text", crdt = true }

[edges.next]
label = "Next"
from = "sc.Calls"
to = "sc.Calls"
ordered = true
properties = { why = "text" }
'''
CODES = {"BadArgument", "UnknownTable", "UnknownField", "UnknownEdgeType", "NotFound",
         "EntityDeleted", "NotMember", "TypeMismatch", "Required", "CapabilityDenied",
         "UndeclaredWrite", "LimitExceeded", "IOError"}
MISSING = "0190a000-0000-7000-8000-000000000000"


def world(net: Net, tmp_path: Path, name: str = "a") -> Peer:
    """A replica with module sc and the built-in contacts adopted."""
    pkg = tmp_path / "sc-pkg"
    if not pkg.exists():
        pkg.mkdir()
        (pkg / "module.toml").write_text(TOML)
    p = net.add_peer(name)
    p.adopt_module(load_package(pkg))
    p.adopt_module(load_package(BUILTIN / "contacts"))
    return p


def session(p: Peer, *, depth: int = 0, **spec: Any) -> RunSession:
    """A RunSession in a fresh stashed script overlay (as the ScriptRunner makes them)."""
    oid = p.ws.overlays.create("run (script)", ("script", "sc.x"), active=False,
                               meta={"script": {"source": "module", "id": "sc.x",
                                                "version": "1.0.0", "run_id": "r1",
                                                "trigger": "manual"}, "depth": depth})
    kw: dict[str, Any] = {"run_id": "r1", "script": "sc.x", "module": "sc", **spec}
    return RunSession(p.ws, oid, RunSpec(**kw))


def ok(s: RunSession, name: str, *args: Any) -> Any:
    good, value = s.call(name, list(args))
    assert good, (name, args, value)
    return value


def err(s: RunSession, name: str, *args: Any) -> str:
    good, value = s.call(name, list(args))
    assert not good, (name, args, value)
    assert set(value) == {"code", "message"} and value["message"], value
    return str(value["code"])


def canonical_calls(p: Peer) -> list[str]:
    return p.ws.query({"table": "sc.Calls"}, canonical=True)


# --- RunSession --------------------------------------------------------------------------------

def test_reads_see_the_runs_own_writes_canonical_does_not(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    published = ids.to_text(p.create_record("sc.Calls", {"label": "pub", "n": 1}).id)
    s = session(p)
    a = ok(s, "create_entity", "sc.Calls", {"label": "A", "n": 2, "flag": True})
    b = ok(s, "create_entity", "sc.Calls", {"label": "B"})
    assert ok(s, "get_field", a, "sc.Calls", "n") == 2
    assert ok(s, "get_record", a, "sc.Calls") == {"label": "A", "n": 2, "flag": True}
    assert ok(s, "exists", a) is True and ok(s, "exists", MISSING) is False
    assert ok(s, "tables_of", a) == ["sc.Calls"]
    assert sorted(ok(s, "query", {"table": "sc.Calls"})) == sorted([published, a, b])
    assert ok(s, "query_one", {"table": "sc.Calls", "where": {
        "field": "n", "op": "eq", "value": 2}}) == a
    assert ok(s, "query_one", {"table": "sc.Calls", "where": {
        "field": "n", "op": "eq", "value": 9}}) is None
    g = ok(s, "create_edge", "sc.next", a, b, {"why": "order"})
    [edge] = ok(s, "edges", b, {"dir": "in"})
    assert (edge["id"], edge["source"], edge["target"], edge["properties"]) == (
        g, a, b, {"why": "order"})
    assert ok(s, "edges", a, {"type": "sc.next"})[0]["id"] == g
    ok(s, "set_field", published, "sc.Calls", "n", 5)
    assert ok(s, "get_field", published, "sc.Calls", "n") == 5
    ok(s, "delete_entity", b)
    assert ok(s, "exists", b) is False and ok(s, "edges", a) == []
    assert err(s, "get_field", b, "sc.Calls", "n") == "EntityDeleted"
    # canonical and the user's (no) active overlay are untouched
    assert canonical_calls(p) == [published]
    assert p.ws.overlays.active is None
    assert p.ws.get_record(published)["values"]["n"] == 1
    assert s.staged == len(p.ws.overlays.rows(s.overlay)) > 0


def test_no_op_writes_are_dropped(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    e = ids.to_text(p.create_record("sc.Calls", {"label": "pub", "n": 1}).id)
    s = session(p)
    ok(s, "set_field", e, "sc.Calls", "n", 1)
    ok(s, "attach_facet", e, "sc.Calls", {"n": 1})  # attach on a member only sets fields
    assert p.ws.overlays.rows(s.overlay) == []
    ok(s, "set_field", e, "sc.Calls", "n", 2)
    n = len(p.ws.overlays.rows(s.overlay))
    ok(s, "set_field", e, "sc.Calls", "n", 2)
    assert len(p.ws.overlays.rows(s.overlay)) == n


def test_reads_follow_the_overlay_and_canonical_between_calls(net: Net,
                                                              tmp_path: Path) -> None:
    """The run's view is kept between calls: staged ops, canonical commits and changes made
    to its overlay from outside (a knocked-out change) all show in the next read."""
    p = world(net, tmp_path)
    other = p.create_record("sc.Calls", {"label": "other", "n": 1}).id
    s = session(p)
    a = ok(s, "create_entity", "sc.Calls", {"label": "A"})
    for i in range(1, 4):
        ok(s, "set_field", a, "sc.Calls", "n", i)
        assert ok(s, "get_field", a, "sc.Calls", "n") == i
    p.update_record(other, {"n": 7}, "sc.Calls")  # canonical moves on
    assert ok(s, "get_field", ids.to_text(other), "sc.Calls", "n") == 7
    assert ok(s, "get_field", a, "sc.Calls", "n") == 3
    p.ws.knockout_field(s.overlay, ids.from_text(a), "n")  # the user drops the staged n
    assert ok(s, "get_field", a, "sc.Calls", "n") is None
    ok(s, "set_field", a, "sc.Calls", "n", 9)
    assert ok(s, "get_record", a, "sc.Calls") == {"label": "A", "n": 9}


@pytest.mark.parametrize(("call", "args", "code"), [
    ("get_field", [MISSING, "sc.Calls", "n"], "NotFound"),
    ("get_field", ["not an id", "sc.Calls", "n"], "BadArgument"),
    ("get_field", [], "BadArgument"),  # Lua dropped the trailing nils
    ("get_field", ["$E", "sc.Nope", "n"], "UnknownTable"),
    ("get_field", ["$E", "sc.Calls", "nope"], "UnknownField"),
    ("get_field", ["$E", "contacts.People", "full_name"], "NotMember"),
    ("get_field", ["$E", "sc.Calls", "n", "extra"], "BadArgument"),
    ("set_field", ["$E", "sc.Calls", "n", "seven"], "TypeMismatch"),
    ("set_field", ["$E", "sc.Calls", "label", None], "Required"),
    ("set_field", ["$E", "sc.Calls", "notes", "x"], "TypeMismatch"),
    ("set_text", ["$E", "sc.Calls", "label", "x"], "TypeMismatch"),
    ("set_text", ["$E", "sc.Calls", "notes", "x"], "BadArgument"),  # V1: not in overlays
    ("create_entity", ["sc.Calls", {"n": 1}], "Required"),
    ("create_entity", [None, None], "BadArgument"),
    ("create_entity", ["sc.Calls", {"label": "x", "nope": 1}], "UnknownField"),
    ("create_entity", ["sc.Calls", "not a table"], "BadArgument"),
    ("edges", ["$E", {"dir": "sideways"}], "BadArgument"),
    ("edges", ["$E", {"type": "sc.nope"}], "UnknownEdgeType"),
    ("edges", ["$E", {"color": "red"}], "BadArgument"),
    ("create_edge", ["sc.nope", "$E", "$E"], "UnknownEdgeType"),
    ("delete_edge", [MISSING], "NotFound"),
    ("detach_facet", ["$E", "contacts.People"], "NotMember"),
    ("query", ["sc.Calls"], "BadArgument"),
    ("query", [{"table": "sc.Calls", "where": {"field": "n", "op": "gt", "value": "x"}}],
     "BadArgument"),
    ("log", ["info", "x"], "BadArgument"),  # the host answers log itself
])
def test_error_codes(net: Net, tmp_path: Path, call: str, args: list[Any], code: str) -> None:
    p = world(net, tmp_path)
    e = ids.to_text(p.create_record("sc.Calls", {"label": "pub"}).id)
    s = session(p)
    assert err(s, call, *[e if a == "$E" else a for a in args]) == code
    assert p.ws.overlays.rows(s.overlay) == []


def test_write_scope_own_module_or_a_data_write_grant(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    user = p.create_table("Cues", [{"label": "Name"}]).facet  # workspace.<id>
    person = ids.to_text(p.create_record("contacts.People", {"full_name": "Ann"}).id)
    s = session(p)
    assert err(s, "create_entity", "contacts.People", {"full_name": "Zed"}) == \
        "CapabilityDenied"
    assert err(s, "set_field", person, "contacts.People", "role", "LX") == "CapabilityDenied"
    assert err(s, "create_entity", user, {}) == "CapabilityDenied"
    call = ok(s, "create_entity", "sc.Calls", {"label": "own"})
    assert err(s, "attach_facet", call, "contacts.People", {"full_name": "x"}) == \
        "CapabilityDenied"
    assert err(s, "delete_entity", person) == "CapabilityDenied"
    # reads are unrestricted
    assert ok(s, "get_field", person, "contacts.People", "full_name") == "Ann"
    # module-wide and table-wide grants
    for grant in ("data.write:contacts", "data.write:contacts.People"):
        g = session(p, grants=frozenset([grant]))
        ok(g, "set_field", person, "contacts.People", "role", "LX")
        ok(g, "create_entity", "contacts.People", {"full_name": "Zed"})
    # a workspace script writes workspace.* but no module's tables
    w = session(p, module=None)
    ok(w, "create_entity", user, {})
    assert err(w, "create_entity", "sc.Calls", {"label": "x"}) == "CapabilityDenied"


def test_on_change_writes_are_enforced(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    e = ids.to_text(p.create_record("sc.Calls", {"label": "pub"}).id)
    other = ids.to_text(p.create_record("sc.Calls", {"label": "other"}).id)
    s = session(p, trigger="on_change", writes=frozenset(["sc.Calls.status", "edge:sc.next"]))
    ok(s, "set_field", e, "sc.Calls", "status", "seen")
    assert err(s, "set_field", e, "sc.Calls", "n", 1) == "UndeclaredWrite"
    assert err(s, "create_entity", "sc.Calls", {"label": "x"}) == "UndeclaredWrite"
    assert err(s, "delete_entity", e) == "UndeclaredWrite"
    ok(s, "create_edge", "sc.next", e, other)
    # the record membership is its own key
    m = session(p, trigger="on_change", writes=frozenset(["sc.Calls", "sc.Calls.label"]))
    ok(m, "create_entity", "sc.Calls", {"label": "x"})
    assert err(m, "create_entity", "sc.Calls", {"label": "x", "n": 1}) == "UndeclaredWrite"


def test_staged_and_result_limits(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    probe = session(p)
    ok(probe, "create_entity", "sc.Calls", {"label": "c"})
    per_create = probe.staged  # create + attach + the field
    s = session(p, max_staged=2 * per_create)
    codes = [s.call("create_entity", ["sc.Calls", {"label": f"c{i}"}]) for i in range(4)]
    assert [ok_ for ok_, _ in codes] == [True, True, False, False]
    assert codes[2][1]["code"] == codes[3][1]["code"] == "LimitExceeded"
    q = session(p, max_results=2)
    for i in range(3):
        ok(q, "create_entity", "sc.Calls", {"label": f"c{i}"})
    assert err(q, "query", {"table": "sc.Calls"}) == "LimitExceeded"


def test_rules_fire_in_the_run_overlay(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    p.put_rule(None, {"label": "Flagged calls are people", "source": "sc.Calls",
                      "target": "contacts.People", "auto_accept": True, "enabled": True,
                      "when": {"field": "flag", "op": "eq", "value": True},
                      "set": [{"field": "full_name", "copy_from": "label"}]})
    s = session(p)  # no data.write:contacts: rule output is bound by neither
    e = ok(s, "create_entity", "sc.Calls", {"label": "Ann", "flag": True})
    assert ok(s, "tables_of", e) == ["contacts.People", "sc.Calls"]
    assert ok(s, "get_field", e, "contacts.People", "full_name") == "Ann"
    assert p.ws.query({"table": "contacts.People"}, canonical=True) == []
    bid = p.ws.commit_overlay(s.overlay)
    assert p.ws.query({"table": "contacts.People"}) == [e]
    rec = p.storage.bundle_record(bid)
    b = open_bundle(rec, p.ws.ws, verify_sig=False)
    assert b.kind == "script" and b.meta is not None and b.meta["script"]["id"] == "sc.x"
    assert {o.t for o in b.ops} >= {"CreateEntity", "AttachFacet"}


VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
              st.text(max_size=4), st.binary(max_size=2),
              st.sampled_from(["$E", "$F", "$G", "sc.Calls", "contacts.People", "sc.next",
                               "label", "n", "flag", "notes", "out", "in", "both", "eq",
                               MISSING])),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
        st.one_of(st.sampled_from(["table", "where", "field", "op", "value", "type", "dir",
                                   "after", "before", "label", "n", "flag", "why"]),
                  st.integers(0, 3)), c, max_size=3)),
    max_leaves=8)


def test_calls_never_raise(net: Net, tmp_path: Path) -> None:
    """Whatever a script passes, a call answers (ok, value) or (False, {code, message}) with a
    §7.3 code: a TypeError or a stray exception would reach the runner."""
    p = world(net, tmp_path)
    e = p.create_record("sc.Calls", {"label": "E"}).id
    f = p.create_record("sc.Calls", {"label": "F"}).id
    g = p.create_edge("sc.next", e, f).id
    subst = {"$E": ids.to_text(e), "$F": ids.to_text(f), "$G": ids.to_text(g)}

    @settings(max_examples=100)
    @given(st.lists(st.tuples(st.sampled_from(sorted(session(p)._calls)),
                              st.lists(VALUES, max_size=5)), min_size=1, max_size=4))
    def check(calls: list[tuple[str, list[Any]]]) -> None:
        s = session(p)
        seen = [e, f]
        for name, args in calls:
            args = [subst.get(a, a) if isinstance(a, str) else a for a in args]
            good, value = s.call(name, args)
            if not good:
                assert value["code"] in CODES, value
                assert isinstance(value["message"], str)
            elif name == "create_entity":
                seen.append(ids.from_text(value))
            # the caches (decoded rows, the run's view kept between calls) match a fresh read
            store = p.ws.overlays
            assert store.rows(s.overlay) == [ovmod._row(r) for r in store.conn.execute(
                f"SELECT {ovmod._COLS} FROM overlay_ops WHERE overlay_id = ? ORDER BY seq",
                (s.overlay,))]
            kept, fresh = s._view(), RunSession(p.ws, s.overlay, s.spec)._view()
            for x in seen:
                assert kept.is_live(x) == fresh.is_live(x)
                assert kept.facets_of(x) == fresh.facets_of(x)
                for t in fresh.facets_of(x):
                    assert kept.field_values(x, t) == fresh.field_values(x, t)
        p.ws.discard_overlay(s.overlay)

    check()


# --- triggers.match ----------------------------------------------------------------------------

def trig(p: Peer, fields: tuple[str, ...] = (), events: tuple[str, ...] = (),
         when: dict[str, Any] | None = None, table: str = "sc.Calls",
         script: str = "sc.watch") -> trigmod.Trigger:
    t = trigmod.compile_trigger(script, table, fields, events, when, p.ws.views)
    assert t is not None
    return t


def staged_match(p: Peer, triggers: list[trigmod.Trigger], *steps: tuple[str, list[Any]],
                 ) -> dict[str, list[dict[str, Any]]]:
    """Stage steps (RunSession calls) in an overlay; match its payloads as one commit."""
    s = session(p)
    for name, args in steps:
        ok(s, name, *args)
    payloads = [r.payload for r in p.ws.overlays.rows(s.overlay)]
    before = rulemod.Layer(p.ws._rule_base(None))
    after = rulemod.Layer(before.base, payloads)
    return trigmod.match(triggers, payloads, before, after)


def test_match_field_changed_with_fields_and_when(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    a = ids.to_text(p.create_record("sc.Calls", {"label": "a", "n": 1}).id)
    b = ids.to_text(p.create_record("sc.Calls", {"label": "b", "n": 1}).id)
    watch_n = trig(p, ("n",), script="sc.n")
    big = trig(p, ("n",), when={"field": "n", "op": "gt", "value": 5}, script="sc.big")
    label = trig(p, ("label",), script="sc.label")
    got = staged_match(p, [watch_n, big, label],
                       ("set_field", [b, "sc.Calls", "n", 9]),
                       ("set_field", [a, "sc.Calls", "n", 2]),
                       ("set_field", [a, "sc.Calls", "status", "x"]))
    assert list(got) == ["sc.big", "sc.n"]  # label unchanged: nothing
    assert got["sc.n"] == [
        {"event": "field_changed", "entity_id": x, "table": "sc.Calls", "field": "n",
         "old": 1, "new": new} for x, new in sorted([(a, 2), (b, 9)])]
    assert [c["entity_id"] for c in got["sc.big"]] == [b]  # `when` reads the after-state
    # writing the current value is no change
    assert staged_match(p, [watch_n], ("attach_facet", [a, "sc.Calls", {"n": 1}])) == {}


def test_match_record_added_and_removed(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    gone = ids.to_text(p.create_record("sc.Calls", {"label": "gone", "flag": True}).id)
    kept = ids.to_text(p.create_record("sc.Calls", {"label": "kept", "flag": False}).id)
    added = trig(p, events=("record_added",), script="sc.added")
    removed = trig(p, events=("record_removed",), script="sc.removed")
    flagged_gone = trig(p, events=("record_removed",), script="sc.flagged_gone",
                        when={"field": "flag", "op": "eq", "value": True})
    s = session(p)
    new = ok(s, "create_entity", "sc.Calls", {"label": "new"})
    ok(s, "delete_entity", gone)
    ok(s, "delete_entity", kept)
    payloads = [r.payload for r in p.ws.overlays.rows(s.overlay)]
    before = rulemod.Layer(p.ws._rule_base(None))
    got = trigmod.match([added, removed, flagged_gone], payloads, before,
                        rulemod.Layer(before.base, payloads))
    assert got["sc.added"] == [{"event": "record_added", "entity_id": new,
                                "table": "sc.Calls"}]
    assert [c["entity_id"] for c in got["sc.removed"]] == sorted([gone, kept])
    assert {c["event"] for c in got["sc.removed"]} == {"record_removed"}
    # `when` checks the before-state on removal
    assert [c["entity_id"] for c in got["sc.flagged_gone"]] == [gone]


def test_match_mapped_slot_counts_for_every_member(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    p.confirm_mapping("sc.Calls.status", "contacts.People.role")
    e = p.create_record("sc.Calls", {"label": "both", "status": "a"}).id
    p.add_to_table(e, "contacts.People", {"full_name": "Both"})
    watch = trig(p, ("status",))
    s = session(p, grants=frozenset(["data.write:contacts"]))
    ok(s, "set_field", ids.to_text(e), "contacts.People", "role", "LX")
    payloads = [r.payload for r in p.ws.overlays.rows(s.overlay)]
    before = rulemod.Layer(p.ws._rule_base(None))
    got = trigmod.match([watch], payloads, before, rulemod.Layer(before.base, payloads))
    assert got == {"sc.watch": [{"event": "field_changed", "entity_id": ids.to_text(e),
                                 "table": "sc.Calls", "field": "status", "old": "a",
                                 "new": "LX"}]}


# --- the workspace hooks ---------------------------------------------------------------------

def test_what_fires_on_which_commit(net: Net, tmp_path: Path) -> None:
    a = world(net, tmp_path, "a")
    b = world(net, tmp_path, "b")
    e = a.create_record("sc.Calls", {"label": "x", "n": 0}).id
    net.sync_all()
    for p in (a, b):
        p.ws.triggers = [trig(p, ("n",))]
    # a direct edit: depth 1, with its bundle
    r = a.update_record(e, {"n": 1}, "sc.Calls")
    [(script, changes, depth, bundle)] = a.ws.take_fired()
    assert (script, depth, bundle) == ("sc.watch", 1, r.bundle_id)
    assert [(c["old"], c["new"]) for c in changes] == [(0, 1)]
    assert a.ws.take_fired() == []
    # synced ops fire nothing on the receiver
    net.sync(a, b)
    assert b.ws.take_fired() == []
    # a staged edit fires nothing; committing its overlay does (depth = overlay depth + 1)
    oid = a.ws.create_overlay("draft")
    a.update_record(e, {"n": 2}, "sc.Calls")
    assert a.ws.take_fired() == []
    bid = a.ws.commit_overlay(oid)
    [(_, changes, depth, bundle)] = a.ws.take_fired()
    assert (depth, bundle, changes[0]["new"]) == (1, bid, 2)
    # a script overlay carries its depth
    s = session(a, depth=7)
    ok(s, "set_field", ids.to_text(e), "sc.Calls", "n", 3)
    a.ws.commit_overlay(s.overlay)
    assert [d for _, _, d, _ in a.ws.take_fired()] == [8]
    # ... and nothing fires past 1000
    s = session(a, depth=trigmod.MAX_DEPTH)
    ok(s, "set_field", ids.to_text(e), "sc.Calls", "n", 4)
    a.ws.commit_overlay(s.overlay)
    assert a.ws.take_fired() == []
    s = session(a, depth=trigmod.MAX_DEPTH - 1)
    ok(s, "set_field", ids.to_text(e), "sc.Calls", "n", 5)
    a.ws.commit_overlay(s.overlay)
    assert [d for _, _, d, _ in a.ws.take_fired()] == [trigmod.MAX_DEPTH]
    # undo, redo and imports fire nothing
    a.ws.undo()
    a.ws.redo()
    a.create_records("sc.Calls", [{"label": "imported", "n": 9}])
    assert a.ws.take_fired() == []
    # no triggers: nothing
    a.ws.triggers = []
    a.update_record(e, {"n": 6}, "sc.Calls")
    assert a.ws.take_fired() == []


def test_an_accepted_proposal_fires(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    p.put_rule(None, {"label": "Flagged calls are people", "source": "sc.Calls",
                      "target": "contacts.People", "enabled": True,
                      "when": {"field": "flag", "op": "eq", "value": True},
                      "set": [{"field": "full_name", "copy_from": "label"}]})
    p.ws.triggers = [trig(p, events=("record_added",), table="contacts.People")]
    e = p.create_record("sc.Calls", {"label": "Ann", "flag": True}).id
    assert p.ws.take_fired() == []  # a proposal, no membership yet
    [prop] = p.list_proposals()
    r = p.accept_proposal(prop["id"])
    [(_, changes, depth, bundle)] = p.ws.take_fired()
    assert (depth, bundle) == (1, r.bundle_id)
    assert changes == [{"event": "record_added", "entity_id": ids.to_text(e),
                        "table": "contacts.People"}]


def test_local_automations_join_the_rules_cycle_check(net: Net, tmp_path: Path) -> None:
    p = world(net, tmp_path)
    # a script that watches People membership and writes Calls.flag ...
    p.ws.local_automations = {"script:sc.loop": ({"sc.Calls.flag"},
                                                 {"@member:contacts.People"})}
    # ... and a rule adding flagged calls to People close a cycle
    with pytest.raises(rulemod.CycleDetected):
        p.put_rule(None, {"label": "Flagged calls are people", "source": "sc.Calls",
                          "target": "contacts.People", "auto_accept": True, "enabled": True,
                          "when": {"field": "flag", "op": "eq", "value": True}})
    p.ws.local_automations = {}
    p.put_rule(None, {"label": "Flagged calls are people", "source": "sc.Calls",
                      "target": "contacts.People", "auto_accept": True, "enabled": True,
                      "when": {"field": "flag", "op": "eq", "value": True}})
