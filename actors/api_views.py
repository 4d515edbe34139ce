"""HTTP routes for per-user view settings of a table (spec 05 §4 "Search, filter, sort", J8).

Owns `<home>/views.json` (0600, written atomically: temp file + rename): per workspace, per
table, how this user looks at it (columns shown with their order and widths, multi-level sort,
filters, quick search, the cue stack shown). Local to this user, never synced. Settings are
validated for shape only: field names the table does not have (yet) are kept, since the fields
may arrive later by sync; the browser ignores them while they are unknown.

`GET /views/settings` also names the stacks the table can be shown as (J8): the ordered edge
types whose `from` side is this table, from the adopted modules' manifests, else (a type made
in this workspace, or a module not installed here) from the links that exist.
"""

from __future__ import annotations

import math
import re
import weakref
from pathlib import Path
from typing import Any

import trio
from quart import request

from actors import blocking, private_json
from actors.api import _field, _query, api, obj
from actors.module_store import ModuleStore, builtin_modules
from actors.node import Node
from openprod.core import ids
from openprod.core.errors import NotFound, ValidationError
from openprod.engine import modules as modmod
from openprod.engine.manifest import Package
from openprod.engine.views import Views

FILE = "views.json"
STR: dict[str, Any] = {"type": "string"}
OBJ: dict[str, Any] = {"type": "object"}

KEYS = ("columns", "sort", "filters", "search", "stack")
# op -> what its value must be (None: no value)
OPS: dict[str, str | None] = {
    "contains": "str", "is": "scalar", "empty": None, "not_empty": None,
    "eq": "number", "ne": "number", "lt": "number", "le": "number", "gt": "number",
    "ge": "number", "before": "date", "after": "date", "checked": None, "unchecked": None,
    "any_of": "strs", "links_to": "str", "has_file": None, "no_file": None,
}
MAX_ITEMS = 200
MAX_TEXT = 1000
MAX_WIDTH = 4000
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def defaults() -> dict[str, Any]:
    return {"columns": [], "sort": [], "filters": [], "search": "", "stack": None}


# --- validation -------------------------------------------------------------------------------

def _bad(msg: str) -> ValidationError:
    return ValidationError(f"settings: {msg}", field="settings")


