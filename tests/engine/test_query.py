"""The V1 query form (spec 04 §5, scenarios §8.7 and §8.11): static typing with error paths,
every operator on every ftype that allows it, empty-value semantics, table membership, edge
conditions, ordering and limits, displayed values of conflicted fields, overlay context, and a
property test against a brute-force evaluation written straight from the spec's wording.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.core import ids
from openprod.engine import query as Q
from openprod.engine.query import QueryError
from tests.helpers import T0, Net, Peer

BLOB1, BLOB2 = "ab" * 32, "cd" * 32
ITEM_FIELDS: list[dict[str, Any]] = [
    {"label": "name", "name": "name"},
    {"label": "n", "name": "n", "type": "integer"},
    {"label": "x", "name": "x", "type": "float"},
    {"label": "d", "name": "d", "type": "date"},
    {"label": "t", "name": "t", "type": "datetime"},
    {"label": "dur", "name": "dur", "type": "duration"},
    {"label": "Status", "name": "st", "type": "enum", "options": {"choices": ["a", "b", "c"]}},
    {"label": "ok", "name": "ok", "type": "boolean"},
    {"label": "ref", "name": "ref", "type": "entity_ref"},
    {"label": "blob", "name": "blob", "type": "blob_ref"},
    {"label": "body", "name": "body", "crdt": True},
]


class Items:
    """Table Items with four records: r1, r2, r3 filled in, r4 with every field empty."""

    def __init__(self, p: Peer) -> None:
        self.p = p
        p.create_table("Items", ITEM_FIELDS)
        for h in (BLOB1, BLOB2):  # files a teammate attached (a blob_ref must name a known blob)
            p.put_config("blob", h, {"size": 1, "mime": "text/plain", "name": f"{h[:4]}.txt"})
        self.r1 = p.create_record("Items", {
            "name": "apple", "n": 1, "x": 1.5, "d": "2024-01-01", "t": 1000, "dur": 10,
            "st": "a", "ok": True, "blob": BLOB1, "body": "hello World"}).id
        self.r2 = p.create_record("Items", {
            "name": "Banana", "n": 2, "x": 2.0, "d": "2024-06-01", "t": 2000, "dur": 20,
            "st": "b", "ok": False, "ref": ids.to_text(self.r1), "body": "hi"}).id
        self.r3 = p.create_record("Items", {
            "name": "apricot", "n": 3, "x": -1.0, "d": "2023-12-31", "t": 3000, "dur": 30,
            "st": "c", "ok": True, "ref": ids.to_text(self.r2), "blob": BLOB2}).id
        self.r4 = p.create_record("Items", {}).id
        self.names = {self.r1: "r1", self.r2: "r2", self.r3: "r3", self.r4: "r4"}

    def q(self, where: Mapping[str, Any] | None = None, **kw: Any) -> list[str]:
        """Names of the matches, in result order."""
        query: dict[str, Any] = {"table": "Items", **kw}
        if where is not None:
            query["where"] = where
        return [self.names[ids.from_text(x)] for x in self.p.query(query)]

    def where(self, field: str, op: str, value: Any = None) -> set[str]:
        c: dict[str, Any] = {"field": field, "op": op}
        if op == "in":
            c["values"] = value
        elif op not in ("is_empty", "not_empty"):
            c["value"] = value
        return set(self.q(c))


@pytest.fixture
def items(net: Net) -> Items:
    return Items(net.add_peer("A"))


# --- operators per ftype ------------------------------------------------------------------------

ALL = {"r1", "r2", "r3"}  # the filled-in records
CASES: list[tuple[str, str, Any, set[str]]] = [
    # text: ordering by code points (upper case sorts before lower case), case-sensitive
    ("name", "eq", "apple", {"r1"}),
    ("name", "ne", "apple", {"r2", "r3"}),
    ("name", "lt", "apricot", {"r1", "r2"}),
    ("name", "le", "apricot", {"r1", "r2", "r3"}),
    ("name", "gt", "apple", {"r3"}),
    ("name", "ge", "apple", {"r1", "r3"}),
    ("name", "in", ["apple", "Banana", "cherry"], {"r1", "r2"}),
    ("name", "contains", "an", {"r2"}),
    ("name", "contains", "AN", set()),
    ("name", "starts_with", "ap", {"r1", "r3"}),
    ("name", "starts_with", "b", set()),
    ("name", "is_empty", None, {"r4"}),
    ("name", "not_empty", None, ALL),
    # integer, with integer and float literals compared numerically
    ("n", "eq", 2, {"r2"}),
    ("n", "eq", 2.0, {"r2"}),
    ("n", "ne", 2, {"r1", "r3"}),
    ("n", "lt", 2, {"r1"}),
    ("n", "le", 2, {"r1", "r2"}),
    ("n", "gt", 1.5, {"r2", "r3"}),
    ("n", "ge", 2, {"r2", "r3"}),
    ("n", "in", [1, 3.0, 99], {"r1", "r3"}),
    ("n", "is_empty", None, {"r4"}),
    ("n", "not_empty", None, ALL),
    # float
    ("x", "eq", 2, {"r2"}),
    ("x", "ne", 1.5, {"r2", "r3"}),
    ("x", "lt", 0, {"r3"}),
    ("x", "le", 1.5, {"r1", "r3"}),
    ("x", "gt", 1.5, {"r2"}),
    ("x", "ge", -1, {"r1", "r2", "r3"}),
    ("x", "in", [2, -1.0], {"r2", "r3"}),
    ("x", "is_empty", None, {"r4"}),
    ("x", "not_empty", None, ALL),
    # date
    ("d", "eq", "2024-01-01", {"r1"}),
    ("d", "ne", "2024-01-01", {"r2", "r3"}),
    ("d", "lt", "2024-01-01", {"r3"}),
    ("d", "le", "2024-01-01", {"r1", "r3"}),
    ("d", "gt", "2024-01-01", {"r2"}),
    ("d", "ge", "2024-01-01", {"r1", "r2"}),
    ("d", "in", ["2024-06-01", "2020-01-01"], {"r2"}),
    ("d", "is_empty", None, {"r4"}),
    ("d", "not_empty", None, ALL),
    # datetime: ms literals, and ISO literals converted like a write would convert them
    ("t", "eq", 2000, {"r2"}),
    ("t", "eq", "1970-01-01T00:00:02Z", {"r2"}),
    ("t", "ne", 2000, {"r1", "r3"}),
    ("t", "lt", 2000, {"r1"}),
    ("t", "le", 2000, {"r1", "r2"}),
    ("t", "gt", "1970-01-01T00:00:01Z", {"r2", "r3"}),
    ("t", "ge", 3000, {"r3"}),
    ("t", "in", [1000, 3000], {"r1", "r3"}),
    ("t", "is_empty", None, {"r4"}),
    ("t", "not_empty", None, ALL),
    # duration
    ("dur", "eq", 10, {"r1"}),
    ("dur", "ne", 10, {"r2", "r3"}),
    ("dur", "lt", 20, {"r1"}),
    ("dur", "le", 20, {"r1", "r2"}),
    ("dur", "gt", 20, {"r3"}),
    ("dur", "ge", 20, {"r2", "r3"}),
    ("dur", "in", [30], {"r3"}),
    ("dur", "is_empty", None, {"r4"}),
    ("dur", "not_empty", None, ALL),
    # enum (named by label here), boolean
    ("Status", "eq", "a", {"r1"}),
    ("st", "ne", "a", {"r2", "r3"}),
    ("st", "in", ["b", "c"], {"r2", "r3"}),
    ("st", "is_empty", None, {"r4"}),
    ("st", "not_empty", None, ALL),
    ("ok", "eq", True, {"r1", "r3"}),
    ("ok", "eq", False, {"r2"}),
    ("ok", "ne", True, {"r2"}),
    ("ok", "in", [False], {"r2"}),
    ("ok", "is_empty", None, {"r4"}),
    ("ok", "not_empty", None, ALL),
    # blob_ref: emptiness only; collaborative text: emptiness and contains
    ("blob", "is_empty", None, {"r2", "r4"}),
    ("blob", "not_empty", None, {"r1", "r3"}),
    ("body", "contains", "World", {"r1"}),
    ("body", "contains", "world", set()),
    ("body", "contains", "h", {"r1", "r2"}),
    ("body", "is_empty", None, {"r3", "r4"}),
    ("body", "not_empty", None, {"r1", "r2"}),
]


@pytest.mark.parametrize(("field", "op", "value", "expected"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]!r}" for c in CASES])
def test_operator_per_ftype(items: Items, field: str, op: str, value: Any,
                            expected: set[str]) -> None:
    assert items.where(field, op, value) == expected


def test_entity_ref_and_id_ops(items: Items) -> None:
    r1, r2 = ids.to_text(items.r1), ids.to_text(items.r2)
    assert items.where("ref", "eq", r1) == {"r2"}
    assert items.where("ref", "ne", r1) == {"r3"}  # r1 and r4 have no ref: empty never matches
    assert items.where("ref", "in", [r1, r2]) == {"r2", "r3"}
    assert items.where("ref", "is_empty") == {"r1", "r4"}
    assert items.where("$id", "eq", r2) == {"r2"}
    assert items.where("$id", "ne", r2) == {"r1", "r3", "r4"}
    assert items.where("$id", "in", [r1, r2]) == {"r1", "r2"}


def test_dangling_reference_reads_empty(items: Items) -> None:
    items.p.delete_record(items.r1)
    assert items.where("ref", "eq", ids.to_text(items.r1)) == set()
    assert items.where("ref", "is_empty") == {"r4", "r2"}
    assert items.where("ref", "not_empty") == {"r3"}


def test_table_and_field_named_by_id_or_label(items: Items) -> None:
    t = items.p.views.table("Items")
    by_id = items.p.query({"table": t.facet, "where": {"field": "st", "op": "eq", "value": "a"}})
    by_label = items.p.query({"table": "items", "where": {"field": "status", "op": "eq",
                                                          "value": "a"}})
    assert by_id == by_label == [ids.to_text(items.r1)]


# --- empty values and boolean structure --------------------------------------------------------

def test_empty_values_never_compare(net: Net) -> None:
    """Scenario §8.11: empty email — `eq` never matches, `not eq "a@x"` includes it."""
    a = net.add_peer("A")
    a.create_table("People", [{"label": "email", "name": "email"}])
    e1 = a.create_record("People", {"email": "a@x"}).id
    e2 = a.create_record("People", {"email": "b@x"}).id
    e3 = a.create_record("People", {}).id
    e4 = a.create_record("People", {"email": "c@x"}).id
    a.update_record(e4, {"email": None})  # cleared reads empty too
    e5 = a.create_record("People", {"email": ""}).id  # an empty text is empty

    def q(where: Mapping[str, Any]) -> set[bytes]:
        return {ids.from_text(x) for x in a.query({"table": "People", "where": where})}

    eq = {"field": "email", "op": "eq", "value": "a@x"}
    assert q(eq) == {e1}
    assert q({"field": "email", "op": "ne", "value": "a@x"}) == {e2}
    assert q({"not": eq}) == {e2, e3, e4, e5}
    for op in ("lt", "le", "gt", "ge"):
        assert e3 not in q({"field": "email", "op": op, "value": "m"})
        assert e3 in q({"not": {"field": "email", "op": op, "value": "m"}})
    assert q({"field": "email", "op": "is_empty"}) == {e3, e4, e5}
    assert q({"not": {"field": "email", "op": "is_empty"}}) == {e1, e2}
    # all/any: empty all is true, empty any is false
    assert q({"all": []}) == {e1, e2, e3, e4, e5}
    assert q({"any": []}) == set()
    assert q({"any": [eq, {"field": "email", "op": "eq", "value": "b@x"}]}) == {e1, e2}
    assert q({"all": [{"not": eq}, {"field": "email", "op": "not_empty"}]}) == {e2}
    # null == null is not expressible: a null literal is refused
    with pytest.raises(QueryError) as exc:
        a.query({"table": "People", "where": {"field": "email", "op": "eq", "value": None}})
    assert exc.value.path == "where.value"


def test_in_table(net: Net) -> None:
    a = net.add_peer("A")
    a.create_table("Calls", [{"label": "name", "name": "name"}])
    a.create_table("People", [{"label": "name", "name": "name"}])
    both = a.create_record("Calls", {"name": "x"}).id
    a.add_to_table(both, "People")
    only = a.create_record("Calls", {"name": "y"}).id
    detached = a.create_record("Calls", {"name": "z"}).id
    a.add_to_table(detached, "People")
    a.delete_record(detached, "People")
    in_people = {"in_table": "People"}
    assert a.query({"table": "Calls", "where": in_people}) == [ids.to_text(both)]
    assert a.query({"table": "Calls", "where": {"not": in_people}}) == sorted(
        ids.to_text(x) for x in (only, detached))


# --- edge conditions ---------------------------------------------------------------------------

class Crew:
    """Calls -[t.crew {dept}]-> People(role)."""

    def __init__(self, p: Peer) -> None:
        self.p = p
        p.create_table("Calls", [{"label": "name", "name": "name"}])
        p.create_table("People", [{"label": "role", "name": "role"}])
        p.define_edge_type("t.crew", "Crew", props={"dept": "text", "lead": "boolean"})
        self.c1 = p.create_record("Calls", {"name": "c1"}).id
        self.c2 = p.create_record("Calls", {"name": "c2"}).id
        self.c3 = p.create_record("Calls", {"name": "c3"}).id
        self.lx = p.create_record("People", {"role": "LX"}).id
        self.snd = p.create_record("People", {"role": "Sound"}).id
        self.gone = p.create_record("People", {"role": "LX"}).id
        p.create_edge("t.crew", self.c1, self.lx, props={"dept": "light", "lead": True})
        p.create_edge("t.crew", self.c2, self.snd, props={"dept": "sound"})
        p.create_edge("t.crew", self.c3, self.gone, props={"dept": "light"})
        p.delete_record(self.gone)  # its edge is hidden: the far end is not live

    def calls(self, where: Mapping[str, Any]) -> list[bytes]:
        return [ids.from_text(x) for x in self.p.query({"table": "Calls", "where": where})]


def test_edge_with_other_where(net: Net) -> None:
    """Scenario §8.11: calls whose crew has role "LX"."""
    c = Crew(net.add_peer("A"))
    lx = {"field": "role", "op": "eq", "value": "LX"}
    assert c.calls({"edge": "t.crew", "dir": "out",
                    "other": {"table": "People", "where": lx}}) == [c.c1]
    assert c.calls({"edge": "t.crew", "dir": "out", "other": {"table": "People"}}) == [c.c1, c.c2]
    assert c.calls({"edge": "t.crew", "dir": "out"}) == [c.c1, c.c2]
    # the other end must be a member of other.table
    assert c.calls({"edge": "t.crew", "dir": "out", "other": {"table": "Calls"}}) == []
    # wrong direction: calls are never an edge's dst
    assert c.calls({"edge": "t.crew", "dir": "in"}) == []
    assert c.calls({"not": {"edge": "t.crew", "dir": "out"}}) == [c.c3]


def test_edge_props_and_direction_in(net: Net) -> None:
    c = Crew(net.add_peer("A"))
    light = {"field": "dept", "op": "eq", "value": "light"}
    assert c.calls({"edge": "t.crew", "dir": "out", "props": light}) == [c.c1]
    assert c.calls({"edge": "t.crew", "dir": "out",
                    "props": {"field": "lead", "op": "eq", "value": True}}) == [c.c1]
    # c2's edge has no `lead`: empty, so neither eq nor ne match it
    assert c.calls({"edge": "t.crew", "dir": "out",
                    "props": {"field": "lead", "op": "ne", "value": True}}) == []
    assert c.calls({"edge": "t.crew", "dir": "out",
                    "props": {"field": "lead", "op": "is_empty"}}) == [c.c2]
    people = c.p.query({"table": "People", "where": {
        "edge": "t.crew", "dir": "in", "props": {"field": "dept", "op": "starts_with",
                                                 "value": "so"},
        "other": {"table": "Calls", "where": {"field": "name", "op": "eq", "value": "c2"}}}})
    assert people == [ids.to_text(c.snd)]


def test_edge_nested_hops(net: Net) -> None:
    """Two hops: people on a call that has some crew member whose role is LX."""
    c = Crew(net.add_peer("A"))
    c.p.create_edge("t.crew", c.c1, c.snd, props={"dept": "sound"})
    people = c.p.query({"table": "People", "where": {
        "edge": "t.crew", "dir": "in", "other": {"table": "Calls", "where": {
            "edge": "t.crew", "dir": "out", "other": {"table": "People", "where": {
                "field": "role", "op": "eq", "value": "LX"}}}}}})
    assert people == sorted(ids.to_text(x) for x in (c.lx, c.snd))


# --- ordering and limit --------------------------------------------------------------------------

def test_order_by_empty_last_then_id(items: Items) -> None:
    p = items.p
    r5 = p.create_record("Items", {"name": "apple", "n": 1}).id
    items.names[r5] = "r5"
    r6 = p.create_record("Items", {"n": 2}).id
    items.names[r6] = "r6"
    assert items.q(order_by=[{"field": "name"}]) == ["r2", "r1", "r5", "r3", "r4", "r6"]
    assert items.q(order_by=[{"field": "name", "desc": True}]) == [
        "r3", "r1", "r5", "r2", "r4", "r6"]
    assert items.q(order_by=[{"field": "n", "desc": True}, {"field": "name"}]) == [
        "r3", "r2", "r6", "r1", "r5", "r4"]
    assert items.q(order_by=[{"field": "x"}]) == ["r3", "r1", "r2", "r4", "r5", "r6"]
    assert items.q() == ["r1", "r2", "r3", "r4", "r5", "r6"]  # by id alone
    assert items.q(order_by=[{"field": "d"}], limit=2) == ["r3", "r1"]
    assert items.q({"field": "name", "op": "starts_with", "value": "ap"}, limit=1) == ["r1"]
    assert items.q(order_by=[{"field": "$id", "desc": True}], limit=100000) == [
        "r6", "r5", "r4", "r3", "r2", "r1"]


# --- static typing -------------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    ({"table": "Nope"}, "table"),
    ({"table": 3}, "table"),
    ({"table": "Items", "bogus": 1}, "bogus"),
    ({"table": "Items", "where": {"field": "nope", "op": "eq", "value": 1}}, "where.field"),
    ({"table": "Items", "where": {"all": [{"field": "n", "op": "eq", "value": 1},
                                          {"field": "zz", "op": "eq", "value": 1}]}},
     "where.all[1].field"),
    ({"table": "Items", "where": {"any": [{"not": {"field": "n", "op": "like", "value": 1}}]}},
     "where.any[0].not.op"),
    ({"table": "Items", "where": {"field": "st", "op": "lt", "value": "a"}}, "where.op"),
    ({"table": "Items", "where": {"field": "ok", "op": "gt", "value": True}}, "where.op"),
    ({"table": "Items", "where": {"field": "ref", "op": "ge", "value": "x"}}, "where.op"),
    ({"table": "Items", "where": {"field": "st", "op": "contains", "value": "a"}}, "where.op"),
    ({"table": "Items", "where": {"field": "n", "op": "starts_with", "value": "1"}}, "where.op"),
    ({"table": "Items", "where": {"field": "blob", "op": "eq", "value": BLOB1}}, "where.op"),
    ({"table": "Items", "where": {"field": "body", "op": "eq", "value": "hi"}}, "where.op"),
    ({"table": "Items", "where": {"field": "body", "op": "starts_with", "value": "h"}},
     "where.op"),
    ({"table": "Items", "where": {"field": "$id", "op": "is_empty"}}, "where.op"),
    ({"table": "Items", "where": {"field": "n", "op": "eq", "value": None}}, "where.value"),
    ({"table": "Items", "where": {"field": "n", "op": "eq"}}, "where.value"),
    ({"table": "Items", "where": {"field": "name", "op": "eq", "value": ""}}, "where.value"),
    ({"table": "Items", "where": {"field": "name", "op": "contains", "value": ""}},
     "where.value"),
    ({"table": "Items", "where": {"field": "n", "op": "eq", "value": "1"}}, "where.value"),
    ({"table": "Items", "where": {"field": "n", "op": "eq", "value": True}}, "where.value"),
    ({"table": "Items", "where": {"field": "x", "op": "eq", "value": float("nan")}},
     "where.value"),
    ({"table": "Items", "where": {"field": "st", "op": "eq", "value": "zz"}}, "where.value"),
    ({"table": "Items", "where": {"field": "d", "op": "eq", "value": "2024-02-30"}},
     "where.value"),
    ({"table": "Items", "where": {"field": "ok", "op": "eq", "value": "yes"}}, "where.value"),
    ({"table": "Items", "where": {"field": "ref", "op": "eq", "value": "not-an-id"}},
     "where.value"),
    ({"table": "Items", "where": {"field": "n", "op": "in", "values": []}}, "where.values"),
    ({"table": "Items", "where": {"field": "n", "op": "in", "values": list(range(257))}},
     "where.values"),
    ({"table": "Items", "where": {"field": "n", "op": "in", "values": [1, None]}},
     "where.values[1]"),
    ({"table": "Items", "where": {"field": "n", "op": "eq", "value": 1, "values": [1]}},
     "where.values"),
    ({"table": "Items", "where": {"in_table": "Nope"}}, "where.in_table"),
    ({"table": "Items", "where": {"edge": "t.nope", "dir": "out"}}, "where.edge"),
    ({"table": "Items", "where": {"edge": "t.crew", "dir": "both"}}, "where.dir"),
    ({"table": "Items", "where": {"edge": "t.crew", "dir": "out",
                                  "props": {"field": "nope", "op": "is_empty"}}},
     "where.props.field"),
    ({"table": "Items", "where": {"edge": "t.crew", "dir": "out",
                                  "props": {"field": "lead", "op": "lt", "value": True}}},
     "where.props.op"),
    ({"table": "Items", "where": {"edge": "t.crew", "dir": "out",
                                  "props": {"in_table": "Items"}}}, "where.props"),
    ({"table": "Items", "where": {"edge": "t.crew", "dir": "out",
                                  "other": {"table": "Nope"}}}, "where.other.table"),
    ({"table": "Items", "where": {"edge": "t.crew", "dir": "out", "other": {
        "table": "Items", "where": {"field": "nope", "op": "is_empty"}}}},
     "where.other.where.field"),
    ({"table": "Items", "where": {"wat": 1}}, "where"),
    ({"table": "Items", "where": [1]}, "where"),
    ({"table": "Items", "order_by": [{"field": "nope"}]}, "order_by[0].field"),
    ({"table": "Items", "order_by": [{"field": "n"}, {"field": "st"}]}, "order_by[1].field"),
    ({"table": "Items", "order_by": [{"field": "body"}]}, "order_by[0].field"),
    ({"table": "Items", "order_by": [{"field": "n", "desc": "yes"}]}, "order_by[0].desc"),
    ({"table": "Items", "limit": 0}, "limit"),
    ({"table": "Items", "limit": 100001}, "limit"),
    ({"table": "Items", "limit": 1.0}, "limit"),
]


@pytest.mark.parametrize(("query", "path"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_static_typing_errors(items: Items, query: dict[str, Any], path: str) -> None:
    items.p.define_edge_type("t.crew", "Crew", props={"dept": "text", "lead": "boolean"})
    n = items.p.storage.op_count()
    with pytest.raises(QueryError) as exc:
        items.p.query(query)
    assert exc.value.path == path, exc.value.message
    assert exc.value.code == "invalid_query" and exc.value.details["path"] == path
    assert items.p.storage.op_count() == n


def nest(depth: int) -> dict[str, Any]:
    c: dict[str, Any] = {"field": "n", "op": "is_empty"}
    for _ in range(depth - 1):
        c = {"not": c}
    return c


def hops(k: int) -> dict[str, Any]:
    c: dict[str, Any] = {"edge": "t.link", "dir": "out"}
    for _ in range(k - 1):
        c = {"edge": "t.link", "dir": "out", "other": {"table": "Items", "where": c}}
    return c


def test_depth_and_hop_limits(items: Items) -> None:
    items.p.define_edge_type("t.link", "Link")
    items.p.create_edge("t.link", items.r1, items.r2)
    items.p.create_edge("t.link", items.r2, items.r3)
    items.p.create_edge("t.link", items.r3, items.r4)
    assert items.q(nest(8)) == ["r1", "r2", "r3"]  # seven nots: not_empty
    with pytest.raises(QueryError) as exc:
        items.q(nest(9))
    assert exc.value.path == "where" + ".not" * 8
    assert items.q(hops(3)) == ["r1"]
    with pytest.raises(QueryError) as exc:
        items.q(hops(4))
    assert exc.value.path == "where" + ".other.where" * 3


# --- displayed values: conflicts and overlays ---------------------------------------------------

def test_open_conflict_queried_by_displayed_value(net: Net) -> None:
    a, b = net.add_peer("A"), net.add_peer("B")
    a.create_table("Task", [{"label": "name", "name": "name"}])
    e = a.create_record("Task", {"name": "orig"}).id
    net.sync_all()
    a.update_record(e, {"name": "a"})
    b.clock.set(T0 + 60_000)
    b.update_record(e, {"name": "b"})
    net.sync_all()
    for p in (a, b):
        assert "name" in p.get_record(e)["conflicts"]
        assert p.query({"table": "Task", "where": {"field": "name", "op": "eq", "value": "b"}}
                       ) == [ids.to_text(e)]
        assert p.query({"table": "Task", "where": {"field": "name", "op": "eq", "value": "a"}}
                       ) == []


def test_reopened_conflict_queries_the_accepted_resolution(net: Net) -> None:
    """The displayed value of a reopened conflict is the accepted resolution even when a late
    edit has the higher HLC (spec 02 §1.5): the register holds "d", queries see "r"."""
    a, b, d = net.add_peer("A"), net.add_peer("B"), net.add_peer("D")
    a.create_table("Task", [{"label": "name", "name": "name"}])
    e = a.create_record("Task", {"name": "orig"}).id
    net.sync_all()
    a.update_record(e, {"name": "a"})
    b.update_record(e, {"name": "b"})
    net.sync_all([a, b])
    (rec,) = b.list_conflicts()
    b.resolve_conflict(rec["conflict_id"], "r")
    net.sync(b, a)
    d.clock.set(T0 + 200_000)
    d.update_record(e, {"name": "d"})
    net.sync_all()
    for p in (a, b, d):
        f = p.views.table("Task").field("name")
        assert p.views.slot_value(e, p.proj.slot_of(f.facet, f.name)) == ["text", "d"]
        assert p.query({"table": "Task", "where": {"field": "name", "op": "eq", "value": "r"}}
                       ) == [ids.to_text(e)]
        assert p.query({"table": "Task", "where": {"field": "name", "op": "eq", "value": "d"}}
                       ) == []


def test_overlay_context(net: Net) -> None:
    """Scenario §8.11: an overlay-created call is visible and an overlay-deleted one hidden, in
    that overlay only; staged field values and edges are what the overlay reads."""
    c = Crew(net.add_peer("A"))
    p = c.p
    calls = {"table": "Calls"}
    with_lx = {"table": "Calls", "where": {"edge": "t.crew", "dir": "out", "other": {
        "table": "People", "where": {"field": "role", "op": "eq", "value": "LX"}}}}
    oid = p.create_overlay("draft")
    new = p.create_record("Calls", {"name": "new"}).id
    p.create_edge("t.crew", new, c.lx)
    p.delete_record(c.c2)
    p.update_record(c.c3, {"name": "renamed"})
    t = ids.to_text
    assert p.query(calls) == sorted(t(x) for x in (c.c1, c.c3, new))
    assert p.query(with_lx) == sorted(t(x) for x in (c.c1, new))
    assert p.query({"table": "Calls", "where": {"field": "name", "op": "eq",
                                                "value": "renamed"}}) == [t(c.c3)]
    assert p.query(calls, canonical=True) == [t(x) for x in (c.c1, c.c2, c.c3)]
    assert p.query(with_lx, canonical=True) == [t(c.c1)]
    p.stash_overlay(oid)
    assert p.query(calls) == [t(x) for x in (c.c1, c.c2, c.c3)]
    other = p.create_overlay("other")  # isolation: another overlay sees none of it
    assert p.query(calls) == [t(x) for x in (c.c1, c.c2, c.c3)]
    p.discard_overlay(other)


def test_run_over_views_directly(items: Items) -> None:
    """`run` also takes a `Views` (canonical) and returns raw ids."""
    qry = Q.check({"table": "Items", "where": {"field": "n", "op": "ge", "value": 2}},
                  items.p.views)
    assert Q.run(qry, items.p.views) == sorted([items.r2, items.r3])


# --- property test: run vs a brute-force reading of the spec ------------------------------------

PROP_FIELDS: list[dict[str, Any]] = [
    {"label": "s", "name": "s"},
    {"label": "i", "name": "i", "type": "integer"},
    {"label": "f", "name": "f", "type": "float"},
    {"label": "e", "name": "e", "type": "enum", "options": {"choices": ["p", "q", "r"]}},
    {"label": "b", "name": "b", "type": "boolean"},
]
FTYPE = {"s": "text", "i": "integer", "f": "float", "e": "enum", "b": "boolean"}
# small domains, so literals often equal stored values (where lt/le and gt/ge differ)
LITS: dict[str, st.SearchStrategy[Any]] = {
    "s": st.sampled_from(["a", "ab", "B", "\u00e9"]),
    "i": st.one_of(st.integers(-1, 1), st.sampled_from([0.5, 1.0])),
    "f": st.one_of(st.sampled_from([-1.5, 0.0, 0.5]), st.integers(-1, 1)),
    "e": st.sampled_from(["p", "q", "r"]),
    "b": st.booleans(),
}
VALS: dict[str, st.SearchStrategy[Any]] = {
    "s": st.one_of(st.none(), st.just(""), st.sampled_from(["a", "ab", "B", "ba", "\u00e9",
                                                            "a\u00e9"])),
    "i": st.one_of(st.none(), st.integers(-1, 1)),
    "f": st.one_of(st.none(), st.sampled_from([-1.5, 0.0, 0.5, 1.0])),
    "e": st.one_of(st.none(), LITS["e"]),
    "b": st.one_of(st.none(), st.booleans()),
}
OPS = {"s": ["eq", "ne", "lt", "le", "gt", "ge", "in", "contains", "starts_with", "is_empty",
             "not_empty"],
       "i": ["eq", "ne", "lt", "le", "gt", "ge", "in", "is_empty", "not_empty"],
       "f": ["eq", "ne", "lt", "le", "gt", "ge", "in", "is_empty", "not_empty"],
       "e": ["eq", "ne", "in", "is_empty", "not_empty"],
       "b": ["eq", "ne", "in", "is_empty", "not_empty"]}


@st.composite
def leaf(draw: st.DrawFn) -> dict[str, Any]:
    # the op first, so rarely allowed ones (lt, starts_with) come up as often as eq
    op = draw(st.sampled_from(OPS["s"]))
    f = draw(st.sampled_from([k for k in sorted(FTYPE) if op in OPS[k]]))
    if op in ("is_empty", "not_empty"):
        return {"field": f, "op": op}
    if op == "in":
        return {"field": f, "op": op, "values": draw(st.lists(LITS[f], min_size=1, max_size=3))}
    if op in ("contains", "starts_with"):
        return {"field": f, "op": op, "value": draw(LITS["s"])}
    return {"field": f, "op": op, "value": draw(LITS[f])}


conds = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)


def _empty(v: Any) -> bool:
    return v is None or v == ""


def brute(c: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """The spec's wording, evaluated directly on the values the test wrote."""
    if "all" in c:
        return all(brute(x, row) for x in c["all"])
    if "any" in c:
        return any(brute(x, row) for x in c["any"])
    if "not" in c:
        return not brute(c["not"], row)
    v, op = row[c["field"]], c["op"]
    if op == "is_empty":
        return _empty(v)
    if op == "not_empty":
        return not _empty(v)
    if _empty(v):
        return False
    if op == "in":
        return any(v == x for x in c["values"])
    x = c["value"]
    return {"eq": v == x, "ne": v != x, "lt": v < x, "le": v <= x, "gt": v > x, "ge": v >= x,
            "contains": op == "contains" and isinstance(v, str) and x in v,
            "starts_with": op == "starts_with" and isinstance(v, str) and v.startswith(x),
            }[op]


