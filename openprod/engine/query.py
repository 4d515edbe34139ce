"""The V1 query form (spec 04 §5): static checking of a query mapping and its evaluation.

Owns `check` (a query mapping + the schema -> a typed `Query`, or `QueryError` naming the path
of the first problem) and `run` (a `Query` + a `Reader` -> matching entity ids in result order).
Evaluation is plain Python filtering over the query table's live members: it reads records and
edges only through a `Reader`, so it sees exactly the displayed values (spec 02 §1.5) the read
model shows, canonical or canonical + one overlay (spec 02 §2.5) depending on the reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from openprod.core import ids, values
from openprod.core.errors import NotFound, ValidationError
from openprod.engine.views import TableDef, Views

MAX_DEPTH = 8
MAX_EDGE_HOPS = 3
MAX_IN = 256
MAX_LIMIT = 100_000
ID_FIELD = "$id"

COMPARE_OPS = frozenset(["eq", "ne", "lt", "le", "gt", "ge"])
EQUALITY_OPS = frozenset(["eq", "ne", "in"])
ORDERING_OPS = COMPARE_OPS | {"in"}
TEXT_OPS = frozenset(["contains", "starts_with"])
EMPTY_OPS = frozenset(["is_empty", "not_empty"])
ORDERED_FTYPES = frozenset(["integer", "float", "date", "datetime", "duration", "text"])
NUMERIC_FTYPES = frozenset(["integer", "float"])


class QueryError(ValidationError):
    """A query that fails the static check; `path` locates the offending part
    (`where.all[1].field`)."""

    code = "invalid_query"

    def __init__(self, message: str, path: str, **details: Any) -> None:
        super().__init__(f"{path}: {message}", path=path, **details)
        self.path = path


# --- the checked form ---------------------------------------------------------------------------

@attrs.frozen
class FieldRef:
    """A field of the scope's table (or edge property, or `$id`) with what typing needs."""

    name: str
    ftype: str
    crdt: bool = False
    facet: str | None = None  # the field's own facet (None: `$id` or an edge property)


@attrs.frozen
class All:
    items: tuple[Cond, ...]


@attrs.frozen
class AnyOf:
    items: tuple[Cond, ...]


@attrs.frozen
class Not:
    item: Cond


@attrs.frozen
class Compare:
    """eq/ne/lt/le/gt/ge/contains/starts_with against one normalized literal."""

    field: FieldRef
    op: str
    value: Any


@attrs.frozen
class In:
    field: FieldRef
    values: tuple[Any, ...]


@attrs.frozen
class Emptiness:
    field: FieldRef
    empty: bool


@attrs.frozen
class InTable:
    facet: str


@attrs.frozen
class OtherEnd:
    facet: str
    where: Cond | None


@attrs.frozen
class EdgeCond:
    etype: str
    dir: str  # "out": the scope entity is the edge's src; "in": its dst
    props: Cond | None
    other: OtherEnd | None


Cond = All | AnyOf | Not | Compare | In | Emptiness | InTable | EdgeCond


@attrs.frozen
class OrderKey:
    field: FieldRef
    desc: bool


@attrs.frozen
class Query:
    table: str  # facet id
    where: Cond | None
    order_by: tuple[OrderKey, ...]
    limit: int | None


class Schema(Protocol):
    """What `check` needs: `Views` satisfies it."""

    def table(self, ref: str) -> TableDef: ...

    def edge_type(self, t: str) -> dict[str, Any] | None: ...


# --- static check -------------------------------------------------------------------------------

_QUERY_KEYS = frozenset(["table", "where", "order_by", "limit"])


