"""Module packages: read a folder or `.zip`, parse and validate `module.toml` (spec 04 §1, §2).

This module owns everything that decides whether a package is acceptable *before* anything is
installed: safe reading of the package files (no symlinks, absolute paths, `..`, size caps), the
attrs classes a manifest is structured into (cattrs, unknown keys forbidden), every semantic
check of 04 §2 (names, types, options, views, scripts, rules, capabilities), the static type check
of `when`/`watch` conditions (04 §5), the Lua compile check of scripts (load only), and the static
cycle check over the manifest's own rules and on-change scripts (04 §6).

It is pure: it reads the package, writes nothing, and either returns a `Package` or raises one
`ManifestError` carrying *all* problems found, each as `{path, code, message}`.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib
import json
import math
import os
import re
import stat
import tomllib
import zipfile
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict, get_args, get_origin

import attrs
import blake3
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from openprod.core import values
from openprod.core.errors import OpenprodError, ValidationError

# --------------------------------------------------------------------------------------------
# Limits and constants (04 §1, §2, §5, §7.5)

MIB = 1 << 20
KIB = 1 << 10
MAX_TABLES = 64
MAX_FIELDS = 256
MAX_EDGES = 64
MAX_SCRIPTS = 64
MAX_RULES = 64
MAX_VIEWS = 64  # not named by the spec; a bound keeps hostile manifests cheap to check
MAX_CHOICES = 256
MAX_IN_VALUES = 256
MAX_COND_DEPTH = 8
MAX_EDGE_HOPS = 3
MAX_TIMEOUT_S = 120
MAX_MEMORY_MIB = 256
MAX_INSTRUCTIONS = 1_000_000_000

VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
TRIGGERS = frozenset(["manual", "on_change"])
POST_V1_TRIGGERS = frozenset(["background"])
EVENTS = ("field_changed", "record_added", "record_removed")
SET_MODES = frozenset(["fill_if_empty", "always"])
ON_CONDITION_LOST = frozenset(["propose_detach", "ignore", "auto_detach"])
FIELD_MODES = frozenset(["discrete", "reference"])
ORDERING_FTYPES = frozenset(["integer", "float", "date", "datetime", "duration", "text"])
COMPARE_OPS = frozenset(["eq", "ne", "lt", "le", "gt", "ge"])
ORDERING_OPS = frozenset(["lt", "le", "gt", "ge"])
TEXT_OPS = frozenset(["contains", "starts_with"])
EMPTY_OPS = frozenset(["is_empty", "not_empty"])
ALL_OPS = COMPARE_OPS | TEXT_OPS | EMPTY_OPS | {"in"}
TOP_LEVEL_DIRS = frozenset(["views", "scripts", "assets"])


@attrs.frozen
class PackageLimits:
    """Size caps of 04 §1; tests pass small ones to exercise the refusals cheaply."""

    max_unpacked: int = 50 * MIB
    max_manifest: int = 256 * KIB
    max_script: int = 512 * KIB
    max_entries: int = 10_000  # not in the spec: bounds the work a hostile archive can cause


DEFAULT_LIMITS = PackageLimits()


# --------------------------------------------------------------------------------------------
# Errors


class Problem(TypedDict):
    """One reason a package is refused: where (dotted manifest path or package file), what, why."""

    path: str
    code: str
    message: str


class ManifestError(OpenprodError):
    """A package that must not be installed; `errors` lists every problem found, in order."""

    code = "invalid_module"

    def __init__(self, errors: list[Problem]) -> None:
        first = errors[0] if errors else Problem(path="", code="invalid_module", message="")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(
            f"invalid module package: {first['path']}: {first['message']}{more}", errors=errors
        )
        self.errors = errors


Seg = str | int
PathT = tuple[Seg, ...]
_SIMPLE_SEG = re.compile(r"[A-Za-z0-9_\-]+")


# First segment of the path of a problem with a package file rather than a manifest key.
FILE = "\x00file"


def render_path(path: PathT) -> str:
    """`("tables", "People", "fields", "email")` → `tables.People.fields.email`; list indices as
    `[0]`; a key that is not a plain name is JSON-quoted so the path stays unambiguous.
    Package-file problems (`(FILE, rel)`) render as the file's relative path."""
    if path[:1] == (FILE,):
        return "/".join(str(s) for s in path[1:])
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
            continue
        text = seg if _SIMPLE_SEG.fullmatch(seg) else json.dumps(seg)
        out += f".{text}" if out else text
    return out


class _Collector:
    """Accumulates problems with tuple paths so that later passes can compare and suppress."""

    def __init__(self) -> None:
        self.items: list[tuple[PathT, str, str]] = []
        self.suppressed: list[PathT] = []

    def add(self, path: PathT, code: str, message: str) -> None:
        # A part of the manifest already reported and pruned at structuring time must not
        # produce a second, derived complaint at the same place.
        for s in self.suppressed:
            if path[: len(s)] == s:
                return
        self.items.append((path, code, message))

    def problems(self) -> list[Problem]:
        return [Problem(path=render_path(p), code=c, message=m) for p, c, m in self.items]


# --------------------------------------------------------------------------------------------
# Manifest classes (the structured form of module.toml)


@attrs.frozen
class ModuleInfo:
    id: str
    version: str
    name: str
    description: str = ""
    authors: list[str] = attrs.Factory(list)
    capabilities: list[str] = attrs.Factory(list)


@attrs.frozen
class FieldDef:
    type: str
    crdt: bool = False
    label: str | None = None
    required: bool = False
    hidden: bool = False
    default: Any = None  # TOML has no null, so None means "not given"
    choices: list[Any] | None = None  # strings or [key, label]; shape checked semantically
    shared_key: str | None = None
    ref_table: str | None = None
    mode: str | None = None
    ref: str | None = None

    def choice_keys(self) -> list[str]:
        """The enum keys, in declaration order (labels dropped)."""
        keys: list[str] = []
        for c in self.choices or []:
            if isinstance(c, str):
                keys.append(c)
            elif isinstance(c, list) and c and isinstance(c[0], str):
                keys.append(c[0])
        return keys


@attrs.frozen
class TableDef:
    fields: dict[str, FieldDef] = attrs.Factory(dict)
    label: str | None = None
    title_field: str | None = None  # after validation: the explicit one or the first text field


@attrs.frozen
class EdgeDef:
    from_: str
    label: str | None = None
    to: str | None = None
    ordered: bool = False
    properties: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class ViewDef:
    entry: str
    label: str | None = None
    table: str | None = None


@attrs.frozen
class Watch:
    table: str
    fields: list[str] = attrs.Factory(list)  # empty = every field of the table
    events: list[str] = attrs.Factory(list)  # empty = all three events


@attrs.frozen
class Limits:
    timeout_s: float | None = None
    memory_mib: int | None = None
    max_instructions: int | None = None


@attrs.frozen
class ScriptDef:
    file: str
    label: str | None = None
    trigger: str = "manual"
    args: dict[str, str] = attrs.Factory(dict)
    watch: Watch | None = None
    writes: list[str] | None = None
    when: dict[str, Any] | None = None
    capabilities: list[str] = attrs.Factory(list)
    limits: Limits | None = None


@attrs.frozen
class SetEntry:
    field: str
    value: Any = None
    copy_from: str | None = None
    mode: str = "fill_if_empty"


@attrs.frozen
class RuleDef:
    source: str
    target: str
    action: str
    label: str | None = None
    when: dict[str, Any] | None = None
    set: list[SetEntry] = attrs.Factory(list)
    auto_accept: bool = False
    on_condition_lost: str = "propose_detach"


@attrs.frozen
class Manifest:
    manifest_version: int
    module: ModuleInfo
    tables: dict[str, TableDef] = attrs.Factory(dict)
    edges: dict[str, EdgeDef] = attrs.Factory(dict)
    views: dict[str, ViewDef] = attrs.Factory(dict)
    scripts: dict[str, ScriptDef] = attrs.Factory(dict)
    rules: dict[str, RuleDef] = attrs.Factory(dict)