def _keys(d: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(d, dict):
        raise _bad(f"{where} must be an object")
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise _bad(f"{where} has unknown key {extra[0]!r} (allowed: {', '.join(allowed)})")
    for k in required:
        if k not in d:
            raise _bad(f"{where} needs {k!r}")


def _name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
        raise _bad(f"{where} must be a field name (a non-empty string)")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise _bad(f"{where} must be a list")
    if len(v) > MAX_ITEMS:
        raise _bad(f"{where} has more than {MAX_ITEMS} entries")
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _value(op: str, v: Any, where: str) -> Any:
    kind = OPS[op]
    if v is None:  # a row still being filled in: kept, and ignored until it has a value
        return None
    if kind is None:
        raise _bad(f"{where}: {op!r} takes no value")
    if kind == "str" and isinstance(v, str) and len(v) <= MAX_TEXT:
        return v
    if kind == "number" and _is_number(v):
        return v
    if kind == "date" and isinstance(v, str) and DATE.match(v):
        return v
    if kind == "scalar" and (_is_number(v) or (isinstance(v, str) and len(v) <= MAX_TEXT)):
        return v
    if kind == "strs" and isinstance(v, list) and len(v) <= MAX_ITEMS \
            and all(isinstance(x, str) for x in v):
        return list(v)
    want = {"str": "a string", "number": "a number", "date": "a date YYYY-MM-DD",
            "scalar": "a string or a number", "strs": "a list of strings"}[kind]
    raise _bad(f"{where}: the value of {op!r} must be {want}")


def validate(raw: Any) -> dict[str, Any]:
    """The settings as stored (missing keys get their defaults); ValidationError (400)
    naming the first problem otherwise."""
    _keys(raw, "settings", KEYS, ())
    out = defaults()
    cols, seen = [], set()
    for i, c in enumerate(_list(raw.get("columns", []), "columns")):
        where = f"columns[{i}]"
        _keys(c, where, ("name", "width", "hidden"), ("name",))
        name = _name(c["name"], f"{where}.name")
        if name in seen:
            raise _bad(f"{where}: column {name!r} is listed twice")
        seen.add(name)
        col: dict[str, Any] = {"name": name}
        w = c.get("width")
        if w is not None:
            if not _is_number(w) or not 16 <= w <= MAX_WIDTH:
                raise _bad(f"{where}.width must be a number of pixels from 16 to {MAX_WIDTH}")
            col["width"] = round(w)
        hidden = c.get("hidden", False)
        if not isinstance(hidden, bool):
            raise _bad(f"{where}.hidden must be true or false")
        col["hidden"] = hidden
        cols.append(col)
    out["columns"] = cols
    sort = []
    for i, s in enumerate(_list(raw.get("sort", []), "sort")):
        where = f"sort[{i}]"
        _keys(s, where, ("field", "dir"), ("field",))
        d = s.get("dir", "asc")
        if d not in ("asc", "desc"):
            raise _bad(f"{where}.dir must be 'asc' or 'desc'")
        sort.append({"field": _name(s["field"], f"{where}.field"), "dir": d})
    out["sort"] = sort
    filters = []
    for i, f in enumerate(_list(raw.get("filters", []), "filters")):
        where = f"filters[{i}]"
        _keys(f, where, ("field", "op", "value"), ("field", "op"))
        op = f["op"]
        if not isinstance(op, str) or op not in OPS:
            raise _bad(f"{where}: unknown operator {op!r} (known: {', '.join(OPS)})")
        entry: dict[str, Any] = {"field": _name(f["field"], f"{where}.field"), "op": op}
        v = _value(op, f.get("value"), where)
        if v is not None:
            entry["value"] = v
        filters.append(entry)
    out["filters"] = filters
    search = raw.get("search", "")
    if not isinstance(search, str) or len(search) > MAX_TEXT:
        raise _bad(f"search must be a string of at most {MAX_TEXT} characters")
    out["search"] = search
    stack = raw.get("stack")
    if stack is not None:
        _keys(stack, "stack", ("edge_type", "parent"), ("edge_type", "parent"))
        et, parent = stack["edge_type"], stack["parent"]
        if not isinstance(et, str) or not et or len(et) > MAX_TEXT:
            raise _bad("stack.edge_type must be a relationship type")
        try:
            parent = ids.to_text(ids.from_text(parent))
        except (ValueError, TypeError, AttributeError):
            raise _bad("stack.parent must be a record id") from None
        out["stack"] = {"edge_type": et, "parent": parent}
    return out


# --- storage ----------------------------------------------------------------------------------

class ViewSettings:
    """`<home>/views.json`: {workspace id: {table id: settings}}."""

    def __init__(self, home: Path) -> None:
        self.path = home / FILE

    def _load(self) -> dict[str, Any]:
        data = private_json.load(self.path)
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, Any]) -> None:
        private_json.save(self.path, data)

    def get(self, ws_id: str, table: str) -> dict[str, Any]:
        got = self._load().get(ws_id, {})
        raw = got.get(table) if isinstance(got, dict) else None
        if raw is None:
            return defaults()
        try:
            return validate(raw)
        except ValidationError:  # edited by hand into something unusable: start afresh
            return defaults()

    def put(self, ws_id: str, table: str, settings: dict[str, Any]) -> None:
        data = self._load()
        per_ws = data.get(ws_id)
        if not isinstance(per_ws, dict):
            per_ws = data[ws_id] = {}
        per_ws[table] = settings
        self._save(data)


# read-modify-write of the file, one at a time per engine
_locks: weakref.WeakKeyDictionary[Node, trio.Lock] = weakref.WeakKeyDictionary()


def _lock(node: Node) -> trio.Lock:
    lock = _locks.get(node)
    if lock is None:
        lock = _locks[node] = trio.Lock()
    return lock


