"""The rules engine (spec 04 §6): table-membership rules evaluated inside local commands.

Owns the rule document (`PutConfig("rule", id)`: checking, normalizing, compiling it against the
schema), the automation graph (what each rule writes and watches, keyed by mapping slot) with
static cycle detection and the derived suspension of rules in rule-only cycles, and the
evaluation of one triggering event: the touched keys of a batch, the candidate (rule, entity)
pairs, `match = member(source) ∧ when` before and after, the generated ops (same bundle) or
proposals, repeated on the generated ops at depth + 1 under the event's limits.

Pure and synchronous: states are read through `StateView` (the canonical read model, or a
`Layer` of payloads over another view — an overlay's staged ops, the batch being evaluated),
so the same code evaluates canonical commands, overlay edits and proposal acceptance.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from openprod.core import codec, ids, values
from openprod.core import ops as O
from openprod.core.errors import NotFound, ValidationError
from openprod.engine import crdt
from openprod.engine import query as querymod
from openprod.engine.manifest import find_cycles, strongly_connected
from openprod.engine.views import TableDef, Views, _read

RULE_NS = "rule"
MAX_DEPTH = 1000
MAX_SECONDS = 30.0
MAX_OPS_PER_OP = 1000
CHAIN_REPORT = 20
MAX_SET = 256
ON_CONDITION_LOST = ("propose_detach", "ignore", "auto_detach")
SET_MODES = ("fill_if_empty", "always")
DOC_KEYS = frozenset(["label", "source", "when", "action", "target", "set", "auto_accept",
                      "on_condition_lost", "enabled"])
MODULE_RULE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\.[a-z][a-z0-9_]{0,63}$")
UUID_HEX_RE = re.compile(r"^[0-9a-f]{32}$")

Key = str  # a field slot, "@member:<facet>" or "@edge:<type>"
Via = tuple[tuple[str, str], ...]  # edge hops (type, dir) from the rule's entity to the key's


class RuleError(ValidationError):
    """A rule document that does not check; `path` names the offending key."""

    code = "invalid_rule"

    def __init__(self, message: str, path: str, **details: Any) -> None:
        super().__init__(f"{path}: {message}" if path else message, path=path, **details)


class RuleNotFound(NotFound):
    code = "rule_not_found"


class CycleDetected(ValidationError):
    code = "cycle_detected"

    def __init__(self, path: str, keys: list[dict[str, str]]) -> None:
        super().__init__(f"this would make automations trigger each other: {path}",
                         path=path, keys=keys)


class RuleLimitExceeded(ValidationError):
    """A triggering event whose rule chain breached a limit: nothing was written or staged."""

    code = "rule_limit_exceeded"

    def __init__(self, limit: str, message: str, chain: list[dict[str, Any]]) -> None:
        super().__init__(message, limit=limit, chain=chain[:CHAIN_REPORT])


# --- rule documents -----------------------------------------------------------------------------

def valid_rule_id(rid: object) -> bool:
    return isinstance(rid, str) and bool(MODULE_RULE_RE.match(rid) or UUID_HEX_RE.match(rid))


def new_rule_id() -> str:
    return ids.new_id().hex()


def normalize(rid: str, doc: Mapping[str, Any], views: Views) -> dict[str, Any]:
    """Check a rule document and return its stored form (tables by id, defaults filled in).

    A module rule (`module.rule`) may name tables that do not exist yet: it is stored and stays
    dormant until they do. A workspace rule must name existing tables."""
    if not valid_rule_id(rid):
        raise RuleError("a rule id is `module.rule` or 32 hex digits", "id")
    if not isinstance(doc, Mapping):
        raise RuleError("a rule must be an object", "")
    for k in doc:
        if k not in DOC_KEYS:
            raise RuleError(f"unknown key {k!r}", str(k))
    label = doc.get("label", rid)
    if not isinstance(label, str) or not label.strip() or len(label) > O.MAX_LABEL:
        raise RuleError(f"a label is 1-{O.MAX_LABEL} characters", "label")
    if doc.get("action", "add_to_table") != "add_to_table":
        raise RuleError("the only V1 action is 'add_to_table'", "action")
    out: dict[str, Any] = {"label": label.strip(), "action": "add_to_table"}
    module_rule = bool(MODULE_RULE_RE.match(rid))
    for k in ("source", "target"):
        ref = doc.get(k)
        if not isinstance(ref, str) or not ref:
            raise RuleError(f"{k} names a table", k)
        try:
            out[k] = views.table(ref).facet
        except NotFound:
            if not module_rule:
                raise RuleError(f"no table {ref!r}", k) from None
            out[k] = ref
    if out["source"] == out["target"]:
        raise RuleError("a rule adds records of one table to another table", "target")
    for k in ("auto_accept", "enabled"):
        x = doc.get(k, False)
        if type(x) is not bool:
            raise RuleError(f"{k} must be true or false", k)
        out[k] = x
    lost = doc.get("on_condition_lost", "propose_detach")
    if lost not in ON_CONDITION_LOST:
        raise RuleError(f"on_condition_lost is one of {', '.join(ON_CONDITION_LOST)}",
                        "on_condition_lost")
    out["on_condition_lost"] = lost
    when = doc.get("when")
    if when is not None and not isinstance(when, Mapping):
        raise RuleError("when is a condition object", "when")
    out["when"] = when
    sets = doc.get("set", [])
    if not isinstance(sets, list | tuple) or len(sets) > MAX_SET:
        raise RuleError(f"set is a list of at most {MAX_SET} entries", "set")
    norm_sets: list[dict[str, Any]] = []
    for i, s in enumerate(sets):
        path = f"set[{i}]"
        if not isinstance(s, Mapping):
            raise RuleError("a set entry is an object", path)
        for k in s:
            if k not in ("field", "value", "copy_from", "mode"):
                raise RuleError(f"unknown key {k!r}", f"{path}.{k}")
        if not isinstance(s.get("field"), str):
            raise RuleError("a set entry names a field of the target", f"{path}.field")
        if ("value" in s) == ("copy_from" in s) or s.get("value", 0) is None:
            raise RuleError("a set entry has exactly one of value, copy_from", path)
        mode = s.get("mode", "fill_if_empty")
        if mode not in SET_MODES:
            raise RuleError("mode is fill_if_empty or always", f"{path}.mode")
        entry = {"field": s["field"], "mode": mode}
        if "value" in s:
            entry["value"] = s["value"]
        else:
            if not isinstance(s["copy_from"], str):
                raise RuleError("copy_from names a field of the source", f"{path}.copy_from")
            entry["copy_from"] = s["copy_from"]
        norm_sets.append(entry)
    out["set"] = norm_sets
    # Type-check against the schema now when the tables exist (04 §5 static typing).
    compiled = compile_rule(rid, out, views, views.proj.slot_of)
    if isinstance(compiled, Rule):
        if when is not None:  # stored by field name and table id, so relabelling is harmless
            out["when"] = _by_name(when, views.table(out["source"]), views)
        # `set` names are stored as the field names the compiled rule resolved
        out["set"] = [{**e, "field": s.field} | ({"copy_from": s.copy_from} if s.copy_from
                                                  else {})
                      for e, s in zip(norm_sets, compiled.sets, strict=True)]
    try:
        codec.check(out)
    except Exception as exc:
        raise RuleError(f"not storable: {exc}", "") from None
    return out


def _by_name(c: Any, table: TableDef | None, views: Views) -> Any:
    """A checked condition with fields named by name and tables by id (labels are for
    people and may change)."""
    if not isinstance(c, Mapping):
        return c
    out = dict(c)
    for k in ("all", "any"):
        if k in out:
            out[k] = [_by_name(x, table, views) for x in out[k]]
    if "not" in out:
        out["not"] = _by_name(out["not"], table, views)
    if "in_table" in out:
        out["in_table"] = views.table(out["in_table"]).facet
    if "field" in out and table is not None and out["field"] != querymod.ID_FIELD:
        out["field"] = table.field(out["field"]).name
    if "edge" in out:
        if "props" in out:
            out["props"] = _by_name(out["props"], None, views)
        other = out.get("other")
        if isinstance(other, Mapping):
            ot = views.table(other["table"])
            o = {"table": ot.facet}
            if "where" in other:
                o["where"] = _by_name(other["where"], ot, views)
            out["other"] = o
    return out


# --- compiled rules -----------------------------------------------------------------------------

@attrs.frozen
class SetSpec:
    field: str  # target field name
    ftype: str
    choices: list[str] | None
    value: Any  # user form, or None with copy_from
    copy_from: str | None
    always: bool


@attrs.frozen
class Rule:
    id: str
    label: str
    source: str
    target: str
    when: querymod.Cond | None
    sets: tuple[SetSpec, ...]
    auto_accept: bool
    on_condition_lost: str
    watches: tuple[tuple[Key, Via], ...]
    writes: frozenset[Key]


@attrs.frozen
class Dormant:
    id: str
    reason: str


def compile_rule(rid: str, doc: Mapping[str, Any], views: Views,
                 slot_of: Callable[[str, str], str],
                 tables: Mapping[str, TableDef] | None = None) -> Rule | Dormant:
    """A stored document against the current schema: a `Rule`, or `Dormant` while a table it
    names does not exist (a field or type problem in an existing table raises RuleError).
    `tables`: the schema's tables by facet, when the caller already read them."""
    if tables is None:
        tables = {t.facet: t for t in views.tables()}
    for k in ("source", "target"):
        if doc[k] not in tables:
            return Dormant(rid, f"table {doc[k]} does not exist here yet")
    src, tgt = tables[doc["source"]], tables[doc["target"]]
    when = None
    if doc.get("when") is not None:
        try:
            when = querymod.check({"table": src.facet, "where": doc["when"]}, views).where
        except querymod.QueryError as exc:
            raise RuleError(exc.message, "when") from None
    sets: list[SetSpec] = []
    writes: set[Key] = {f"@member:{tgt.facet}"}
    seen: set[str] = set()
    for i, s in enumerate(doc.get("set", ())):
        path = f"set[{i}]"
        try:
            tf = tgt.field(s["field"])
        except NotFound:
            raise RuleError(f"{tgt.label!r} has no field {s['field']!r}", f"{path}.field") \
                from None
        if tf.crdt:
            raise RuleError("rules cannot set collaborative text fields", f"{path}.field")
        if tf.name in seen:
            raise RuleError(f"{tf.name!r} is set twice", f"{path}.field")
        seen.add(tf.name)
        copy_from = None
        value = None
        if "copy_from" in s:
            try:
                sf = src.field(s["copy_from"])
            except NotFound:
                raise RuleError(f"{src.label!r} has no field {s['copy_from']!r}",
                                f"{path}.copy_from") from None
            if sf.ftype != tf.ftype or sf.crdt:
                raise RuleError(f"copies a {sf.ftype} field into a {tf.ftype} field",
                                f"{path}.copy_from", code="type_mismatch")
            copy_from = sf.name
        else:
            try:
                value = values.to_user(values.from_user(tf.ftype, s["value"],
                                                        choices=tf.choices))
            except ValidationError as exc:
                raise RuleError(exc.message, f"{path}.value") from None
        writes.add(slot_of(tf.facet, tf.name))
        sets.append(SetSpec(tf.name, tf.ftype, tf.choices, value, copy_from,
                            s.get("mode") == "always"))
    watches: list[tuple[Key, Via]] = [(f"@member:{src.facet}", ())]
    if when is not None:
        _cond_keys(when, (), watches, slot_of)
    return Rule(rid, doc.get("label", rid), src.facet, tgt.facet, when, tuple(sets),
                bool(doc.get("auto_accept")), doc.get("on_condition_lost", "propose_detach"),
                tuple(dict.fromkeys(watches)), frozenset(writes))