@attrs.frozen
class Package:
    """A validated module package; nothing has been installed or written."""

    id: str
    version: str
    name: str
    description: str
    manifest: Manifest
    manifest_hash: str  # BLAKE3 of the module.toml bytes, hex
    files: tuple[str, ...]  # relative POSIX paths of the files under views/ and scripts/, sorted
    warnings: tuple[str, ...]


# Attribute names that differ from the TOML key (Python keywords).
_RENAMES: dict[type, dict[str, str]] = {EdgeDef: {"from_": "from"}}


# --------------------------------------------------------------------------------------------
# Strict cattrs converter
#
# cattrs' default hooks coerce (`str(1)`, `bool("no")`, iterating a string as a list); a
# manifest must say what it means, so scalars, lists, dicts and tables are checked exactly.


class _BadType(Exception):
    def __init__(self, expected: str, got: object) -> None:
        super().__init__(f"expected {expected}, got {_toml_type(got)}")


def _toml_type(x: object) -> str:
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, int):
        return "an integer"
    if isinstance(x, float):
        return "a float"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, list):
        return "an array"
    if isinstance(x, dict):
        return "a table"
    if isinstance(x, dt.date | dt.time):
        return "a date/time"
    return type(x).__name__


def _s_str(x: object, _: object) -> str:
    if type(x) is not str:
        raise _BadType("a string", x)
    return x


def _s_bool(x: object, _: object) -> bool:
    if type(x) is not bool:
        raise _BadType("true or false", x)
    return x


def _s_int(x: object, _: object) -> int:
    if type(x) is not int:
        raise _BadType("an integer", x)
    return x


def _s_float(x: object, _: object) -> float:
    if type(x) not in (int, float):
        raise _BadType("a number", x)
    return float(x)  # type: ignore[arg-type]


def _note(exc: Exception, index: Seg, t: Any) -> Exception:
    exc.add_note(IterableValidationNote(f"Structuring @ {index!r}", index, t))
    return exc


def _origin_is(t: Any, origin: type) -> bool:
    found: Any = get_origin(t)
    return found is origin


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(str, _s_str)
    conv.register_structure_hook(bool, _s_bool)
    conv.register_structure_hook(int, _s_int)
    conv.register_structure_hook(float, _s_float)

    def list_factory(t: Any) -> Callable[[Any, Any], Any]:
        (elem,) = get_args(t) or (Any,)
        hook = conv.get_structure_hook(elem)

        def structure(x: Any, _: Any) -> list[Any]:
            if type(x) is not list:
                raise _BadType("an array", x)
            out: list[Any] = []
            errs: list[Exception] = []
            for i, item in enumerate(x):
                try:
                    out.append(hook(item, elem))
                except Exception as e:
                    errs.append(_note(e, i, elem))
            if errs:
                raise IterableValidationError("invalid array", errs, t)
            return out

        return structure

    def dict_factory(t: Any) -> Callable[[Any, Any], Any]:
        _key_t, val_t = get_args(t) or (str, Any)
        hook = conv.get_structure_hook(val_t)

        def structure(x: Any, _: Any) -> dict[str, Any]:
            if type(x) is not dict:
                raise _BadType("a table", x)
            out: dict[str, Any] = {}
            errs: list[Exception] = []
            for k, v in x.items():
                try:
                    out[k] = hook(v, val_t)
                except Exception as e:
                    errs.append(_note(e, k, val_t))
            if errs:
                raise IterableValidationError("invalid table", errs, t)
            return out

        return structure

    def attrs_factory(cl: Any) -> Callable[[Any, Any], Any]:
        overrides: dict[str, Any] = {
            a: override(rename=k) for a, k in _RENAMES.get(cl, {}).items()
        }
        inner = make_dict_structure_fn(
            cl, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True,
            **overrides,
        )

        def structure(x: Any, t: Any) -> Any:
            if type(x) is not dict:
                raise _BadType("a table", x)
            return inner(x, t)

        return structure

    conv.register_structure_hook_factory(lambda t: _origin_is(t, list), list_factory)
    conv.register_structure_hook_factory(lambda t: _origin_is(t, dict), dict_factory)
    conv.register_structure_hook_factory(attrs.has, attrs_factory)
    return conv


_CONVERTER = _make_converter()


def _format_exception(exc: BaseException, _type: type | None) -> str:
    """Encode one structuring failure as JSON so the paths `transform_error` appends can be
    split off reliably (keys may contain any character)."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return json.dumps({"code": "unknown_key", "keys": sorted(exc.extra_fields)})
    if isinstance(exc, KeyError):
        return json.dumps({"code": "missing_key", "message": "required key missing"})
    if isinstance(exc, _BadType):
        return json.dumps({"code": "bad_type", "message": str(exc)})
    return json.dumps({"code": "bad_type", "message": f"invalid value ({exc})"})


def _parse_cattrs_path(text: str) -> PathT:
    """Parse the `.attr` / `['key']` / `[0]` path `transform_error` produced (root "")."""
    segs: list[Seg] = []
    i = 0
    while i < len(text):
        if text[i] == ".":
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, i + 1)
            assert m is not None
            name = m.group(0)
            segs.append(name)
            i = m.end()
        elif text[i] == "[":
            # the key is a Python repr: a string literal or an int
            j = i + 1
            if text[j] in "'\"":
                quote = text[j]
                k = j + 1
                while text[k] != quote:
                    k += 2 if text[k] == "\\" else 1
                segs.append(ast.literal_eval(text[j : k + 1]))
                i = k + 2
            else:
                k = text.index("]", j)
                segs.append(int(text[j:k]))
                i = k + 1
        else:  # pragma: no cover - transform_error only emits the forms above
            raise ValueError(f"unexpected path {text!r}")
    return tuple(segs)


def _structure_errors(exc: BaseException) -> list[tuple[PathT, str, str]]:
    out: list[tuple[PathT, str, str]] = []
    decoder = json.JSONDecoder()
    for line in cattrs.transform_error(exc, path="", format_exception=_format_exception):
        info, end = decoder.raw_decode(line)
        assert line[end : end + 3] == " @ "
        path = _to_toml_path(_parse_cattrs_path(line[end + 3 :]))
        if info["code"] == "unknown_key":
            for k in info["keys"]:
                out.append(((*path, k), "unknown_key", f"unknown key {k!r}"))
        else:
            out.append((path, info["code"], info["message"]))
    return out


def _to_toml_path(path: PathT) -> PathT:
    """Map attribute names back to TOML keys (`from_` → `from`)."""
    renames = {a: k for m in _RENAMES.values() for a, k in m.items()}
    return tuple(renames.get(s, s) if isinstance(s, str) else s for s in path)


def _prune(raw: Any, path: PathT, code: str) -> PathT | None:
    """Remove what a structuring error points at so the rest can still be structured and
    checked; returns the pruned path, or None if nothing could be removed (then only the
    structuring errors are reported)."""
    if code == "missing_key":
        path = path[:-1]  # the object lacking a required key goes as a whole
    ints = [i for i, seg in enumerate(path) if isinstance(seg, int)]
    if ints:
        # dropping one array element would shift the indices later errors report, so the
        # entry holding the array goes instead
        path = path[: ints[0]]
    if code == "missing_key" or ints:
        # a fixed section (module, watch, limits) cannot go alone: its enclosing entry goes
        while path and not _is_collection_entry(path):
            path = path[:-1]
    if not path:
        return None
    node = raw
    for seg in path[:-1]:
        node = node.get(seg) if isinstance(node, dict) else None
    if not isinstance(node, dict) or path[-1] not in node:
        return None
    del node[path[-1]]
    return path


def _is_collection_entry(path: PathT) -> bool:
    """Whether path names one entry of a user-keyed table (removable as a whole)."""
    if len(path) == 2 and path[0] in ("tables", "edges", "views", "scripts", "rules"):
        return True
    return len(path) == 4 and path[0] == "tables" and path[2] == "fields"


# --------------------------------------------------------------------------------------------
# Capabilities (04 §7.5)


def capability_problem(cap: object) -> str | None:
    """Why cap is not a V1 capability, or None."""
    if not isinstance(cap, str):
        return "a capability must be a string"
    if cap == "ui.notify":
        return None
    kind, sep, arg = cap.partition(":")
    if sep and kind in ("fs.read", "fs.write"):
        return _glob_problem(arg)
    if sep and kind == "data.write":
        if values.is_module(arg) or values.is_facet(arg):
            return None
        return "data.write needs <module> or <module>.<Table>"
    return f"{cap!r} is not a V1 capability (fs.read:, fs.write:, ui.notify, data.write:)"


def _glob_problem(glob: str) -> str | None:
    if not glob:
        return "empty path pattern"
    if glob.startswith("/") or "\\" in glob or re.match(r"[A-Za-z]:", glob):
        return "path patterns are relative to the exchange folder"
    if any(seg in ("", ".", "..") for seg in glob.split("/")):
        return "path patterns may not contain '..', '.' or empty segments"
    return None


def _glob_matches(pattern: str, path: str) -> bool:
    """`*` = one segment's characters, `**` = any number of segments (04 §7.5)."""
    rx = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            rx += ".*"
            i += 2
        elif pattern[i] == "*":
            rx += "[^/]*"
            i += 1
        else:
            rx += re.escape(pattern[i])
            i += 1
    return re.fullmatch(rx, path) is not None