def check(q: Mapping[str, Any], schema: Schema) -> Query:
    """Type-check a query mapping against the schema (spec 04 §5). Tables are named as the read
    model names them (`Views.table`: id `module.Table` or label), fields as `TableDef.field`
    does (name or label), plus `$id`."""
    if not isinstance(q, Mapping):
        raise QueryError("a query must be a mapping", "query")
    _no_extra(q, _QUERY_KEYS, "")
    table = _table(schema, q.get("table"), "table")
    where = None
    if "where" in q:
        where = _Checker(schema).cond(q["where"], table, "where", 1, 0)
    order: list[OrderKey] = []
    raw_order = q.get("order_by", [])
    if not isinstance(raw_order, list | tuple):
        raise QueryError("order_by must be a list", "order_by")
    for i, item in enumerate(raw_order):
        path = f"order_by[{i}]"
        if not isinstance(item, Mapping):
            raise QueryError("an order_by item must be a mapping", path)
        _no_extra(item, frozenset(["field", "desc"]), path + ".")
        f = _field(table, item.get("field"), path + ".field")
        if f.name != ID_FIELD and (f.ftype not in ORDERED_FTYPES or f.crdt):
            raise QueryError(f"cannot order by a {_kind(f)} field", path + ".field")
        desc = item.get("desc", False)
        if type(desc) is not bool:
            raise QueryError("desc must be true or false", path + ".desc")
        order.append(OrderKey(f, desc))
    limit = q.get("limit")
    if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_LIMIT):
        raise QueryError(f"limit must be an integer 1..{MAX_LIMIT}", "limit")
    return Query(table.facet, where, tuple(order), limit)