def _cond_keys(c: querymod.Cond, via: Via, out: list[tuple[Key, Via]],
               slot_of: Callable[[str, str], str]) -> None:
    if isinstance(c, querymod.All | querymod.AnyOf):
        for x in c.items:
            _cond_keys(x, via, out, slot_of)
    elif isinstance(c, querymod.Not):
        _cond_keys(c.item, via, out, slot_of)
    elif isinstance(c, querymod.Compare | querymod.In | querymod.Emptiness):
        if c.field.facet is not None:  # `$id` never changes; edge properties: @edge below
            out.append((slot_of(c.field.facet, c.field.name), via))
    elif isinstance(c, querymod.InTable):
        out.append((f"@member:{c.facet}", via))
    elif isinstance(c, querymod.EdgeCond):
        out.append((f"@edge:{c.etype}", via))
        hop = (*via, (c.etype, c.dir))
        if c.other is not None:
            out.append((f"@member:{c.other.facet}", hop))
            if c.other.where is not None:
                _cond_keys(c.other.where, hop, out, slot_of)


@attrs.frozen
class RuleInfo:
    """One rule document as listed: compiled or not, and whether it runs."""

    id: str
    doc: dict[str, Any]
    rule: Rule | None
    status: str  # active | disabled | dormant | suspended | invalid
    reason: str | None = None