def capability_covers(granted: str, wanted: str) -> bool:
    """Whether declaring `granted` allows `wanted` (equal, module-wide data.write, or a literal
    path inside a declared glob)."""
    if granted == wanted:
        return True
    gk, _, ga = granted.partition(":")
    wk, _, wa = wanted.partition(":")
    if gk != wk:
        return False
    if gk == "data.write":
        return "." not in ga and wa.startswith(ga + ".")
    if gk in ("fs.read", "fs.write"):
        return "*" not in wa and _glob_matches(ga, wa)
    return False


# --------------------------------------------------------------------------------------------
# Values


def _toml_to_user(ftype: str, x: Any) -> Any:
    """TOML gives real date/datetime objects; `values.from_user` wants JSON-ish forms."""
    if ftype == "date" and isinstance(x, dt.date) and not isinstance(x, dt.datetime):
        return x.isoformat()
    if ftype == "datetime" and isinstance(x, dt.datetime):
        when = x if x.tzinfo is not None else x.replace(tzinfo=dt.UTC)  # naive TOML = UTC
        return int(when.timestamp() * 1000)
    return x


def literal_value(ftype: str, x: Any, choices: Collection[str] | None = None) -> values.Value:
    """The canonical value of a manifest literal for a field of type ftype (raises
    ValidationError). entity_ref literals are UUID strings, blob_ref 64 hex."""
    return values.from_user(
        ftype, _toml_to_user(ftype, x), choices=list(choices) if choices is not None else None
    )


def field_default(fd: FieldDef) -> values.Value | None:
    """A validated field's `default` as a 01 value (for DefineField opts), or None."""
    if fd.default is None:
        return None
    return literal_value(fd.type, fd.default, fd.choice_keys() if fd.type == "enum" else None)


# --------------------------------------------------------------------------------------------
# Condition type check (04 §5)


@attrs.frozen
class Column:
    """What a condition needs to know about a field: ftype, CRDT flag, enum keys."""

    ftype: str
    crdt: bool = False
    choices: frozenset[str] | None = None


ID_COLUMN = Column("entity_ref")


@attrs.frozen
class Scope:
    """The table or edge a condition's `field`s belong to. `columns is None` = not defined by
    this manifest (another module's): checked for shape only, dormant until it exists."""

    name: str
    columns: Mapping[str, Column] | None
    field_key_prefix: str | None  # "m.T" for tables (watched keys), None for edge properties


def table_columns(table: TableDef) -> dict[str, Column]:
    return {
        name: Column(fd.type, fd.crdt, frozenset(fd.choice_keys()) if fd.type == "enum" else None)
        for name, fd in table.fields.items()
    }


class _Schema:
    """The tables and edges a manifest defines, keyed by qualified id."""

    def __init__(self, module_id: str, manifest: Manifest) -> None:
        self.module_id = module_id
        self.tables = {f"{module_id}.{t}": td for t, td in manifest.tables.items()}
        self.edges = {f"{module_id}.{e}": ed for e, ed in manifest.edges.items()}

    def own(self, qualified: str) -> bool:
        return qualified.split(".", 1)[0] == self.module_id

    def table_scope(self, qualified: str) -> Scope:
        td = self.tables.get(qualified)
        return Scope(qualified, table_columns(td) if td is not None else None, qualified)


def _check_literal(
    col: Column, op: str, x: Any, path: PathT, out: _Collector
) -> None:
    if x is None:
        out.add(path, "null_literal", "a condition literal cannot be null or missing")
        return
    if x == "" or x == []:
        out.add(path, "bad_value", "a condition literal cannot be empty")
        return
    if op in TEXT_OPS:
        if type(x) is not str:
            out.add(path, "bad_value", f"{op} needs a string")
        return
    ftype = col.ftype
    if ftype == "integer" and type(x) is float and math.isfinite(x):
        return  # integer vs float compares numerically (04 §5)
    try:
        literal_value(ftype, x, col.choices)
    except ValidationError as e:
        out.add(path, "bad_value", e.message)


def _check_cond(
    cond: Any,
    scope: Scope,
    schema: _Schema,
    path: PathT,
    out: _Collector,
    watched: set[str],
    depth: int = 1,
    hops: int = 0,
) -> None:
    if depth > MAX_COND_DEPTH:
        out.add(path, "too_deep", f"conditions nest at most {MAX_COND_DEPTH} deep")
        return
    if type(cond) is not dict:
        out.add(path, "bad_type", f"a condition must be a table, got {_toml_type(cond)}")
        return

    def only(*allowed: str) -> None:
        for k in cond:
            if k not in allowed:
                out.add((*path, k), "unknown_key", f"unknown key {k!r} in this condition")

    if "all" in cond or "any" in cond:
        key = "all" if "all" in cond else "any"
        only(key)
        subs = cond[key]
        if type(subs) is not list:
            out.add((*path, key), "bad_type", f"{key} takes an array of conditions")
            return
        for i, sub in enumerate(subs):
            _check_cond(sub, scope, schema, (*path, key, i), out, watched, depth + 1, hops)
        return
    if "not" in cond:
        only("not")
        _check_cond(cond["not"], scope, schema, (*path, "not"), out, watched, depth + 1, hops)
        return
    if "in_table" in cond:
        only("in_table")
        t = cond["in_table"]
        if not values.is_facet(t):
            out.add((*path, "in_table"), "bad_name", f"{t!r} is not a qualified table module.Table")
        elif schema.own(t) and t not in schema.tables:
            out.add((*path, "in_table"), "undefined_table", f"table {t!r} is not defined")
        else:
            watched.add(f"@member:{t}")
        return
    if "edge" in cond:
        _check_edge_cond(cond, schema, path, out, watched, depth, hops, only)
        return
    if "field" in cond:
        _check_field_cond(cond, scope, path, out, watched, only)
        return
    out.add(path, "bad_condition", "a condition needs field, all, any, not, in_table or edge")