# --- stacks (J8) ------------------------------------------------------------------------------

_packages: dict[tuple[str, str], Package | None] = {}


def _package(store: ModuleStore, mid: str, version: str) -> Package | None:
    key = (mid, version)
    if key not in _packages:
        pkg: Package | None = None
        try:
            pkg = store.load(mid, version)
        except Exception:  # not installed by this user: a built-in of that version will do
            builtin = builtin_modules().get(mid)
            if builtin is not None and builtin[0].version == version:
                pkg = builtin[0]
        _packages[key] = pkg
    return _packages[key]


def _declared(store: ModuleStore, adopted: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """edge type -> (from table, to table) of the adopted modules' ordered edge types."""
    out: dict[str, Any] = {}
    for mid, doc in sorted(adopted.items()):
        pkg = _package(store, mid, str(doc.get("version", "")))
        if pkg is None:
            continue
        for ename, ed in pkg.manifest.edges.items():
            if ed.ordered:
                out[f"{mid}.{ename}"] = (ed.from_, ed.to)
    return out


def _stacks(v: Views, table: str, declared: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for et in v.edge_types():
        if not et["ordered"]:
            continue
        ends = declared.get(et["type"])
        if ends is None:  # no manifest: learn the ends from a link of that type
            row = v.conn.execute("SELECT src, dst FROM edges WHERE type = ? AND deleted = 0"
                                 " LIMIT 1", (et["type"],)).fetchone()
            if row is None:
                continue
            src = [t.facet for t in v.tables_of(bytes(row[0]))]
            dst = [t.facet for t in v.tables_of(bytes(row[1]))]
            if table not in src:
                continue
            ends = (table, dst[0] if dst else None)
        if ends[0] != table:
            continue
        out.append({"edge_type": et["type"], "label": et["label"], "parent_table": ends[1]})
    return out


# --- routes -----------------------------------------------------------------------------------

def _table_arg(raw: Any) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > MAX_TEXT:
        raise ValidationError("missing query parameter 'table'", field="table")
    return raw


def _table_id(v: Views, ref: str) -> str:
    """A table named by id or label is stored under its id (one view per table); a name no
    table has yet is kept as given (the table may arrive later by sync)."""
    try:
        return v.table(ref).facet
    except NotFound:
        return ref


@api("/views/settings", "GET", "This user's view of a table (columns, sort, filters, search, "
     "cue stack; defaults when none saved) and the stacks it can be shown as",
     query=("table", "after"))
async def get_view_settings(node: Node, body: Any) -> dict[str, Any]:
    ref = _table_arg(request.args.get("table"))
    # the writer's view: a table created a moment ago is known there first
    table = await node.current.writer.call(lambda ws: _table_id(ws.views, ref))
    session = node.current
    store = ViewSettings(node.home.path)
    settings = await blocking.run_sync(store.get, session.ws_id, table)
    adopted = await _query(node, modmod.module_configs)
    declared = await blocking.run_sync(_declared, node.home.modules, adopted)
    stacks = await _query(node, lambda v: _stacks(v, table, declared))
    return {"table": table, "settings": settings, "stacks": stacks,
            "seq": session.deriver.applied}


@api("/views/settings", "POST", "Save this user's view of a table (local, never synced; 400 "
     "for malformed settings)", body=obj(["table", "settings"], table=STR, settings=OBJ))
async def put_view_settings(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    ref = _table_arg(_field(body, "table", str))
    settings = validate(_field(body, "settings", dict))
    # the writer's view: a table created a moment ago is known there first
    table = await node.current.writer.call(lambda ws: _table_id(ws.views, ref))
    session = node.current
    store = ViewSettings(node.home.path)
    async with _lock(node):
        await blocking.run_sync(store.put, session.ws_id, table, settings)
    return {"ok": True, "table": table, "settings": settings, "seq": session.writer.appended}


__all__ = ["OPS", "ViewSettings", "defaults", "validate"]