def _no_extra(m: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for k in m:
        if k not in allowed:
            raise QueryError(f"unknown key {k!r}", f"{prefix}{k}")


def _table(schema: Schema, ref: object, path: str) -> TableDef:
    if not isinstance(ref, str) or not ref:
        raise QueryError("a table is named by its id or label", path)
    try:
        return schema.table(ref)
    except NotFound:
        raise QueryError(f"no table {ref!r}", path) from None


def _field(table: TableDef, ref: object, path: str) -> FieldRef:
    if not isinstance(ref, str) or not ref:
        raise QueryError("a field is named by its name or label", path)
    if ref == ID_FIELD:
        return FieldRef(ID_FIELD, "entity_ref")
    try:
        f = table.field(ref)
    except NotFound:
        raise QueryError(f"table {table.label!r} has no field {ref!r}", path) from None
    return FieldRef(f.name, f.ftype, f.crdt, f.facet)


def _kind(f: FieldRef) -> str:
    return "collaborative text" if f.crdt else f.ftype


def _allowed_ops(f: FieldRef) -> frozenset[str]:
    """Spec 04 §5's operator table."""
    if f.name == ID_FIELD:
        return EQUALITY_OPS  # the id is never empty, so emptiness tests would be constant
    if f.crdt:
        return EMPTY_OPS | {"contains"}
    if f.ftype == "blob_ref":
        return EMPTY_OPS
    if f.ftype == "text":
        return ORDERING_OPS | TEXT_OPS | EMPTY_OPS
    if f.ftype in ORDERED_FTYPES:
        return ORDERING_OPS | EMPTY_OPS
    return EQUALITY_OPS | EMPTY_OPS  # enum, boolean, entity_ref


class _Checker:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def cond(self, c: object, table: TableDef | None, path: str, depth: int, hops: int,
             props: Mapping[str, str] | None = None) -> Cond:
        """One condition in the scope of `table`, or of an edge type's properties (`props`,
        where in_table and edge conditions have no entity to apply to)."""
        if depth > MAX_DEPTH:
            raise QueryError(f"conditions nest deeper than {MAX_DEPTH}", path)
        if not isinstance(c, Mapping):
            raise QueryError("a condition must be a mapping", path)
        sub = depth + 1
        if "all" in c or "any" in c:
            key = "all" if "all" in c else "any"
            _no_extra(c, frozenset([key]), path + ".")
            items = c[key]
            if not isinstance(items, list | tuple):
                raise QueryError(f"{key} takes a list of conditions", f"{path}.{key}")
            checked = tuple(self.cond(x, table, f"{path}.{key}[{i}]", sub, hops, props)
                            for i, x in enumerate(items))
            return All(checked) if key == "all" else AnyOf(checked)
        if "not" in c:
            _no_extra(c, frozenset(["not"]), path + ".")
            return Not(self.cond(c["not"], table, path + ".not", sub, hops, props))
        if "in_table" in c:
            _no_extra(c, frozenset(["in_table"]), path + ".")
            if table is None:
                raise QueryError("in_table does not apply to edge properties", path)
            return InTable(_table(self.schema, c["in_table"], path + ".in_table").facet)
        if "edge" in c:
            if table is None:
                raise QueryError("edge conditions do not apply to edge properties", path)
            return self.edge(c, path, sub, hops + 1)
        if "field" in c:
            return self.field_cond(c, table, path, props)
        raise QueryError("not a condition (all, any, not, field, in_table or edge)", path)

    def edge(self, c: Mapping[str, Any], path: str, sub: int, hops: int) -> EdgeCond:
        _no_extra(c, frozenset(["edge", "dir", "props", "other"]), path + ".")
        if hops > MAX_EDGE_HOPS:
            raise QueryError(f"more than {MAX_EDGE_HOPS} edge hops", path)
        etype = c["edge"]
        et = self.schema.edge_type(etype) if isinstance(etype, str) else None
        if et is None:
            raise QueryError(f"no edge type {etype!r}", path + ".edge")
        direction = c.get("dir")
        if direction not in ("out", "in"):
            raise QueryError("dir must be out or in", path + ".dir")
        props = None
        if "props" in c:
            props = self.cond(c["props"], None, path + ".props", sub, hops,
                              dict(et.get("props") or {}))
        other = None
        if "other" in c:
            o = c["other"]
            if not isinstance(o, Mapping):
                raise QueryError("other must be a mapping", path + ".other")
            _no_extra(o, frozenset(["table", "where"]), path + ".other.")
            ot = _table(self.schema, o.get("table"), path + ".other.table")
            ow = None
            if "where" in o:
                ow = self.cond(o["where"], ot, path + ".other.where", sub, hops)
            other = OtherEnd(ot.facet, ow)
        return EdgeCond(etype, direction, props, other)

    def field_cond(self, c: Mapping[str, Any], table: TableDef | None, path: str,
                   props: Mapping[str, str] | None) -> Cond:
        op = c.get("op")
        if not isinstance(op, str) or op not in (COMPARE_OPS | TEXT_OPS | EMPTY_OPS | {"in"}):
            raise QueryError(f"unknown op {op!r}", path + ".op")
        if table is not None:
            f = _field(table, c["field"], path + ".field")
            choices = table.field(f.name).choices if f.name != ID_FIELD else None
        else:
            assert props is not None
            name = c["field"]
            if not isinstance(name, str) or name not in props:
                raise QueryError(f"the edge type has no property {name!r}", path + ".field")
            f, choices = FieldRef(name, props[name]), None
        if op not in _allowed_ops(f):
            raise QueryError(f"{op} does not apply to a {_kind(f)} field", path + ".op")
        if op in EMPTY_OPS:
            _no_extra(c, frozenset(["field", "op"]), path + ".")
            return Emptiness(f, op == "is_empty")
        if op == "in":
            _no_extra(c, frozenset(["field", "op", "values"]), path + ".")
            vs = c.get("values")
            if not isinstance(vs, list | tuple) or not 1 <= len(vs) <= MAX_IN:
                raise QueryError(f"in takes 1..{MAX_IN} values", path + ".values")
            return In(f, tuple(_literal(f, x, choices, f"{path}.values[{i}]")
                               for i, x in enumerate(vs)))
        _no_extra(c, frozenset(["field", "op", "value"]), path + ".")
        if "value" not in c:
            raise QueryError(f"{op} needs a value", path + ".value")
        if op in TEXT_OPS:
            v = c["value"]
            if type(v) is not str or not v:
                raise QueryError(f"{op} needs a non-empty string", path + ".value")
            return Compare(f, op, v)
        return Compare(f, op, _literal(f, c["value"], choices, path + ".value"))


def _literal(f: FieldRef, x: object, choices: list[str] | None, path: str) -> Any:
    """A literal in the displayed (user) form of f's values. Never null or empty: an empty
    literal could never match (spec 04 §5), so writing one is a mistake worth reporting."""
    if x is None:
        raise QueryError("a literal cannot be null", path)
    if f.ftype in NUMERIC_FTYPES:
        # integer vs float compare numerically, so either field type takes either literal
        if type(x) not in (int, float) or (type(x) is float and not math.isfinite(x)):
            raise QueryError(f"expected a number for a {f.ftype} field", path)
        return x
    if f.ftype == "text" and x == "":
        raise QueryError("a literal cannot be empty", path)
    try:
        return values.to_user(values.from_user(f.ftype, x, choices=choices))
    except ValidationError as exc:
        raise QueryError(exc.message, path) from None


# --- evaluation ---------------------------------------------------------------------------------

@attrs.frozen
class EdgeRow:
    src: bytes
    dst: bytes
    props: Mapping[str, Any]
    edge: bytes | None = None


class Reader(Protocol):
    """The read context a query runs in: canonical, or canonical + one overlay."""

    def values_of(self, facet: str, e: bytes) -> Mapping[str, Any] | None:
        """A live member's displayed values in that table by field name; None when e is not a
        live member of it."""
        ...

    def edges_at(self, etype: str, direction: str, e: bytes) -> Sequence[EdgeRow]:
        """Visible (live, both ends live) edges of a type whose src (direction "out") or dst
        ("in") is e, props as displayed."""
        ...

    def is_live(self, e: bytes) -> bool: ...

    def resolve(self, e: bytes) -> bytes:
        """Follow merge redirects."""
        ...


class RecordReader:
    """A `Reader` over the read model's record and edge listings (the same calls the UI and API
    read through, so displayed values, conflicts and overlays are handled once, there).

    `records(facet)` -> [{"id": text, "values": {...}}], `edges(etype)` -> [{"src", "dst",
    "props"}]; both are cached for one query run."""

    def __init__(self, records: Callable[[str], list[dict[str, Any]]],
                 edges: Callable[[str], list[dict[str, Any]]],
                 is_live: Callable[[bytes], bool], resolve: Callable[[bytes], bytes]) -> None:
        self._records = records
        self._edges = edges
        self._is_live = is_live
        self._resolve = resolve
        self._mcache: dict[str, dict[bytes, Mapping[str, Any]]] = {}
        self._ecache: dict[str, list[EdgeRow]] = {}
        self._index: dict[tuple[str, str], dict[bytes, list[EdgeRow]]] = {}

    @classmethod
    def canonical(cls, views: Views) -> RecordReader:
        """Canonical reads straight from `Views`. Shown values of open conflicts come from the
        conflict projection as far as it has caught up; `Workspace.query` catches it up first."""
        return cls(lambda f: views.records(views.table(f)),
                   lambda t: views.list_edges(None, t, "both"),
                   views.is_live, views.proj.resolve)

    def values_of(self, facet: str, e: bytes) -> Mapping[str, Any] | None:
        return self.members(facet).get(e)

    def members(self, facet: str) -> Mapping[bytes, Mapping[str, Any]]:
        """Live members of a table -> their displayed values (what `run` filters)."""
        m = self._mcache.get(facet)
        if m is None:
            m = {ids.from_text(r["id"]): r["values"] for r in self._records(facet)}
            self._mcache[facet] = m
        return m

    def edges(self, etype: str) -> Sequence[EdgeRow]:
        es = self._ecache.get(etype)
        if es is None:
            es = [EdgeRow(ids.from_text(d["src"]), ids.from_text(d["dst"]), d.get("props") or {})
                  for d in self._edges(etype) if d.get("type") == etype]
            self._ecache[etype] = es
        return es

    def edges_at(self, etype: str, direction: str, e: bytes) -> Sequence[EdgeRow]:
        idx = self._index.get((etype, direction))
        if idx is None:
            idx = {}
            for row in self.edges(etype):
                idx.setdefault(row.src if direction == "out" else row.dst, []).append(row)
            self._index[(etype, direction)] = idx
        return idx.get(e, ())

    def is_live(self, e: bytes) -> bool:
        return self._is_live(e)

    def resolve(self, e: bytes) -> bytes:
        return self._resolve(e)


def run(query: Query, source: Views | RecordReader) -> list[bytes]:
    """The ids of the query table's live members matching `where`, ordered by `order_by`
    (empty values last, whichever direction), then by id; at most `limit`."""
    reader = RecordReader.canonical(source) if isinstance(source, Views) else source
    ev = Evaluator(reader)
    members = reader.members(query.table)
    hits = sorted(e for e, vals in members.items()
                  if query.where is None or ev.test(query.where, e, vals))
    for key in reversed(query.order_by):  # stable sorts, least significant key first
        def sort_key(e: bytes, key: OrderKey = key) -> tuple[Any, ...]:
            v = ev.value(key.field, e, members[e])
            if v is None:
                return (0,) if key.desc else (1,)
            return (1, v) if key.desc else (0, v)
        hits.sort(key=sort_key, reverse=key.desc)
    return hits if query.limit is None else hits[:query.limit]


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,), "enum": (str,), "date": (str,), "entity_ref": (str,), "blob_ref": (str,),
    "integer": (int,), "duration": (int,), "datetime": (int,), "float": (float, int),
    "boolean": (bool,),
}