def _check_edge_cond(
    cond: dict[str, Any],
    schema: _Schema,
    path: PathT,
    out: _Collector,
    watched: set[str],
    depth: int,
    hops: int,
    only: Callable[..., None],
) -> None:
    only("edge", "dir", "props", "other")
    if hops + 1 > MAX_EDGE_HOPS:
        out.add(path, "too_deep", f"conditions follow at most {MAX_EDGE_HOPS} edge hops")
        return
    etype = cond["edge"]
    props_scope = Scope(str(etype), None, None)
    if not values.is_edge_type(etype):
        out.add((*path, "edge"), "bad_name", f"{etype!r} is not an edge type module.name")
    elif schema.own(etype) and etype not in schema.edges:
        out.add((*path, "edge"), "undefined_edge", f"edge type {etype!r} is not defined")
    else:
        watched.add(f"edge:{etype}")
        ed = schema.edges.get(etype)
        if ed is not None:
            props_scope = Scope(etype, {p: Column(t) for p, t in ed.properties.items()}, None)
    if cond.get("dir") not in ("out", "in"):
        out.add((*path, "dir"), "bad_value", "dir must be 'out' or 'in'")
    if "props" in cond:
        _check_cond(cond["props"], props_scope, schema, (*path, "props"), out, watched,
                    depth + 1, hops + 1)
    if "other" in cond:
        other = cond["other"]
        opath = (*path, "other")
        if type(other) is not dict:
            out.add(opath, "bad_type", "other must be a table {table, where?}")
            return
        for k in other:
            if k not in ("table", "where"):
                out.add((*opath, k), "unknown_key", f"unknown key {k!r} in other")
        t: Any = other.get("table")
        if not values.is_facet(t):
            out.add((*opath, "table"), "bad_name", f"{t!r} is not a qualified table module.Table")
            return
        if schema.own(t) and t not in schema.tables:
            out.add((*opath, "table"), "undefined_table", f"table {t!r} is not defined")
            return
        watched.add(f"@member:{t}")
        if "where" in other:
            _check_cond(other["where"], schema.table_scope(t), schema, (*opath, "where"), out,
                        watched, depth + 1, hops + 1)


def _check_field_cond(
    cond: dict[str, Any],
    scope: Scope,
    path: PathT,
    out: _Collector,
    watched: set[str],
    only: Callable[..., None],
) -> None:
    name = cond["field"]
    op = cond.get("op")
    if not isinstance(op, str) or op not in ALL_OPS:
        out.add((*path, "op"), "bad_op", f"unknown op {op!r}")
        return
    if op == "in":
        only("field", "op", "values")
    elif op in EMPTY_OPS:
        only("field", "op")
    else:
        only("field", "op", "value")
    col: Column | None = None
    if name == "$id":
        col = ID_COLUMN
    elif not values.is_local_name(name):
        out.add((*path, "field"), "bad_name", f"{name!r} is not a field name")
        return
    elif scope.columns is not None:
        col = scope.columns.get(name)
        if col is None:
            out.add((*path, "field"), "undefined_field", f"{scope.name} has no field {name!r}")
            return
    if scope.field_key_prefix is not None and name != "$id":
        watched.add(f"{scope.field_key_prefix}.{name}")
    if col is not None and not _op_allowed(col, op):
        kind = "CRDT text" if col.crdt else col.ftype
        out.add((*path, "op"), "bad_op", f"{op} is not allowed on a {kind} field")
        return
    if op in EMPTY_OPS:
        return
    if op == "in":
        vals = cond.get("values")
        if type(vals) is not list or not 1 <= len(vals) <= MAX_IN_VALUES:
            out.add((*path, "values"), "bad_value", f"in needs 1..{MAX_IN_VALUES} values")
            return
        for i, v in enumerate(vals):
            if col is not None:
                _check_literal(col, op, v, (*path, "values", i), out)
        return
    if col is not None or op in TEXT_OPS or "value" not in cond:
        _check_literal(col or Column("text"), op, cond.get("value"), (*path, "value"), out)


def _op_allowed(col: Column, op: str) -> bool:
    if op in EMPTY_OPS:
        return True
    if col.crdt:
        return op == "contains"
    if col.ftype == "blob_ref":
        return False
    if op in TEXT_OPS:
        return col.ftype == "text"
    if op in ORDERING_OPS:
        return col.ftype in ORDERING_FTYPES
    return True  # eq, ne, in on every remaining scalar


# --------------------------------------------------------------------------------------------
# Cycle detection (04 §6)


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's SCCs (iterative, so long chains cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    n = stack.pop()
                    on_stack.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                sccs.append(sorted(comp))
    return sccs


def _key_matches(written: str, watched: str) -> bool:
    if watched.endswith(".*"):  # all fields of a table not defined here
        prefix = watched[:-1]
        return written.startswith(prefix) and not written.startswith("@")
    return written == watched


def find_cycles(nodes: Mapping[str, tuple[Collection[str], Collection[str]]]) -> list[str]:
    """Cycles among automations given as name → (writes, watches) key sets. X→Y iff X writes a
    key Y watches. Returns one "a -> b -> a" path per cyclic SCC (self-loop or size > 1), each
    starting at its smallest name and following shortest edges, so output is deterministic."""
    graph: dict[str, list[str]] = {}
    for x, (writes, _) in nodes.items():
        graph[x] = sorted(
            y for y, (_, watches) in nodes.items()
            if any(_key_matches(w, k) for w in writes for k in watches)
        )
    paths: list[str] = []
    for comp in strongly_connected(graph):
        start = comp[0]
        if len(comp) == 1 and start not in graph[start]:
            continue
        members = set(comp)
        # breadth-first search for the shortest way back to start inside the component
        prev: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        end: str | None = None
        while frontier and end is None:
            nxt_frontier: list[str] = []
            for n in frontier:
                for m in graph[n]:
                    if m == start:
                        end = n
                        break
                    if m in members and m not in seen:
                        seen.add(m)
                        prev[m] = n
                        nxt_frontier.append(m)
                if end is not None:
                    break
            frontier = nxt_frontier
        assert end is not None
        chain = [end]
        while chain[-1] != start:
            chain.append(prev[chain[-1]])
        chain.reverse()
        paths.append(" -> ".join([*chain, start]))
    return sorted(paths)


# --------------------------------------------------------------------------------------------
# Semantic checks (04 §2)


