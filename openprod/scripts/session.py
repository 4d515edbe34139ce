"""The engine side of a script run's `core.*` calls (spec 04 §7.3): reads and writes in the run's
overlay, with the run's write scope, declared writes and limits.

`RunSession.call(name, args)` answers one forwarded call with `(True, value)` or
`(False, {"code", "message"})` and never raises. Each mutating call is one local mutation batch
staged into the run's overlay (`Workspace.staging_into`), so rules fire in that overlay after
every call (04 §6) and later calls read their own writes. Values cross in the Lua forms of
04 §2 (ids as UUID strings, dates as "YYYY-MM-DD", datetimes and durations as integer ms).
Pure and synchronous: the ScriptRunner calls it on the OplogWriter, one call at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from openprod.core import ids
from openprod.core.errors import (
    EntityDeleted,
    EntityMerged,
    NotFound,
    OpenprodError,
    ValidationError,
)
from openprod.engine import rules as rulemod
from openprod.engine.views import FieldDef, TableDef
from openprod.engine.workspace import Workspace

MAX_STAGED = 50_000
MAX_RESULTS = 100_000
WORKSPACE_SCOPE = "workspace"

# calls answered by the host or the runner, not here
NOT_HERE = frozenset(["log", "context", "now", "sleep", "await"])


class CoreError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class RunSpec:
    """What a run may do. `module` None: a workspace script (write scope `workspace.*`)."""

    run_id: str
    script: str
    module: str | None
    trigger: str = "manual"
    writes: frozenset[str] | None = None  # on_change: declared writes; manual: None
    grants: frozenset[str] = frozenset()  # effective capabilities (declared ∩ granted)
    max_staged: int = MAX_STAGED
    max_results: int = MAX_RESULTS


class RunSession:
    def __init__(self, ws: Workspace, overlay: bytes, spec: RunSpec) -> None:
        self.ws = ws
        self.overlay = overlay
        self.spec = spec
        self.staged = 0
        # ((overlay store rewrites, canonical head), rows applied, the view)
        self._layer: tuple[tuple[int, int], int, rulemod.Layer] | None = None
        self._calls: dict[str, Callable[..., Any]] = {
            "get_field": self.get_field, "get_record": self.get_record,
            "exists": self.exists, "tables_of": self.tables_of, "query": self.query,
            "query_one": self.query_one, "edges": self.edges,
            "create_entity": self.create_entity, "delete_entity": self.delete_entity,
            "attach_facet": self.attach_facet, "detach_facet": self.detach_facet,
            "set_field": self.set_field, "set_text": self.set_text,
            "set_reference": self.set_reference, "create_edge": self.create_edge,
            "delete_edge": self.delete_edge, "move_edge": self.move_edge,
        }

    # --- dispatch ------------------------------------------------------------------------------
    def call(self, name: str, args: Sequence[Any]) -> tuple[bool, Any]:
        fn = self._calls.get(name)
        if fn is None:
            return False, {"code": "BadArgument", "message": f"core.{name} is not available"}
        try:
            with self.ws.staging_into(self.overlay):
                return True, fn(*_pad(name, fn, args))
        except CoreError as e:
            return False, {"code": e.code, "message": e.message}
        except rulemod.RuleLimitExceeded as e:
            return False, {"code": "LimitExceeded", "message": e.message}
        except (EntityDeleted, EntityMerged) as e:
            return False, {"code": "EntityDeleted", "message": e.message}
        except NotFound as e:
            return False, {"code": "NotFound", "message": e.message}
        except ValidationError as e:
            code = "TypeMismatch" if "ftype" in e.details else "BadArgument"
            return False, {"code": code, "message": e.message}
        except OpenprodError as e:
            return False, {"code": "BadArgument", "message": e.message}

    # --- helpers -------------------------------------------------------------------------------
    def _id(self, x: Any, what: str = "id") -> bytes:
        if not isinstance(x, str):
            raise CoreError("BadArgument", f"{what} must be a record id string")
        try:
            return ids.from_text(x)
        except (ValueError, TypeError):
            raise CoreError("BadArgument", f"{what} {x[:40]!r} is not an id") from None

    def _table(self, ref: Any) -> TableDef:
        if not isinstance(ref, str):
            raise CoreError("BadArgument", "a table is named by its id, module.Table")
        for t in self.ws.views.tables():
            if t.facet == ref:
                return t
        raise CoreError("UnknownTable", f"no table {ref!r}")

    def _field(self, t: TableDef, name: Any) -> FieldDef:
        if not isinstance(name, str):
            raise CoreError("BadArgument", "a field is named by its name")
        for f in t.fields:
            if f.name == name:
                return f
        raise CoreError("UnknownField", f"{t.facet} has no field {name!r}")

    def _live(self, x: Any) -> bytes:
        e = self._id(x)
        return self.ws._entity(e)

    def _view(self) -> rulemod.Layer:
        """Canonical + the run's overlay. Kept between calls while canonical is unchanged: ops
        staged since are applied to it (replaying every staged op for each read made a run
        quadratic in its writes); anything else (rows removed or rewritten) rebuilds it."""
        store, head = self.ws.overlays, self.ws.storage.head_seq()
        c = self._layer
        key = (store.rewrites, head)
        if c is not None and c[0] == key:
            layer, n = c[2], c[1]
            if store.count(self.overlay) == n:
                return layer
            for r in store.rows_since(self.overlay, n):
                layer.apply(r.payload)
        else:
            layer = rulemod.Layer(rulemod.CanonicalView(rulemod.Schema(self.ws.views)),
                                  [r.payload for r in store.rows(self.overlay)])
        self._layer = (key, store.count(self.overlay), layer)
        return layer

    def _member(self, e: bytes, t: TableDef) -> None:
        if t.facet not in self._view().facets_of(e):
            raise CoreError("NotMember", f"record {ids.to_text(e)} is not in {t.facet}")

    def _may_write(self, key: str, facet_or_type: str) -> None:
        """Write scope (own module or workspace tables, or a data.write grant), then the
        declared `writes` of an on-change script."""
        owner = facet_or_type.split(".", 1)[0]
        scope = self.spec.module or WORKSPACE_SCOPE
        if owner != scope and not any(
            g == f"data.write:{owner}" or g == f"data.write:{facet_or_type}"
            for g in self.spec.grants
        ):
            raise CoreError("CapabilityDenied",
                            f"writing {facet_or_type} needs the capability "
                            f"data.write:{owner} (this script writes {scope}.*)")
        if self.spec.writes is not None and key not in self.spec.writes:
            raise CoreError("UndeclaredWrite", f"{key} is not among this script's writes")

    def _after_write(self) -> None:
        n = self.ws.overlays.count(self.overlay)
        self.staged = n
        if n > self.spec.max_staged:
            raise CoreError("LimitExceeded",
                            f"the run staged more than {self.spec.max_staged} changes")

    def _values(self, e: bytes, t: TableDef) -> dict[str, Any]:
        return self._view().field_values(e, t.facet)

    # --- reads ---------------------------------------------------------------------------------
    def get_field(self, id_: Any, table: Any, field: Any) -> Any:
        e = self._live(id_)
        t = self._table(table)
        f = self._field(t, field)
        self._member(e, t)
        return _lua(self._values(e, t).get(f.name))

    def get_record(self, id_: Any, table: Any) -> dict[str, Any]:
        e = self._live(id_)
        t = self._table(table)
        self._member(e, t)
        return {k: _lua(v) for k, v in self._values(e, t).items() if _lua(v) is not None}

    def exists(self, id_: Any) -> bool:
        return self._view().is_live(self._id(id_))

    def tables_of(self, id_: Any) -> list[str]:
        return sorted(self._view().facets_of(self._live(id_)))

    def query(self, q: Any) -> list[str]:
        if not isinstance(q, Mapping):
            raise CoreError("BadArgument", "a query is a table {table = ..., where = ...}")
        out = self.ws.query(q)
        if len(out) > self.spec.max_results:
            raise CoreError("LimitExceeded",
                            f"the query matched more than {self.spec.max_results} records")
        return out

    def query_one(self, q: Any) -> str | None:
        out = self.query(q)
        return out[0] if out else None

    def edges(self, id_: Any, opts: Any = None) -> list[dict[str, Any]]:
        e = self._live(id_)
        opts = _opts(opts, ("type", "dir"))
        direction = opts.get("dir", "out")
        if direction not in ("out", "in", "both"):
            raise CoreError("BadArgument", "dir is out, in or both")
        etype = opts.get("type")
        if etype is not None and self.ws.views.edge_type(etype) is None:
            raise CoreError("UnknownEdgeType", f"no edge type {etype!r}")
        out = []
        for d in self.ws.list_edges(e, etype, direction):
            g: dict[str, Any] = {"id": d["id"], "type": d["type"], "source": d["src"],
                                 "target": d["dst"], "properties": d.get("props") or {}}
            if d.get("index") is not None:
                g["index"] = d["index"]
            out.append(g)
        return out

    # --- writes --------------------------------------------------------------------------------
    def _fields_arg(self, t: TableDef, fields: Any) -> dict[str, Any]:
        vals = _opts(fields, None)
        out: dict[str, Any] = {}
        for k, v in vals.items():
            f = self._field(t, k)
            if f.crdt:
                raise CoreError("TypeMismatch", f"{f.name} is collaborative text: use set_text")
            self._may_write(f"{t.facet}.{f.name}", t.facet)
            out[f.name] = v
        return out

    def create_entity(self, table: Any = None, fields: Any = None) -> str:
        if table is None:
            if fields is not None:
                raise CoreError("BadArgument", "fields need a table")
            raise CoreError("BadArgument", "create_entity needs a table in V1")
        t = self._table(table)
        self._may_write(t.facet, t.facet)
        vals = self._fields_arg(t, fields)
        for f in t.fields:
            if f.opts.get("required") and vals.get(f.name) in (None, ""):
                raise CoreError("Required", f"{t.facet}.{f.name} is required")
        res = self.ws.create_record(t.facet, vals)
        self._after_write()
        return ids.to_text(res.id)

    def delete_entity(self, id_: Any) -> None:
        e = self._live(id_)
        for facet in sorted(self._view().facets_of(e)):
            self._may_write(facet, facet)
        self.ws.delete_record(e)
        self._after_write()

    def attach_facet(self, id_: Any, table: Any, fields: Any = None) -> None:
        e = self._live(id_)
        t = self._table(table)
        vals = self._fields_arg(t, fields)
        if t.facet in self._view().facets_of(e):
            if vals:  # attach on a member only sets fields
                self._set(e, t, vals)
            return
        self._may_write(t.facet, t.facet)
        self.ws.add_to_table(e, t.facet, vals)
        self._after_write()

    def detach_facet(self, id_: Any, table: Any) -> None:
        e = self._live(id_)
        t = self._table(table)
        self._member(e, t)
        self._may_write(t.facet, t.facet)
        self.ws.delete_record(e, t.facet)
        self._after_write()

    def set_field(self, id_: Any, table: Any, field: Any, value: Any = None) -> None:
        e = self._live(id_)
        t = self._table(table)
        f = self._field(t, field)
        if f.crdt:
            raise CoreError("TypeMismatch", f"{f.name} is collaborative text: use set_text")
        self._member(e, t)
        if value is None and f.opts.get("required"):
            raise CoreError("Required", f"{t.facet}.{f.name} is required")
        self._may_write(f"{t.facet}.{f.name}", t.facet)
        self._set(e, t, {f.name: value})

    def _set(self, e: bytes, t: TableDef, vals: dict[str, Any]) -> None:
        # scripts never resolve conflicts: a field with competing values is left to a person
        conflicted = self._view().conflicted(e, t.facet) & set(vals)
        if conflicted:
            name = sorted(conflicted)[0]
            raise CoreError("Conflicted", f"{t.facet}.{name} of {ids.to_text(e)} has an open "
                            "conflict; a person resolves it first")
        cur = self._values(e, t)
        changed = {k: v for k, v in vals.items() if cur.get(k) != v}  # no-op writes dropped
        if changed:
            self.ws.update_record(e, changed, t.facet)
            self._after_write()

    def set_text(self, id_: Any, table: Any, field: Any, s: Any) -> None:
        e = self._live(id_)
        t = self._table(table)
        f = self._field(t, field)
        if not f.crdt:
            raise CoreError("TypeMismatch", f"{f.name} is not collaborative text: use set_field")
        raise CoreError("BadArgument", "collaborative text cannot be staged in a script's "
                        f"overlay in V1 ({t.facet}.{f.name} of {ids.to_text(e)})")

    def set_reference(self, id_: Any, table: Any, field: Any, target: Any = None,
                      target_field: Any = None) -> None:
        e = self._live(id_)
        t = self._table(table)
        f = self._field(t, field)
        self._member(e, t)
        self._may_write(f"{t.facet}.{f.name}", t.facet)
        if target is None:
            self._set(e, t, {f.name: None})
            return
        te = self._live(target)
        key = target_field if target_field is not None else f.opts.get("ref")
        if not isinstance(key, str) or key.count(".") < 2:
            raise CoreError("BadArgument", "target_field is a field key module.Table.field")
        self.ws.update_record(e, {f.name: {"ref": [ids.to_text(te), key]}}, t.facet)
        self._after_write()

    def create_edge(self, etype: Any, src: Any, dst: Any, props: Any = None,
                    pos: Any = None) -> str:
        if not isinstance(etype, str) or self.ws.views.edge_type(etype) is None:
            raise CoreError("UnknownEdgeType", f"no edge type {etype!r}")
        self._may_write(f"edge:{etype}", etype)
        p = _opts(pos, ("after", "before"))
        res = self.ws.create_edge(etype, self._live(src), self._live(dst),
                                  props=_opts(props, None), after=p.get("after"),
                                  before=p.get("before"))
        self._after_write()
        return ids.to_text(res.id)

    def _edge_type_of(self, eid: Any) -> str:
        g = self._id(eid, "edge id")
        info = self.ws._edge_info(g)
        if info is None or info["deleted"]:
            raise CoreError("NotFound", f"no edge {eid}")
        return str(info["type"])

    def delete_edge(self, eid: Any) -> None:
        etype = self._edge_type_of(eid)
        self._may_write(f"edge:{etype}", etype)
        self.ws.delete_edge(eid)
        self._after_write()

    def move_edge(self, eid: Any, pos: Any = None) -> None:
        etype = self._edge_type_of(eid)
        self._may_write(f"edge:{etype}", etype)
        p = _opts(pos, ("after", "before"))
        self.ws.reorder_edge(eid, after=p.get("after"), before=p.get("before"))
        self._after_write()


def _pad(name: str, fn: Callable[..., Any], args: Sequence[Any]) -> list[Any]:
    """Lua drops trailing nils; too many arguments is a mistake worth naming."""
    code = fn.__code__
    n = code.co_argcount - 1  # minus self
    if len(args) > n:
        raise CoreError("BadArgument", f"core.{name} takes at most {n} arguments")
    return [*args, *[None] * (n - len(args))]  # the nils Lua dropped: each is checked


def _opts(x: Any, keys: tuple[str, ...] | None) -> dict[str, Any]:
    if x is None:
        return {}
    if not isinstance(x, Mapping):
        raise CoreError("BadArgument", "expected a table of named options")
    if keys is not None:
        for k in x:
            if k not in keys:
                raise CoreError("BadArgument", f"unknown option {k!r}")
    return dict(x)


def _lua(v: Any) -> Any:
    """A displayed value in its Lua form (04 §2): empty text reads as nil."""
    if v == "":
        return None
    return v