def read_docs(views: Views) -> dict[str, dict[str, Any]]:
    """The live rule documents by id (deleted or malformed documents skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for key, raw in views.conn.execute(
        "SELECT key, value FROM config WHERE ns = ? ORDER BY key", (RULE_NS,)
    ):
        if raw is None:
            continue
        doc = codec.decode(bytes(raw))
        if isinstance(doc, dict):
            out[str(key)] = doc
    return out


def docs_fingerprint(views: Views) -> tuple[Any, ...]:
    """Changes whenever the rule documents or the schema they compile against change."""
    docs = tuple((str(k), bytes(s)) for k, s in views.conn.execute(
        "SELECT key, stamp FROM config WHERE ns = ? ORDER BY key", (RULE_NS,)))
    if not docs:
        return ()
    schema = tuple(views.conn.execute(
        "SELECT (SELECT count(*) FROM schema_fields), (SELECT count(*) FROM schema_tables),"
        " (SELECT count(*) FROM schema_edge_types)").fetchone() or ())
    return docs, schema, tuple(sorted(views.proj.slots.items()))


class RuleSet:
    """Every rule document, compiled; the active rules indexed by the keys they watch.

    Rules in a cycle among enabled rules are suspended (derived, so every peer agrees:
    cycles can only arrive by sync, the put check refuses them locally)."""

    def __init__(self, docs: Mapping[str, Mapping[str, Any]], views: Views,
                 slot_of: Callable[[str, str], str] | None = None,
                 external: Mapping[str, tuple[Iterable[Key], Iterable[Key]]] | None = None,
                 ) -> None:
        slot = slot_of or views.proj.slot_of
        infos: dict[str, RuleInfo] = {}
        tables = {t.facet: t for t in views.tables()} if docs else {}
        for rid, doc in sorted(docs.items()):
            try:
                c = compile_rule(rid, _with_defaults(doc), views, slot, tables)
            except (RuleError, KeyError, TypeError) as exc:
                infos[rid] = RuleInfo(rid, dict(doc), None, "invalid", str(exc))
                continue
            if isinstance(c, Dormant):
                infos[rid] = RuleInfo(rid, dict(doc), None, "dormant", c.reason)
            elif not doc.get("enabled", False):
                infos[rid] = RuleInfo(rid, dict(doc), c, "disabled")
            else:
                infos[rid] = RuleInfo(rid, dict(doc), c, "active")
        enabled = {i.id: i.rule for i in infos.values() if i.status == "active" and i.rule}
        graph = {rid: (r.writes, {k for k, _ in r.watches}) for rid, r in enabled.items()}
        self.cycles = find_cycles(graph)
        for comp in _cyclic_components(graph):
            path = next((p for p in self.cycles if p.split(" -> ", 1)[0] in comp), "")
            for rid in comp:
                infos[rid] = attrs.evolve(infos[rid], status="suspended",
                                          reason=f"in a cycle: {path}")
        self.infos = infos
        self.external = dict(external or {})
        self.active: list[Rule] = [i.rule for i in infos.values()
                                   if i.status == "active" and i.rule is not None]
        self.by_key: dict[Key, list[tuple[Rule, Via]]] = {}
        for r in self.active:
            for key, via in r.watches:
                self.by_key.setdefault(key, []).append((r, via))

    @property
    def suspended(self) -> list[str]:
        return sorted(i.id for i in self.infos.values() if i.status == "suspended")

    def graph(self, extra: Rule | None = None, drop: str | None = None,
              ) -> dict[str, tuple[set[Key], set[Key]]]:
        """Automation nodes: enabled rules (suspended ones too), the local automations given
        (this user's on-change scripts), and `extra` in place of its id."""
        g: dict[str, tuple[set[Key], set[Key]]] = {}
        for i in self.infos.values():
            if i.rule is not None and i.status in ("active", "suspended") and i.id != drop:
                g[i.id] = (set(i.rule.writes), {k for k, _ in i.rule.watches})
        for name, (w, k) in self.external.items():
            g[name] = (set(w), set(k))
        if extra is not None:
            g[extra.id] = (set(extra.writes), {k for k, _ in extra.watches})
        return g


def _with_defaults(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"set": [], "when": None, "auto_accept": False,
            "on_condition_lost": "propose_detach", **doc}


def _cyclic_components(graph: Mapping[str, tuple[Iterable[Key], Iterable[Key]]],
                       ) -> list[list[str]]:
    edges: dict[str, list[str]] = {}
    for x, (writes, _) in graph.items():
        w = set(writes)
        edges[x] = sorted(y for y, (_, watches) in graph.items() if w & set(watches))
    return [c for c in strongly_connected(edges) if len(c) > 1 or c[0] in edges[c[0]]]


def check_cycles(graph: Mapping[str, tuple[set[Key], set[Key]]], node: str | None = None,
                 ) -> None:
    """Raise CycleDetected for the first cycle (through `node`, when given)."""
    for path in find_cycles(graph):
        names = path.split(" -> ")
        if node is not None and node not in names:
            continue
        keys = []
        for a, b in itertools.pairwise(names):
            for k in sorted(graph[a][0] & graph[b][1]):
                keys.append({"key": k, "written_by": a, "watched_by": b})
        raise CycleDetected(path, keys)


# --- reading a state ----------------------------------------------------------------------------

class StateView(Protocol):
    """One state to evaluate conditions in (canonical, an overlay, or either plus a batch)."""

    schema: Schema

    def is_live(self, e: bytes) -> bool: ...

    def resolve(self, e: bytes) -> bytes: ...

    def facets_of(self, e: bytes) -> set[str]: ...

    def field_values(self, e: bytes, facet: str) -> dict[str, Any]:
        """Displayed values of e's fields in that table (read whether or not e is a member)."""
        ...

    def conflicted(self, e: bytes, facet: str) -> set[str]:
        """Names of e's fields in that table with an open conflict."""
        ...

    def edges_at(self, etype: str, direction: str, e: bytes) -> Sequence[querymod.EdgeRow]: ...

    def edge_info(self, g: bytes) -> tuple[str, bytes, bytes] | None:
        """(type, src, dst) of an edge that exists (live or deleted)."""
        ...

    def live_edges_of(self, e: bytes) -> set[bytes]: ...


class Schema:
    """Table definitions and slots for one evaluation (read once: `Views.tables` is a query)."""

    def __init__(self, views: Views, slot_of: Callable[[str, str], str] | None = None) -> None:
        self.views = views
        self.tables: dict[str, TableDef] = {t.facet: t for t in views.tables()}
        self.slot_of = slot_of or views.proj.slot_of
        self._slots: dict[str, list[tuple[str, str]]] = {}

    def table(self, facet: str) -> TableDef:
        return self.tables[facet]

    def slots_of(self, facet: str) -> list[tuple[str, str]]:
        """(field name, slot) of a table's non-CRDT fields."""
        out = self._slots.get(facet)
        if out is None:
            t = self.tables.get(facet)
            out = [] if t is None else [(f.name, self.slot_of(f.facet, f.name))
                                        for f in t.fields]
            self._slots[facet] = out
        return out

    def read(self, v: Any) -> Any:
        return _read(self.views, v)


class CanonicalView:
    """The derived (canonical) state, read through `Views`; liveness, tables and values cached
    per entity."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.views = schema.views
        self._vals: dict[tuple[bytes, str], tuple[dict[str, Any], set[str]]] = {}
        self._live: dict[bytes, bool] = {}
        self._facets: dict[bytes, frozenset[str]] = {}

    def is_live(self, e: bytes) -> bool:
        v = self._live.get(e)
        if v is None:
            v = self._live[e] = self.views.is_live(e)
        return v

    def resolve(self, e: bytes) -> bytes:
        return self.views.proj.resolve(e)

    def facets_of(self, e: bytes) -> set[str]:
        v = self._facets.get(e)
        if v is None:
            v = self._facets[e] = frozenset(self.views.attached(e)) if self.is_live(e) \
                else frozenset()
        return set(v)

    def _record(self, e: bytes, facet: str) -> tuple[dict[str, Any], set[str]]:
        key = (e, facet)
        v = self._vals.get(key)
        if v is None:
            t = self.schema.tables.get(facet)
            if t is None:
                v = ({}, set())
            else:
                vals, conflicts = self.views.record_values(e, t)
                v = (vals, set(conflicts))
            self._vals[key] = v
        return v

    def field_values(self, e: bytes, facet: str) -> dict[str, Any]:
        return self._record(e, facet)[0]

    def conflicted(self, e: bytes, facet: str) -> set[str]:
        return self._record(e, facet)[1]

    def edges_at(self, etype: str, direction: str, e: bytes) -> list[querymod.EdgeRow]:
        return [querymod.EdgeRow(ids.from_text(d["src"]), ids.from_text(d["dst"]),
                                 d.get("props") or {}, ids.from_text(d["id"]))
                for d in self.views.edges(e, etype, direction)]

    def edge_info(self, g: bytes) -> tuple[str, bytes, bytes] | None:
        info = self.views.edge(g)
        return None if info is None else (info["type"], info["src"], info["dst"])

    def live_edges_of(self, e: bytes) -> set[bytes]:
        return set(self.views.live_edges_of(e))


class Layer:
    """Payloads applied in memory over another view (later ops win), never written anywhere."""

    def __init__(self, base: StateView, payloads: Iterable[O.Payload] = ()) -> None:
        self.base = base
        self.schema = base.schema
        self.created: set[bytes] = set()
        self.deleted: set[bytes] = set()
        self.facets: dict[tuple[bytes, str], bool] = {}
        self.writes: dict[tuple[bytes, str], Any] = {}  # (e, slot) -> displayed value | None
        self.edges_new: dict[bytes, tuple[str, bytes, bytes, dict[str, Any]]] = {}
        self.edges_dead: set[bytes] = set()
        self.props: dict[tuple[bytes, str], Any] = {}
        self.crdt: dict[tuple[bytes, str], bytes] = {}
        for p in payloads:
            self.apply(p)

    def copy(self) -> Layer:
        out = Layer(self.base)
        out.created, out.deleted = set(self.created), set(self.deleted)
        out.facets, out.writes = dict(self.facets), dict(self.writes)
        out.edges_new, out.edges_dead = dict(self.edges_new), set(self.edges_dead)
        out.props, out.crdt = dict(self.props), dict(self.crdt)
        return out

    def apply(self, p: O.Payload) -> None:
        if isinstance(p, O.CreateEntity):
            self.created.add(p.e)
            self.deleted.discard(p.e)
        elif isinstance(p, O.DeleteEntity):
            self.deleted.add(p.e)
            self.edges_dead.update(p.cascade)
        elif isinstance(p, O.RestoreEntity):
            self.deleted.discard(p.e)
        elif isinstance(p, O.AttachFacet | O.DetachFacet):
            self.facets[(p.e, p.facet)] = isinstance(p, O.AttachFacet)
        elif isinstance(p, O.SetField):
            self.writes[(p.e, self.schema.slot_of(p.facet, p.field))] = self.schema.read(
                p.value)
        elif isinstance(p, O.ClearField):
            self.writes[(p.e, self.schema.slot_of(p.facet, p.field))] = None
        elif isinstance(p, O.SetCRDTField):
            key = (p.e, self.schema.slot_of(p.facet, p.field))
            state = self.crdt.get(key)
            if state is None and p.e not in self.created:
                state = self.schema.views.crdt_state(*key)
            state = crdt.apply_delta(state, p.delta)
            self.crdt[key] = state
            self.writes[key] = crdt.read_text(state)
        elif isinstance(p, O.CreateEdge | O.CreateOrderedEdge):
            self.edges_new[p.edge] = (p.type, p.src, p.dst,
                                      {k: values.to_user(v) for k, v in (p.props or {}).items()})
            self.edges_dead.discard(p.edge)
        elif isinstance(p, O.DeleteEdge):
            self.edges_dead.add(p.edge)
        elif isinstance(p, O.RestoreEdge):
            self.edges_dead.discard(p.edge)
        elif isinstance(p, O.SetEdgeProperty):
            self.props[(p.edge, p.key)] = values.to_user(p.value)
        elif isinstance(p, O.ClearEdgeProperty):
            self.props[(p.edge, p.key)] = None

    def is_live(self, e: bytes) -> bool:
        if e in self.deleted:
            return False
        return e in self.created or self.base.is_live(e)

    def resolve(self, e: bytes) -> bytes:
        return e if e in self.created else self.base.resolve(e)

    def facets_of(self, e: bytes) -> set[str]:
        if not self.is_live(e):
            return set()
        out = set() if e in self.created else self.base.facets_of(e)
        for (x, facet), att in self.facets.items():
            if x == e:
                if att:
                    out.add(facet)
                else:
                    out.discard(facet)
        return out

    def is_member(self, e: bytes, facet: str) -> bool:
        if not self.is_live(e):
            return False
        att = self.facets.get((e, facet))
        if att is not None:
            return att
        return e not in self.created and facet in self.base.facets_of(e)

    def field_values(self, e: bytes, facet: str) -> dict[str, Any]:
        slots = self.schema.slots_of(facet)
        if e in self.created:
            vals: dict[str, Any] = {name: None for name, _ in slots}
        else:
            vals = dict(self.base.field_values(e, facet))
        if self.writes:
            for name, slot in slots:
                if (e, slot) in self.writes:
                    vals[name] = self.writes[(e, slot)]
        return vals

    def conflicted(self, e: bytes, facet: str) -> set[str]:
        return set() if e in self.created else self.base.conflicted(e, facet)

    def edge_info(self, g: bytes) -> tuple[str, bytes, bytes] | None:
        n = self.edges_new.get(g)
        if n is not None:
            return n[0], n[1], n[2]
        return self.base.edge_info(g)

    def edges_at(self, etype: str, direction: str, e: bytes) -> list[querymod.EdgeRow]:
        out: list[querymod.EdgeRow] = []
        if e not in self.created:
            for row in self.base.edges_at(etype, direction, e):
                out.append(row)
        if self.edges_dead or self.deleted or self.props:
            keep = []
            for row in out:
                g = row.edge
                if g in self.edges_dead or not (self.is_live(row.src) and self.is_live(row.dst)):
                    continue
                keep.append(self._with_props(g, row))
            out = keep
        for g, (t, s, d, props) in self.edges_new.items():
            if t != etype or g in self.edges_dead or (s if direction == "out" else d) != e:
                continue
            if self.is_live(s) and self.is_live(d):
                out.append(self._with_props(g, querymod.EdgeRow(s, d, props, g)))
        return out

    def _with_props(self, g: bytes | None, row: querymod.EdgeRow) -> querymod.EdgeRow:
        if g is None or not self.props:
            return row
        props = dict(row.props)
        for (x, k), v in self.props.items():
            if x == g:
                if v is None:
                    props.pop(k, None)
                else:
                    props[k] = v
        return querymod.EdgeRow(row.src, row.dst, props, g)

    def live_edges_of(self, e: bytes) -> set[bytes]:
        out = set() if e in self.created else self.base.live_edges_of(e)
        out |= {g for g, (_, s, d, _) in self.edges_new.items() if e in (s, d)}
        return out - self.edges_dead


class _Reader:
    """A `query.Reader` over a Layer: members are looked up one entity at a time."""

    def __init__(self, view: Layer) -> None:
        self.v = view

    def values_of(self, facet: str, e: bytes) -> Mapping[str, Any] | None:
        return self.v.field_values(e, facet) if self.v.is_member(e, facet) else None

    def edges_at(self, etype: str, direction: str, e: bytes) -> Sequence[querymod.EdgeRow]:
        return self.v.edges_at(etype, direction, e)

    def is_live(self, e: bytes) -> bool:
        return self.v.is_live(e)

    def resolve(self, e: bytes) -> bytes:
        return self.v.resolve(e)


def matches(rule: Rule, e: bytes, view: Layer) -> bool:
    """member(source) ∧ when, in that state."""
    if not view.is_member(e, rule.source):
        return False
    if rule.when is None:
        return True
    return querymod.Evaluator(_Reader(view)).test(rule.when, e,
                                                  view.field_values(e, rule.source))


# --- one triggering event -----------------------------------------------------------------------

@attrs.frozen
class Proposal:
    rule_id: str
    entity: bytes
    action: str  # attach | detach


@attrs.frozen
class EventResult:
    payloads: list[O.Payload]  # the batch plus every generated op (one bundle / overlay step)
    proposals: list[Proposal]  # proposals this event raises
    flipped: list[tuple[str, bytes]]  # (rule, entity) whose condition changed: stale proposals go
    chain: list[dict[str, Any]]  # what fired, in order (depth, rule, entity, action)


def touched_keys(batch: Sequence[O.Payload], before: Layer, after: Layer,
                 ) -> dict[Key, set[bytes]]:
    """Keys each payload changes, and the entities they change them for (spec 04 §6 step 1)."""
    out: dict[Key, set[bytes]] = {}

    def add(key: Key, *es: bytes) -> None:
        out.setdefault(key, set()).update(es)

    def edge(g: bytes) -> None:
        info = after.edge_info(g) or before.edge_info(g)
        if info is not None:
            add(f"@edge:{info[0]}", info[1], info[2])

    slot_of = after.schema.slot_of
    for p in batch:
        if isinstance(p, O.SetField | O.ClearField | O.SetCRDTField):
            add(slot_of(p.facet, p.field), p.e)
        elif isinstance(p, O.AttachFacet | O.DetachFacet):
            add(f"@member:{p.facet}", p.e)
        elif isinstance(p, O.DeleteEntity | O.RestoreEntity):
            for f in before.facets_of(p.e) | after.facets_of(p.e):
                add(f"@member:{f}", p.e)
            gs = set(p.cascade) if isinstance(p, O.DeleteEntity) else set()
            for g in gs | before.live_edges_of(p.e) | after.live_edges_of(p.e):
                edge(g)
        elif isinstance(p, O.CreateEdge | O.CreateOrderedEdge):
            add(f"@edge:{p.type}", p.src, p.dst)
        elif isinstance(p, O.DeleteEdge | O.RestoreEdge | O.SetEdgeProperty
                        | O.ClearEdgeProperty):
            edge(p.edge)
    return out


def _linked(via: Via, xs: set[bytes], views: Sequence[Layer]) -> set[bytes]:
    """The rule entities that reach an entity of xs through the edge hops `via`."""
    cur = set(xs)
    for etype, direction in reversed(via):
        back = "in" if direction == "out" else "out"
        nxt: set[bytes] = set()
        for x in cur:
            for v in views:
                for row in v.edges_at(etype, back, x):
                    nxt.add(row.src if direction == "out" else row.dst)
        cur = nxt
    return cur


class Evaluation:
    """Runs one triggering event: the batch, then what it generates, depth by depth."""

    def __init__(self, rules: RuleSet, base: StateView, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_depth: int = MAX_DEPTH, max_seconds: float = MAX_SECONDS) -> None:
        self.rules = rules
        self.base = base
        self.clock = clock
        self.max_depth = max_depth
        self.max_seconds = max_seconds

    def run(self, batch: Sequence[O.Payload]) -> EventResult:
        if not self.rules.active:
            return EventResult(list(batch), [], [], [])
        deadline = self.clock() + self.max_seconds
        max_ops = MAX_OPS_PER_OP * max(1, len(batch))
        ops: list[O.Payload] = list(batch)
        before = Layer(self.base)
        after = Layer(self.base, batch)
        pending: list[O.Payload] = list(batch)
        fired: set[tuple[str, bytes]] = set()
        proposals: list[Proposal] = []
        flipped: list[tuple[str, bytes]] = []
        chain: list[dict[str, Any]] = []
        generated = 0
        depth = 0
        while pending:
            touched = touched_keys(pending, before, after)
            work = after.copy()  # after + what this depth generates so far
            new: list[O.Payload] = []
            for n, (rule, e) in enumerate(self._candidates(touched, before, after)):
                if n % 256 == 255 and self.clock() > deadline:  # a wide depth is checked too
                    raise RuleLimitExceeded(
                        "time", f"rules ran longer than {self.max_seconds:g} s for one edit",
                        chain)
                if (rule.id, e) in fired:
                    continue
                m0, m1 = matches(rule, e, before), matches(rule, e, after)
                if m0 == m1:
                    continue
                fired.add((rule.id, e))
                flipped.append((rule.id, e))
                step = {"depth": depth, "rule": rule.id, "entity": ids.to_text(e)}
                if m1:
                    if work.is_member(e, rule.target):
                        continue
                    if rule.auto_accept:
                        gen = attach_ops(rule, e, work)
                        chain.append({**step, "action": "attach"})
                    else:
                        proposals.append(Proposal(rule.id, e, "attach"))
                        chain.append({**step, "action": "propose_attach"})
                        continue
                else:
                    if not work.is_member(e, rule.target) or rule.on_condition_lost == "ignore":
                        continue
                    if rule.on_condition_lost == "propose_detach":
                        proposals.append(Proposal(rule.id, e, "detach"))
                        chain.append({**step, "action": "propose_detach"})
                        continue
                    gen = detach_ops(rule, e, work)
                    chain.append({**step, "action": "detach"})
                for p in gen:
                    work.apply(p)
                new += gen
            if not new:
                break
            depth += 1
            generated += len(new)
            if depth > self.max_depth:
                raise RuleLimitExceeded(
                    "depth", f"rules kept triggering each other past depth {self.max_depth}",
                    chain)
            if generated > max_ops:
                raise RuleLimitExceeded(
                    "ops", f"rules generated more than {max_ops} changes for one edit", chain)
            if self.clock() > deadline:
                raise RuleLimitExceeded(
                    "time", f"rules ran longer than {self.max_seconds:g} s for one edit", chain)
            ops = merge_ops(ops, new, after.schema)
            before, after, pending = after, work, new
        return EventResult(ops, proposals, flipped, chain)

    def _candidates(self, touched: Mapping[Key, set[bytes]], before: Layer, after: Layer,
                    ) -> list[tuple[Rule, bytes]]:
        found: set[tuple[str, bytes]] = set()
        by_id: dict[str, Rule] = {}
        for key, es in touched.items():
            for rule, via in self.rules.by_key.get(key, ()):
                targets = es if not via else _linked(via, es, (before, after))
                by_id[rule.id] = rule
                found.update((rule.id, e) for e in targets)
        return [(by_id[rid], e) for rid, e in sorted(found)]


def attach_ops(rule: Rule, e: bytes, view: Layer) -> list[O.Payload]:
    """AttachFacet + the rule's `set` writes for e, as the state `view` reads."""
    out: list[O.Payload] = []
    if not view.is_member(e, rule.target):
        out.append(O.AttachFacet(e, rule.target))
    cur = view.field_values(e, rule.target)
    src = view.field_values(e, rule.source) if any(s.copy_from for s in rule.sets) else {}
    # a rule never decides a conflict: a field with competing values is left to a person
    open_conflicts = view.conflicted(e, rule.target) if rule.sets else set()
    for s in rule.sets:
        if s.field in open_conflicts:
            continue
        x = src.get(s.copy_from) if s.copy_from is not None else s.value
        if x is None or (x == "" and s.ftype == "text"):
            continue  # an empty copy_from is skipped
        have = cur.get(s.field)
        if not s.always and have is not None and have != "":
            continue
        if have == x:
            continue
        out.append(O.SetField(e, rule.target, s.field,
                              values.from_user(s.ftype, x, choices=s.choices)))
    return out


def detach_ops(rule: Rule, e: bytes, view: Layer) -> list[O.Payload]:
    """Removal from the target table; the record is deleted when no table remains."""
    if not view.is_member(e, rule.target):
        return []
    if view.facets_of(e) - {rule.target}:
        return [O.DetachFacet(e, rule.target)]
    return [O.DeleteEntity(e, sorted(view.live_edges_of(e)))]


def merge_ops(ops: list[O.Payload], new: Sequence[O.Payload], schema: Schema,
              ) -> list[O.Payload]:
    """ops + new, where a field written again replaces the earlier write (one per field)."""
    slots = {(p.e, schema.slot_of(p.facet, p.field)) for p in new
             if isinstance(p, O.SetField | O.ClearField)}
    if not slots:
        return [*ops, *new]
    kept = [p for p in ops if not (isinstance(p, O.SetField | O.ClearField)
                                   and (p.e, schema.slot_of(p.facet, p.field)) in slots)]
    return [*kept, *new]