class _Checker:
    def __init__(
        self, m: Manifest, files: Collection[str], out: _Collector
    ) -> None:
        self.m = m
        self.mod = m.module.id
        self.files = files
        self.out = out
        self.schema = _Schema(self.mod, m)
        self.title_fields: dict[str, str | None] = {}
        # cycle graph inputs: display name -> (writes, watches)
        self.automations: dict[str, tuple[set[str], set[str]]] = {}
        self.automation_paths: dict[str, PathT] = {}

    def err(self, path: PathT, code: str, message: str) -> None:
        self.out.add(path, code, message)

    def run(self) -> None:
        self.check_module()
        self.check_tables()
        self.check_edges()
        self.check_views()
        self.check_scripts()
        self.check_rules()
        self.check_cycles()

    # --- module -------------------------------------------------------------------------

    def check_module(self) -> None:
        m = self.m
        if m.manifest_version != 1:
            self.err(("manifest_version",), "unsupported_version",
                     f"manifest_version must be 1, got {m.manifest_version}")
        mi = m.module
        if not values.is_module(mi.id):
            self.err(("module", "id"), "bad_name",
                     f"module id {mi.id!r} must match {values.MODULE_RE.pattern}")
        elif mi.id in values.RESERVED_MODULES:
            self.err(("module", "id"), "reserved", f"module id {mi.id!r} is reserved")
        if VERSION_RE.fullmatch(mi.version) is None:
            self.err(("module", "version"), "bad_version",
                     f"version {mi.version!r} must be X.Y.Z")
        if not mi.name.strip():
            self.err(("module", "name"), "bad_value", "module name must not be empty")
        seen: set[str] = set()
        for i, cap in enumerate(mi.capabilities):
            problem = capability_problem(cap)
            if problem is not None:
                self.err(("module", "capabilities", i), "unsupported_capability", problem)
            elif cap in seen:
                self.err(("module", "capabilities", i), "duplicate", f"{cap!r} listed twice")
            seen.add(cap)

    # --- tables -------------------------------------------------------------------------

    def check_tables(self) -> None:
        tables = self.m.tables
        if len(tables) > MAX_TABLES:
            self.err(("tables",), "too_many", f"at most {MAX_TABLES} tables ({len(tables)})")
        folded: dict[str, str] = {}
        for tname, td in tables.items():
            tp: PathT = ("tables", tname)
            if values.TABLE_RE.fullmatch(tname) is None:
                self.err(tp, "bad_name", f"table name {tname!r} must match "
                         f"{values.TABLE_RE.pattern}")
            elif tname.lower() in folded:
                self.err(tp, "duplicate_table",
                         f"table {tname!r} clashes with {folded[tname.lower()]!r} (names are "
                         "unique ignoring case)")
            folded.setdefault(tname.lower(), tname)
            if len(td.fields) > MAX_FIELDS:
                self.err((*tp, "fields"), "too_many",
                         f"at most {MAX_FIELDS} fields per table ({len(td.fields)})")
            for fname, fd in td.fields.items():
                self.check_field((*tp, "fields", fname), fname, fd)
            self.check_title(tp, td)

    def check_title(self, tp: PathT, td: TableDef) -> None:
        title = td.title_field
        if title is None:
            title = next((n for n, f in td.fields.items() if f.type == "text"), None)
        elif title not in td.fields:
            self.err((*tp, "title_field"), "undefined_field", f"no field {title!r} in this table")
            title = None
        self.title_fields[tp[1]] = title  # type: ignore[index]

    def check_field(self, fp: PathT, fname: str, fd: FieldDef) -> None:
        if not values.is_local_name(fname):
            self.err(fp, "bad_name", f"field name {fname!r} must match {values.LOCAL_RE.pattern}")
        elif fname == "id":
            self.err(fp, "reserved", "field name 'id' is reserved")
        typed = fd.type in values.FTYPES
        if not typed:
            self.err((*fp, "type"), "unknown_type",
                     f"unknown type {fd.type!r} (one of {', '.join(sorted(values.FTYPES))})")
        if fd.crdt and fd.type != "text":
            self.err((*fp, "crdt"), "crdt_not_text", "only text fields can be CRDT text")
        self.check_choices(fp, fd, typed)
        if fd.default is not None:
            self.check_default(fp, fd, typed)
        if fd.shared_key is not None:
            if not values.is_local_name(fd.shared_key):
                self.err((*fp, "shared_key"), "bad_name",
                         f"shared_key {fd.shared_key!r} must match {values.LOCAL_RE.pattern}")
            elif fd.crdt:
                self.err((*fp, "shared_key"), "bad_shared_key",
                         "CRDT text fields cannot be mapped (post-V1)")
            elif fd.mode == "reference":
                self.err((*fp, "shared_key"), "bad_shared_key",
                         "reference-mode fields cannot carry a shared_key")
        if fd.ref_table is not None:
            if typed and fd.type != "entity_ref":
                self.err((*fp, "ref_table"), "bad_option", "ref_table is for entity_ref fields")
            self.check_table_ref((*fp, "ref_table"), fd.ref_table)
        self.check_mode(fp, fd)

    def check_choices(self, fp: PathT, fd: FieldDef, typed: bool) -> None:
        if fd.type == "enum" and fd.choices is None:
            self.err((*fp, "choices"), "missing_choices", "an enum field needs choices")
            return
        if fd.choices is None:
            return
        if typed and fd.type != "enum":
            self.err((*fp, "choices"), "bad_option", "choices are only for enum fields")
        if not 1 <= len(fd.choices) <= MAX_CHOICES:
            self.err((*fp, "choices"), "bad_choices", f"1 to {MAX_CHOICES} choices")
        seen: set[str] = set()
        for i, c in enumerate(fd.choices):
            cp = (*fp, "choices", i)
            if isinstance(c, list):
                ok = len(c) == 2 and all(type(x) is str for x in c)
                key = c[0] if ok else None
            else:
                key = c if type(c) is str else None
            if key is None:
                self.err(cp, "bad_choices", "a choice is a string or a [key, label] pair")
            elif not key:
                self.err(cp, "bad_choices", "a choice key cannot be empty")
            elif key in seen:
                self.err(cp, "bad_choices", f"choice key {key!r} appears twice")
            else:
                seen.add(key)

    def check_default(self, fp: PathT, fd: FieldDef, typed: bool) -> None:
        dp = (*fp, "default")
        if fd.type in ("entity_ref", "blob_ref") or fd.crdt:
            kind = "CRDT text" if fd.crdt else fd.type
            self.err(dp, "bad_default", f"a {kind} field cannot have a default")
            return
        if not typed:
            return
        try:
            literal_value(fd.type, fd.default, fd.choice_keys() if fd.type == "enum" else None)
        except ValidationError as e:
            self.err(dp, "bad_default", e.message)

    def check_mode(self, fp: PathT, fd: FieldDef) -> None:
        if fd.mode is not None and fd.mode not in FIELD_MODES:
            self.err((*fp, "mode"), "bad_value", "mode is 'discrete' or 'reference'")
            return
        if fd.mode == "reference":
            if fd.ref is None:
                self.err((*fp, "ref"), "missing_key", "a reference-mode field needs ref")
                return
            if fd.crdt:
                self.err((*fp, "mode"), "bad_ref", "CRDT text fields cannot be references")
        elif fd.ref is not None:
            self.err((*fp, "ref"), "bad_option", "ref is only for mode = 'reference'")
            return
        else:
            return
        ref = fd.ref
        rp = (*fp, "ref")
        if not values.is_field_key(ref):
            self.err(rp, "bad_name", f"ref {ref!r} must be a field key module.Table.field")
            return
        facet, fname = values.split_field_key(ref)
        if not self.schema.own(facet):
            return  # another module's field: checked when a value is written (01 §1.3)
        td = self.schema.tables.get(facet)
        if td is None:
            self.err(rp, "undefined_table", f"table {facet!r} is not defined")
            return
        target = td.fields.get(fname)
        if target is None:
            self.err(rp, "undefined_field", f"{facet} has no field {fname!r}")
        elif target.type != fd.type or target.crdt:
            self.err(rp, "type_mismatch",
                     f"ref must name a scalar {fd.type} field, {ref} is "
                     f"{'CRDT text' if target.crdt else target.type}")
        elif target.mode == "reference":
            self.err(rp, "bad_ref", "ref must name a discrete field (a ref to a ref reads empty)")

    def check_table_ref(self, path: PathT, t: str) -> bool:
        """A qualified table reference; own tables must exist. True if usable."""
        if not values.is_facet(t):
            self.err(path, "bad_name", f"{t!r} is not a qualified table module.Table")
            return False
        if self.schema.own(t) and t not in self.schema.tables:
            self.err(path, "undefined_table", f"table {t!r} is not defined")
            return False
        return True

    # --- edges and views ---------------------------------------------------------------

    def check_edges(self) -> None:
        edges = self.m.edges
        if len(edges) > MAX_EDGES:
            self.err(("edges",), "too_many", f"at most {MAX_EDGES} edge types ({len(edges)})")
        for ename, ed in edges.items():
            ep: PathT = ("edges", ename)
            if not values.is_local_name(ename):
                self.err(ep, "bad_name", f"edge name {ename!r} must match "
                         f"{values.LOCAL_RE.pattern}")
            if self.check_table_ref((*ep, "from"), ed.from_) and not self.schema.own(ed.from_):
                self.err((*ep, "from"), "bad_value", "an edge starts at one of the module's tables")
            if ed.to is not None:
                self.check_table_ref((*ep, "to"), ed.to)
            for pname, ptype in ed.properties.items():
                pp = (*ep, "properties", pname)
                if not values.is_local_name(pname):
                    self.err(pp, "bad_name", f"property name {pname!r} must match "
                             f"{values.LOCAL_RE.pattern}")
                if ptype not in values.FTYPES:
                    self.err(pp, "unknown_type", f"unknown type {ptype!r}")
                elif ptype == "enum":
                    self.err(pp, "bad_option", "edge properties cannot be enums (no choices)")

    def check_views(self) -> None:
        views = self.m.views
        if len(views) > MAX_VIEWS:
            self.err(("views",), "too_many", f"at most {MAX_VIEWS} views ({len(views)})")
        for vname, vd in views.items():
            vp: PathT = ("views", vname)
            if not values.is_local_name(vname):
                self.err(vp, "bad_name", f"view name {vname!r} must match "
                         f"{values.LOCAL_RE.pattern}")
            self.check_file((*vp, "entry"), vd.entry, "views", (".js", ".mjs"), nested=True)
            if vd.table is not None:
                self.check_table_ref((*vp, "table"), vd.table)

    def check_file(
        self, path: PathT, rel: str, folder: str, suffixes: tuple[str, ...], *, nested: bool
    ) -> bool:
        problem = relpath_problem(rel)
        if problem is not None:
            self.err(path, "unsafe_path", problem)
            return False
        parts = rel.split("/")
        if parts[0] != folder or len(parts) < 2 or (not nested and len(parts) != 2) or not (
            rel.endswith(suffixes)
        ):
            shape = f"{folder}/*{'|'.join(suffixes)}"
            self.err(path, "bad_path", f"{rel!r} must be a {shape} file")
            return False
        if rel not in self.files:
            self.err(path, "missing_file", f"{rel} is not in the package")
            return False
        return True

    # --- scripts -----------------------------------------------------------------------

    def check_scripts(self) -> None:
        scripts = self.m.scripts
        if len(scripts) > MAX_SCRIPTS:
            self.err(("scripts",), "too_many", f"at most {MAX_SCRIPTS} scripts ({len(scripts)})")
        declared = self.m.module.capabilities
        for sname, sd in scripts.items():
            sp: PathT = ("scripts", sname)
            if not values.is_local_name(sname):
                self.err(sp, "bad_name", f"script name {sname!r} must match "
                         f"{values.LOCAL_RE.pattern}")
            self.check_file((*sp, "file"), sd.file, "scripts", (".lua",), nested=False)
            for i, cap in enumerate(sd.capabilities):
                cp = (*sp, "capabilities", i)
                problem = capability_problem(cap)
                if problem is not None:
                    self.err(cp, "unsupported_capability", problem)
                elif not any(capability_covers(d, cap) for d in declared):
                    self.err(cp, "undeclared_capability",
                             f"{cap!r} is not among the module's capabilities")
            self.check_limits(sp, sd.limits)
            if sd.trigger in POST_V1_TRIGGERS:
                self.err((*sp, "trigger"), "unsupported_in_v1",
                         f"trigger {sd.trigger!r} is not supported in V1")
            elif sd.trigger not in TRIGGERS:
                self.err((*sp, "trigger"), "bad_value", "trigger is 'manual' or 'on_change'")
            elif sd.trigger == "manual":
                self.check_manual(sp, sd)
            else:
                self.check_on_change(sp, sname, sd)

    def check_limits(self, sp: PathT, lim: Limits | None) -> None:
        if lim is None:
            return
        bounds: list[tuple[str, float | int | None, float | int]] = [
            ("timeout_s", lim.timeout_s, MAX_TIMEOUT_S),
            ("memory_mib", lim.memory_mib, MAX_MEMORY_MIB),
            ("max_instructions", lim.max_instructions, MAX_INSTRUCTIONS),
        ]
        for key, val, cap in bounds:
            if val is not None and not 0 < val <= cap:
                self.err((*sp, "limits", key), "out_of_range", f"{key} must be in (0, {cap}]")

    def check_manual(self, sp: PathT, sd: ScriptDef) -> None:
        for aname, atype in sd.args.items():
            ap = (*sp, "args", aname)
            if not values.is_local_name(aname):
                self.err(ap, "bad_name", f"argument name {aname!r} must match "
                         f"{values.LOCAL_RE.pattern}")
            if atype not in values.FTYPES or atype == "enum":
                self.err(ap, "unknown_type", f"argument type {atype!r} is not a scalar ftype "
                         "(enum arguments have no choices)")
        for key in ("watch", "when", "writes"):
            if getattr(sd, key) is not None:
                self.err((*sp, key), "bad_option", f"{key} is only for on_change scripts")

    def check_on_change(self, sp: PathT, sname: str, sd: ScriptDef) -> None:
        if sd.args:
            self.err((*sp, "args"), "bad_option", "args are only for manual scripts")
        watches: set[str] = set()
        writes: set[str] = set()
        if sd.watch is None:
            self.err((*sp, "watch"), "missing_key", "an on_change script needs watch")
        else:
            watches = self.check_watch((*sp, "watch"), sd)
        if sd.writes is None:
            self.err((*sp, "writes"), "missing_key", "an on_change script needs writes")
        else:
            for i, w in enumerate(sd.writes):
                key = self.check_write((*sp, "writes", i), w, sd.capabilities)
                if key is not None:
                    writes.add(key)
        name = f"{self.mod}.{sname}"
        self.automations[f"script:{name}"] = (writes, watches)
        self.automation_paths[f"script:{name}"] = sp

    def check_watch(self, wp: PathT, sd: ScriptDef) -> set[str]:
        assert sd.watch is not None
        w = sd.watch
        keys: set[str] = set()
        for i, ev in enumerate(w.events):
            if ev not in EVENTS:
                self.err((*wp, "events", i), "bad_value", f"event {ev!r} is not one of {EVENTS}")
        if not self.check_table_ref((*wp, "table"), w.table):
            return keys
        td = self.schema.tables.get(w.table)
        for i, f in enumerate(w.fields):
            if not values.is_local_name(f):
                self.err((*wp, "fields", i), "bad_name", f"{f!r} is not a field name")
            elif td is not None and f not in td.fields:
                self.err((*wp, "fields", i), "undefined_field", f"{w.table} has no field {f!r}")
        events = set(w.events) or set(EVENTS)
        if "field_changed" in events:
            if w.fields:
                keys |= {f"{w.table}.{f}" for f in w.fields}
            elif td is not None:
                keys |= {f"{w.table}.{f}" for f in td.fields}
            else:
                keys.add(f"{w.table}.*")
        if events & {"record_added", "record_removed"}:
            keys.add(f"@member:{w.table}")
        if sd.when is not None:
            # `when` filters runs; it is not a watch (04 §6), so its keys are not collected
            _check_cond(sd.when, self.schema.table_scope(w.table), self.schema,
                        (*wp[:-1], "when"), self.out, set())
        return keys

    def check_write(self, path: PathT, w: str, caps: list[str]) -> str | None:
        """Validate one `writes` entry; returns its cycle key."""
        if w.startswith("edge:"):
            etype = w[5:]
            if not values.is_edge_type(etype):
                self.err(path, "bad_name", f"{w!r}: edge writes are edge:module.name")
                return None
            if self.schema.own(etype) and etype not in self.schema.edges:
                self.err(path, "undefined_edge", f"edge type {etype!r} is not defined")
                return None
            target, key, is_edge = etype, w, True
        elif values.is_field_key(w):
            facet, fname = values.split_field_key(w)
            if not self.check_table_ref(path, facet):
                return None
            td = self.schema.tables.get(facet)
            if td is not None and fname not in td.fields:
                self.err(path, "undefined_field", f"{facet} has no field {fname!r}")
                return None
            target, key, is_edge = facet, w, False
        elif values.is_facet(w):
            if not self.check_table_ref(path, w):
                return None
            target, key, is_edge = w, f"@member:{w}", False
        else:
            self.err(path, "bad_name",
                     f"{w!r} is not module.Table.field, module.Table or edge:module.name")
            return None
        if not self.schema.own(target):
            module = target.partition(".")[0]
            # edge types belong to a module, not a table, so only module-wide data.write fits
            wanted = f"data.write:{module}" if is_edge else f"data.write:{target}"
            if not any(capability_covers(c, wanted) for c in caps):
                self.err(path, "missing_capability",
                         f"writing {w} (outside the module) needs the capability "
                         f"data.write:{module} or {wanted}")
        return key

    # --- rules -------------------------------------------------------------------------

    def check_rules(self) -> None:
        rules = self.m.rules
        if len(rules) > MAX_RULES:
            self.err(("rules",), "too_many", f"at most {MAX_RULES} rules ({len(rules)})")
        for rname, rd in rules.items():
            rp: PathT = ("rules", rname)
            if not values.is_local_name(rname):
                self.err(rp, "bad_name", f"rule name {rname!r} must match "
                         f"{values.LOCAL_RE.pattern}")
            if rd.action != "add_to_table":
                self.err((*rp, "action"), "bad_value", "the only V1 action is 'add_to_table'")
            if rd.on_condition_lost not in ON_CONDITION_LOST:
                self.err((*rp, "on_condition_lost"), "bad_value",
                         f"on_condition_lost is one of {sorted(ON_CONDITION_LOST)}")
            source_ok = self.check_table_ref((*rp, "source"), rd.source)
            target_ok = self.check_table_ref((*rp, "target"), rd.target)
            watches: set[str] = set()
            writes: set[str] = set()
            if source_ok:
                watches.add(f"@member:{rd.source}")
                if rd.when is not None:
                    _check_cond(rd.when, self.schema.table_scope(rd.source), self.schema,
                                (*rp, "when"), self.out, watches)
            if target_ok:
                writes.add(f"@member:{rd.target}")
            self.check_set(rp, rd, source_ok, target_ok, writes)
            self.automations[f"{self.mod}.{rname}"] = (writes, watches)
            self.automation_paths[f"{self.mod}.{rname}"] = rp

    def check_set(
        self, rp: PathT, rd: RuleDef, source_ok: bool, target_ok: bool, writes: set[str]
    ) -> None:
        src = self.schema.tables.get(rd.source) if source_ok else None
        tgt = self.schema.tables.get(rd.target) if target_ok else None
        seen: set[str] = set()
        for i, entry in enumerate(rd.set):
            ep = (*rp, "set", i)
            if not values.is_local_name(entry.field):
                self.err((*ep, "field"), "bad_name", f"{entry.field!r} is not a field name")
                continue
            if entry.field in seen:
                self.err((*ep, "field"), "duplicate", f"{entry.field!r} is set twice")
            seen.add(entry.field)
            if entry.mode not in SET_MODES:
                self.err((*ep, "mode"), "bad_value", "mode is 'fill_if_empty' or 'always'")
            if target_ok:
                writes.add(f"{rd.target}.{entry.field}")
            tf = tgt.fields.get(entry.field) if tgt is not None else None
            if tgt is not None and tf is None:
                self.err((*ep, "field"), "undefined_field",
                         f"{rd.target} has no field {entry.field!r}")
            if tf is not None and tf.crdt:
                self.err((*ep, "field"), "bad_value", "rules cannot set CRDT text fields")
                tf = None
            if (entry.value is None) == (entry.copy_from is None):
                self.err(ep, "bad_value", "a set entry needs exactly one of value, copy_from")
            elif entry.value is not None:
                if tf is not None and tf.type in values.FTYPES:
                    try:
                        literal_value(tf.type, entry.value,
                                      tf.choice_keys() if tf.type == "enum" else None)
                    except ValidationError as e:
                        self.err((*ep, "value"), "bad_value", e.message)
            elif entry.copy_from is not None:
                self.check_copy_from((*ep, "copy_from"), entry.copy_from, rd, src, tf)

    def check_copy_from(
        self, path: PathT, name: str, rd: RuleDef, src: TableDef | None, tf: FieldDef | None
    ) -> None:
        if not values.is_local_name(name):
            self.err(path, "bad_name", f"{name!r} is not a field name")
            return
        if src is None:
            return
        sf = src.fields.get(name)
        if sf is None:
            self.err(path, "undefined_field", f"{rd.source} has no field {name!r}")
        elif tf is not None and (sf.type != tf.type or sf.crdt):
            self.err(path, "type_mismatch",
                     f"copies {'CRDT text' if sf.crdt else sf.type} into a {tf.type} field")

    # --- cycles ------------------------------------------------------------------------

    def check_cycles(self) -> None:
        for path in find_cycles(self.automations):
            first = path.split(" -> ", 1)[0]
            self.err(self.automation_paths[first], "cycle_detected", path)