def brute_order(rows: dict[bytes, dict[str, Any]], hits: list[bytes],
                order: list[dict[str, Any]]) -> list[bytes]:
    def cmp(a: bytes, b: bytes) -> int:
        for k in order:
            va, vb = rows[a][k["field"]], rows[b][k["field"]]
            if _empty(va) and _empty(vb):
                continue
            if _empty(va) or _empty(vb):
                return 1 if _empty(va) else -1  # empty last, whichever direction
            if va != vb:
                r = -1 if va < vb else 1
                return -r if k.get("desc") else r
        return -1 if a < b else (1 if a > b else 0)
    return sorted(hits, key=functools.cmp_to_key(cmp))


@settings(max_examples=150)
@given(rows=st.lists(st.fixed_dictionaries({k: v for k, v in VALS.items()}), min_size=2,
                     max_size=10),
       where=conds,
       order=st.lists(st.builds(lambda f, d: {"field": f, "desc": d},
                                st.sampled_from(["s", "i", "f"]), st.booleans()), max_size=2),
       limit=st.one_of(st.none(), st.integers(1, 5)))
def test_run_matches_brute_force(rows: list[dict[str, Any]], where: dict[str, Any],
                                 order: list[dict[str, Any]], limit: int | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        net = Net(Path(d))
        try:
            p = net.add_peer("A")
            p.create_table("P", PROP_FIELDS)
            by_id: dict[bytes, dict[str, Any]] = {}
            for r in rows:
                e = p.create_record("P", r).id
                by_id[e] = r
            q: dict[str, Any] = {"table": "P", "where": where, "order_by": order}
            if limit is not None:
                q["limit"] = limit
            got = [ids.from_text(x) for x in p.query(q)]
            hits = [e for e, r in by_id.items() if brute(where, r)]
            want = brute_order(by_id, hits, order)
            assert got == (want if limit is None else want[:limit])
        finally:
            for peer in net.peers:
                peer.ws.close()