class Evaluator:
    """Tests checked conditions against one entity's displayed values, through a Reader."""

    def __init__(self, reader: Reader) -> None:
        self.r = reader

    def value(self, f: FieldRef, e: bytes | None, vals: Mapping[str, Any]) -> Any:
        """The comparable form of a displayed value, or None when it is empty: never set,
        cleared, an empty text, or a reference to a record that is not live."""
        if f.name == ID_FIELD:
            assert e is not None
            return ids.to_text(e)
        v = vals.get(f.name)
        if v is None or (v == "" and f.ftype == "text"):
            return None
        if type(v) not in _PY_TYPES.get(f.ftype, ()):  # a shape the read model never shows
            return None
        if f.ftype == "entity_ref":
            return self._ref(v)
        return v

    def _ref(self, text: str) -> str | None:
        try:
            target = self.r.resolve(ids.from_text(text))
        except ValueError:
            return None
        return ids.to_text(target) if self.r.is_live(target) else None

    def _lit(self, f: FieldRef, x: Any) -> Any:
        # a literal naming a merged record means its survivor, as stored references do
        return ids.to_text(self.r.resolve(ids.from_text(x))) if f.ftype == "entity_ref" else x

    def test(self, c: Cond, e: bytes | None, vals: Mapping[str, Any]) -> bool:
        """c for entity e (None in an edge property scope) whose values are vals."""
        if isinstance(c, All):
            return all(self.test(x, e, vals) for x in c.items)
        if isinstance(c, AnyOf):
            return any(self.test(x, e, vals) for x in c.items)
        if isinstance(c, Not):
            return not self.test(c.item, e, vals)
        if isinstance(c, Emptiness):
            return (self.value(c.field, e, vals) is None) == c.empty
        if isinstance(c, Compare):
            v = self.value(c.field, e, vals)
            return v is not None and _compare(c.op, v, self._lit(c.field, c.value))
        if isinstance(c, In):
            v = self.value(c.field, e, vals)
            return v is not None and any(v == self._lit(c.field, x) for x in c.values)
        assert e is not None
        if isinstance(c, InTable):
            return self.r.values_of(c.facet, e) is not None
        return self._edge(c, e)

    def _edge(self, c: EdgeCond, e: bytes) -> bool:
        for row in self.r.edges_at(c.etype, c.dir, e):
            other = row.dst if c.dir == "out" else row.src
            if c.props is not None and not self.test(c.props, None, row.props):
                continue
            if c.other is None:
                if self.r.is_live(other):
                    return True
                continue
            ovals = self.r.values_of(c.other.facet, other)
            if ovals is not None and (c.other.where is None
                                      or self.test(c.other.where, other, ovals)):
                return True
        return False


def _compare(op: str, v: Any, lit: Any) -> bool:
    if op == "eq":
        return bool(v == lit)
    if op == "ne":
        return bool(v != lit)
    if op == "lt":
        return bool(v < lit)
    if op == "le":
        return bool(v <= lit)
    if op == "gt":
        return bool(v > lit)
    if op == "ge":
        return bool(v >= lit)
    if op == "contains":
        return isinstance(v, str) and lit in v
    if op == "starts_with":
        return isinstance(v, str) and v.startswith(lit)
    raise AssertionError(op)


def as_text(xs: Iterable[bytes]) -> list[str]:
    return [ids.to_text(x) for x in xs]