def relpath_problem(rel: str) -> str | None:
    """Why rel is not a safe relative POSIX path inside a package, or None."""
    if not rel:
        return "empty path"
    if "\\" in rel or "\x00" in rel:
        return f"{rel!r}: backslashes and NUL are not allowed in package paths"
    if rel.startswith("/") or re.match(r"[A-Za-z]:", rel):
        return f"{rel!r} is an absolute path"
    if any(seg in ("", ".", "..") for seg in rel.split("/")):
        return f"{rel!r} contains '..', '.' or an empty segment"
    return None


# --------------------------------------------------------------------------------------------
# Script compile check


def _lua_compile_errors(sources: Mapping[str, bytes]) -> dict[str, str]:
    """file → "file:line: message" for scripts that do not compile. Compiles with Lua's `load`
    in text mode and never calls the chunk, so no script code runs here."""
    runtime_cls: Any = None
    # Lua 5.4 is what the sandbox runs (04 §7.2); any lupa build still catches syntax errors
    for name in ("lupa.lua54", "lupa"):
        try:
            runtime_cls = importlib.import_module(name).LuaRuntime
            break
        except (ImportError, AttributeError):
            continue
    if runtime_cls is None:  # pragma: no cover - lupa is a declared dependency
        return {}
    lua = runtime_cls(register_eval=False, register_builtins=False)
    load = lua.globals()["load"]
    errors: dict[str, str] = {}
    for rel, src in sorted(sources.items()):
        result = load(src, "=" + rel, "t")
        fn, msg = result if isinstance(result, tuple) else (result, None)
        if fn is None:
            text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
            errors[rel] = text
    return errors


# --------------------------------------------------------------------------------------------
# Manifest validation entry point


_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def _toml_problem(text: str, exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    m = _TOML_POS.search(msg)
    if m is not None:
        where = f"line {m.group(1)}, column {m.group(2)}"
    else:  # "(at end of document)": name the last line
        where = f"line {max(1, text.count(chr(10)) + (0 if text.endswith(chr(10)) else 1))}"
    reason = _TOML_POS.sub("", msg).replace("(at end of document)", "").strip()
    if reason.startswith("Cannot overwrite") or "twice" in reason:
        reason += " (a key or table is defined twice)"
    return f"module.toml {where}: {reason}"


def check_manifest(
    data: bytes,
    files: Collection[str] = (),
    scripts: Mapping[str, bytes] | None = None,
) -> Manifest:
    """Parse and validate module.toml bytes against the package's file list (relative POSIX
    paths) and script sources. Raises ManifestError with every problem found; returns the
    structured manifest with each table's `title_field` resolved."""
    col = _Collector()
    manifest = _check_manifest(data, files, scripts or {}, col)
    if col.items:
        raise ManifestError(col.problems())
    assert manifest is not None
    return manifest


def _check_manifest(
    data: bytes, files: Collection[str], scripts: Mapping[str, bytes], out: _Collector
) -> Manifest | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        out.add((FILE, "module.toml"), "bad_encoding",
                f"module.toml is not UTF-8 (byte {e.start})")
        return None
    try:
        raw: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        out.add((FILE, "module.toml"), "toml_syntax", _toml_problem(text, e))
        return None

    manifest: Manifest | None = None
    reported: set[PathT] = set()
    for _ in range(1000):  # each round prunes at least one node, so this ends
        try:
            manifest = _CONVERTER.structure(raw, Manifest)
            break
        except (ClassValidationError, IterableValidationError) as exc:
            problems = _structure_errors(exc)
        pruned_any = False
        for path, code, message in problems:
            if path not in reported:
                reported.add(path)
                out.add(path, code, message)
            pruned = _prune(raw, path, code)
            if pruned is not None:
                pruned_any = True
                if code != "unknown_key":
                    out.suppressed.append(pruned)
        if not pruned_any:
            break
    if manifest is None:
        return None

    checker = _Checker(manifest, files, out)
    checker.run()
    compile_errors = _lua_compile_errors(
        {sd.file: scripts[sd.file] for sd in manifest.scripts.values() if sd.file in scripts}
    )
    for sname, sd in manifest.scripts.items():
        if sd.file in compile_errors:
            out.add(("scripts", sname, "file"), "script_syntax", compile_errors[sd.file])
    tables = {
        t: attrs.evolve(td, title_field=checker.title_fields.get(t))
        for t, td in manifest.tables.items()
    }
    return attrs.evolve(manifest, tables=tables)


# --------------------------------------------------------------------------------------------
# Reading packages


@attrs.define
class _Reading:
    """What reading a package produced, before validation."""

    sizes: dict[str, int] = attrs.Factory(dict)  # every regular file kept, rel path → bytes
    manifest: bytes | None = None
    scripts: dict[str, bytes] = attrs.Factory(dict)
    warnings: list[str] = attrs.Factory(list)
    total: int = 0


def _top_level_allowed(first: str, is_dir: bool) -> bool:
    if first == "module.toml":
        return not is_dir
    if first in TOP_LEVEL_DIRS:
        return is_dir
    return first.startswith(("README", "LICENSE"))


def _admit_file(
    rel: str, size: int, read: Callable[[int], bytes], r: _Reading, lim: PackageLimits,
    out: _Collector,
) -> None:
    """Account one regular file: totals, caps, and reading the bytes the checks need."""
    r.total += size
    parts = rel.split("/")
    if not _top_level_allowed(parts[0], len(parts) > 1):
        msg = f"ignored unexpected entry {parts[0]!r}"
        if msg not in r.warnings:
            r.warnings.append(msg)
        return
    r.sizes[rel] = size
    if rel == "module.toml":
        if size > lim.max_manifest:
            out.add((FILE, rel), "too_large",
                    f"module.toml is {size} bytes (max {lim.max_manifest})")
        else:
            r.manifest = read(lim.max_manifest + 1)
    elif parts[0] == "scripts":
        if size > lim.max_script:
            out.add((FILE, rel), "too_large", f"{rel} is {size} bytes (max {lim.max_script})")
        elif rel.endswith(".lua"):
            r.scripts[rel] = read(lim.max_script + 1)


def _read_folder(root: Path, lim: PackageLimits, out: _Collector) -> _Reading:
    r = _Reading()
    stack = [(root, "")]
    count = 0
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            out.add((FILE, prefix or "."), "unreadable", f"cannot list {prefix or '.'}: {e}")
            continue
        for entry in entries:
            rel = prefix + entry.name
            count += 1
            if count > lim.max_entries:
                out.add((FILE, rel), "too_large", f"more than {lim.max_entries} entries")
                return r
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                out.add((FILE, rel), "unreadable", f"cannot read {rel}: {e}")
                continue
            if stat.S_ISLNK(st.st_mode):
                out.add((FILE, rel), "unsafe_path", f"{rel} is a symlink")
            elif stat.S_ISDIR(st.st_mode):
                stack.append((Path(entry.path), rel + "/"))
            elif not stat.S_ISREG(st.st_mode):
                out.add((FILE, rel), "unsafe_path", f"{rel} is not a regular file")
            else:
                path = Path(entry.path)

                def read(n: int, p: Path = path) -> bytes:
                    with p.open("rb") as f:
                        return f.read(n)

                _admit_file(rel, st.st_size, read, r, lim, out)
                if r.total > lim.max_unpacked:
                    out.add((FILE, "."), "too_large",
                            f"package exceeds {lim.max_unpacked} bytes unpacked")
                    return r
    return r


def zip_prefix(names: list[str]) -> str:
    """A zip made of the `<id>/` folder itself has one top directory; strip it."""
    if "module.toml" in names:
        return ""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1:
        (top,) = tops
        if f"{top}/module.toml" in names:
            return top + "/"
    return ""


def _read_zip(path: Path, lim: PackageLimits, out: _Collector) -> _Reading:
    r = _Reading()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        out.add((FILE, path.name), "bad_archive", f"not a readable zip archive: {e}")
        return r
    with zf:
        infos = zf.infolist()
        if len(infos) > lim.max_entries:
            out.add((FILE, path.name), "too_large", f"more than {lim.max_entries} entries")
            return r
        names = [i.filename for i in infos]
        seen: set[str] = set()
        safe: list[zipfile.ZipInfo] = []
        for info in infos:
            name = info.filename
            mode = info.external_attr >> 16
            problem = relpath_problem(name.rstrip("/") if info.is_dir() else name)
            if problem is not None:
                out.add((FILE, name), "unsafe_path", problem)
            elif stat.S_ISLNK(mode):
                out.add((FILE, name), "unsafe_path", f"{name} is a symlink")
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                out.add((FILE, name), "unsafe_path", f"{name} is not a regular file")
            elif name in seen:
                out.add((FILE, name), "unsafe_path", f"{name} appears twice in the archive")
            elif info.flag_bits & 0x1:
                out.add((FILE, name), "bad_archive", f"{name} is encrypted")
            else:
                seen.add(name)
                safe.append(info)
        declared = sum(i.file_size for i in infos)
        if declared > lim.max_unpacked:
            # zipfile never yields more than an entry's declared size, so checking the
            # declared sizes bounds what reading can produce
            out.add((FILE, path.name), "too_large",
                    f"package exceeds {lim.max_unpacked} bytes unpacked ({declared})")
            return r
        prefix = zip_prefix([n for n in names if n in seen])
        for info in safe:
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            rel = info.filename[len(prefix):]

            def read(n: int, i: zipfile.ZipInfo = info) -> bytes:
                try:
                    with zf.open(i) as f:
                        return f.read(n)
                except (zipfile.BadZipFile, OSError, ValueError) as e:
                    out.add((FILE, i.filename), "bad_archive",
                            f"cannot read {i.filename}: {e}")
                    return b""

            _admit_file(rel, info.file_size, read, r, lim, out)
    return r


def load_package(path: Path, *, limits: PackageLimits = DEFAULT_LIMITS) -> Package:
    """Read and validate a module package (a folder, or a `.zip` file) without writing
    anything. Raises ManifestError listing every problem found."""
    out = _Collector()
    if path.is_dir():
        reading = _read_folder(path, limits, out)
    elif path.is_file() and path.suffix.lower() == ".zip":
        reading = _read_zip(path, limits, out)
    else:
        raise ManifestError([Problem(path=str(path), code="missing_file",
                                     message="a package is a folder or a .zip file")])
    if reading.manifest is None:
        if "module.toml" not in reading.sizes and not out.items:  # else a read was refused
            out.add((FILE, "module.toml"), "missing_file", "the package has no module.toml")
        raise ManifestError(out.problems())
    manifest = _check_manifest(reading.manifest, reading.sizes.keys(), reading.scripts, out)
    if out.items or manifest is None:
        raise ManifestError(out.problems())
    mi = manifest.module
    return Package(
        id=mi.id,
        version=mi.version,
        name=mi.name,
        description=mi.description,
        manifest=manifest,
        manifest_hash=blake3.blake3(reading.manifest).hexdigest(),
        files=tuple(sorted(f for f in reading.sizes if f.split("/", 1)[0] in ("views", "scripts")
                           and "/" in f)),
        warnings=tuple(reading.warnings),
    )
