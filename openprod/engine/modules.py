"""Adopting module packages into a workspace, and field-mapping suggestions (spec 04 §4).

This module owns what adoption *means* for the derived schema, without writing anything:

- the `schema` bundle's payloads for a validated `Package` (`DefineTable` / `DefineField` /
  `DefineEdgeType` plus the `PutConfig("module", id, …)` document);
- the upgrade rule: a new version must be a pure superset of what the workspace already holds
  for that module (adds tables, fields, edges, choices, edge properties; changes no ftype, CRDT
  flag or edge ordering), else `schema_change_unsupported`;
- the mapping suggestions derived from every adopted module's `shared_keys` and the mapping ops.

Naming. Module tables use the engine's qualified scheme directly: facet `module.Table`, field name
= the manifest's field name, so the field key is `module.Table.field` and the edge type
`module.edge` (spec 01 §1.2). User-made tables (`workspace.t_<hex>`, fields `f_<hex>`) live in
the reserved `workspace` module, so the two can never collide; both are shown by their labels
(the manifest's `label`, else the table name / the field name made readable).

`Workspace.adopt_module` and `Workspace.mapping_suggestions` are thin wrappers over these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openprod.core import codec, values
from openprod.core import ops as O
from openprod.core.errors import ValidationError
from openprod.engine.manifest import EdgeDef, Package, field_default
from openprod.engine.manifest import FieldDef as ManifestField
from openprod.engine.views import TableDef, Views

CONFIG_NS = "module"


class SchemaChangeUnsupported(ValidationError):
    """A module version that would remove or retype something the workspace already has."""

    code = "schema_change_unsupported"


class TypeMismatch(ValidationError):
    """Two fields that cannot share a slot (different ftypes, or CRDT text)."""

    code = "type_mismatch"


def version_tuple(v: str) -> tuple[int, ...]:
    """`"1.10.0"` → (1, 10, 0): versions compare numerically, not as strings."""
    return tuple(int(p) for p in v.split("."))


def field_label(name: str, fd: ManifestField) -> str:
    return fd.label or name.replace("_", " ").capitalize()


def field_opts(fd: ManifestField) -> dict[str, Any]:
    """The 01 `opts` of a manifest field; flags that are off are left out (opts is LWW as a
    whole, so leaving `required` out on an upgrade really clears it)."""
    opts: dict[str, Any] = {}
    if fd.choices is not None:
        opts["choices"] = list(fd.choices)
    if fd.required:
        opts["required"] = True
    if fd.hidden:
        opts["hidden"] = True
    default = field_default(fd)
    if default is not None:
        opts["default"] = default
    if fd.mode is not None:
        opts["mode"] = fd.mode
    if fd.ref is not None:
        opts["ref"] = fd.ref
    if fd.ref_table is not None:
        opts["ref_table"] = fd.ref_table
    return opts


def module_document(pkg: Package) -> dict[str, Any]:
    """The synced `PutConfig("module", id)` value: what suggestions and peers without the
    install need to know about an adoption."""
    mid = pkg.id
    shared: dict[str, str] = {}
    titles: dict[str, str] = {}
    for tname, td in pkg.manifest.tables.items():
        facet = f"{mid}.{tname}"
        for fname, fd in td.fields.items():
            if fd.shared_key is not None:
                shared[values.field_key(facet, fname)] = fd.shared_key
        if td.title_field is not None:
            titles[facet] = td.title_field
    # which tables each relationship joins (DefineEdgeType has no ends): record pickers use it
    ends = {f"{mid}.{ename}": {"from": ed.from_, "to": ed.to}
            for ename, ed in pkg.manifest.edges.items()}
    return {"version": pkg.version, "manifest_hash": pkg.manifest_hash, "shared_keys": shared,
            "title_fields": titles, "edge_ends": ends}


def edge_ends(views: Views) -> dict[str, dict[str, str | None]]:
    """Edge type → {from, to} tables, for the adopted modules' relationships (user-made edge
    types join any records). Adoptions synced from an older engine have none."""
    out: dict[str, dict[str, str | None]] = {}
    for doc in module_configs(views).values():
        ends = doc.get("edge_ends")
        if isinstance(ends, dict):
            for etype, e in ends.items():
                if isinstance(e, dict):
                    out[str(etype)] = {"from": e.get("from"), "to": e.get("to")}
    return out


def adoption_payloads(pkg: Package) -> list[O.Payload]:
    """Every definition of the package, in manifest order (field order = display order), then
    the module document. Re-sent in full on an upgrade: equal definitions are no-ops in
    derivation and labels/opts are LWW, so the newest manifest's wording wins everywhere."""
    mid = pkg.id
    out: list[O.Payload] = []
    for tname, td in pkg.manifest.tables.items():
        facet = f"{mid}.{tname}"
        out.append(O.DefineTable(facet, td.label or tname))
        for fname, fd in td.fields.items():
            opts = field_opts(fd)
            out.append(O.DefineField(facet, fname, fd.type, field_label(fname, fd),
                                     crdt=True if fd.crdt else None, opts=opts or None))
    for ename, ed in pkg.manifest.edges.items():
        out.append(O.DefineEdgeType(f"{mid}.{ename}", ed.ordered, _edge_label(ename, ed),
                                    props=dict(ed.properties) or None))
    out.append(O.PutConfig(CONFIG_NS, mid, module_document(pkg)))
    return out


def _edge_label(name: str, ed: EdgeDef) -> str:
    return ed.label or name.replace("_", " ").capitalize()


# --- reading what the workspace holds ---------------------------------------------------------

def module_configs(views: Views) -> dict[str, dict[str, Any]]:
    """Adopted modules: id → its module document (deleted or malformed documents skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for key, raw in views.conn.execute(
        "SELECT key, value FROM config WHERE ns = ? ORDER BY key", (CONFIG_NS,)
    ):
        if raw is None:
            continue
        doc = codec.decode(bytes(raw))
        if isinstance(doc, dict) and isinstance(doc.get("version"), str):
            out[str(key)] = doc
    return out


def module_tables(views: Views, mid: str) -> list[TableDef]:
    return [t for t in views.tables() if t.module == mid]


def superset_problems(pkg: Package, views: Views) -> list[dict[str, str]]:
    """What the package would remove or retype relative to the module's current schema in this
    workspace (empty = a pure superset). Checked against the derived schema, not the previous
    manifest, so a concurrent adoption on another peer is covered too."""
    mid = pkg.id
    problems: list[dict[str, str]] = []

    def add(path: str, message: str) -> None:
        problems.append({"path": path, "code": "schema_change_unsupported", "message": message})

    new_tables = {f"{mid}.{t}": td for t, td in pkg.manifest.tables.items()}
    for t in module_tables(views, mid):
        ntd = new_tables.get(t.facet)
        if ntd is None:
            add(t.facet, f"table {t.facet} would be removed")
            continue
        for f in t.fields:
            nfd = ntd.fields.get(f.name)
            if nfd is None:
                add(f.key, f"field {f.key} would be removed")
            elif (nfd.type, nfd.crdt) != (f.ftype, f.crdt):
                add(f.key, f"field {f.key} would change from {_kind(f.ftype, f.crdt)} to "
                    f"{_kind(nfd.type, nfd.crdt)}")
            elif f.ftype == "enum":
                lost = [c for c in f.choices or [] if c not in nfd.choice_keys()]
                if lost:
                    add(f.key, f"field {f.key} would lose choices {lost}")
    new_edges = {f"{mid}.{e}": ed for e, ed in pkg.manifest.edges.items()}
    for et in views.edge_types():
        if not et["type"].startswith(f"{mid}."):
            continue
        ned = new_edges.get(et["type"])
        if ned is None:
            add(et["type"], f"edge type {et['type']} would be removed")
            continue
        if ned.ordered != et["ordered"]:
            add(et["type"], f"edge type {et['type']} would change ordered to {ned.ordered}")
        for p, ptype in (et["props"] or {}).items():
            if ned.properties.get(p) != ptype:
                add(f"{et['type']}.{p}", f"property {p} of {et['type']} ({ptype}) would be "
                    "removed or retyped")
    return problems


def _kind(ftype: str, is_crdt: bool) -> str:
    return "CRDT text" if is_crdt else ftype


def check_adoptable(pkg: Package, views: Views) -> bool:
    """False if this exact version is already adopted (a no-op). Raises SchemaChangeUnsupported
    for a downgrade or a version that is not a pure superset; nothing is written either way."""
    current = module_configs(views).get(pkg.id)
    if current is not None:
        if current["version"] == pkg.version:
            return False
        if version_tuple(current["version"]) > version_tuple(pkg.version):
            raise SchemaChangeUnsupported(
                f"module {pkg.id} {current['version']} is adopted; {pkg.version} is older",
                module=pkg.id, adopted=current["version"], version=pkg.version)
    problems = superset_problems(pkg, views)
    if problems:
        raise SchemaChangeUnsupported(
            f"module {pkg.id} {pkg.version} is not a pure superset of the adopted schema: "
            f"{problems[0]['message']}" + (f" (and {len(problems) - 1} more)"
                                           if len(problems) > 1 else ""),
            module=pkg.id, version=pkg.version, problems=problems)
    return True


# --- field mappings ----------------------------------------------------------------------------

def mapping_rows(views: Views) -> list[tuple[str, str, bool]]:
    """(key_a, key_b, confirmed) of every pair a mapping op decided (latest op per pair)."""
    return [(str(a), str(b), bool(c)) for a, b, c in views.conn.execute(
        "SELECT key_a, key_b, confirmed FROM mappings ORDER BY key_a, key_b")]


def _slots(views: Views) -> dict[str, str]:
    # read from SQL rather than the projection's cache: a reader connection's cache is only
    # refreshed on demand, the table is always current within the read
    return {str(k): str(s) for k, s in views.conn.execute("SELECT fkey, slot FROM field_slots")}


def _field_json(views: Views, key: str, tables: Mapping[str, TableDef]) -> dict[str, Any] | None:
    facet, name = values.split_field_key(key)
    t = tables.get(facet)
    f = next((x for x in t.fields if x.name == name), None) if t is not None else None
    if t is None or f is None:
        return None
    return {"key": key, "table": facet, "table_label": t.label, "field": name,
            "label": f.label, "type": f.ftype, "crdt": f.crdt}


def suggestions(views: Views) -> list[dict[str, Any]]:
    """Pairs of defined fields in different tables with equal `shared_key`, not yet confirmed or
    rejected and not already sharing a slot; pairs of different ftypes (or CRDT text) are listed
    with `compatible: false` so the UI can show why they cannot be confirmed."""
    by_key: dict[str, set[str]] = {}
    for doc in module_configs(views).values():
        shared = doc.get("shared_keys")
        if not isinstance(shared, dict):
            continue
        for fkey, skey in shared.items():
            if isinstance(fkey, str) and isinstance(skey, str) and values.is_field_key(fkey):
                by_key.setdefault(skey, set()).add(fkey)
    decided = {(a, b) for a, b, _ in mapping_rows(views)}
    slots = _slots(views)
    tables = {t.facet: t for t in views.tables()}
    out: list[dict[str, Any]] = []
    for skey in sorted(by_key):
        for a, b in _pairs(sorted(by_key[skey])):
            if values.split_field_key(a)[0] == values.split_field_key(b)[0]:
                continue  # same table: not a mapping between data sets
            if (a, b) in decided or slots.get(a, a) == slots.get(b, b):
                continue
            fa, fb = _field_json(views, a, tables), _field_json(views, b, tables)
            if fa is None or fb is None:
                continue  # not (yet) defined here, e.g. the schema bundle has not arrived
            compatible = fa["type"] == fb["type"] and not fa["crdt"] and not fb["crdt"]
            s: dict[str, Any] = {"key_a": a, "key_b": b, "shared_key": skey, "a": fa, "b": fb,
                                 "compatible": compatible}
            if not compatible:
                s["reason"] = (f"{_kind(fa['type'], fa['crdt'])} vs "
                               f"{_kind(fb['type'], fb['crdt'])}")
            out.append(s)
    return out


def _pairs(keys: list[str]) -> Iterable[tuple[str, str]]:
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            yield a, b


def mapping_lists(views: Views) -> dict[str, Any]:
    """Suggested, confirmed and rejected pairs (the `GET /field-mappings/list` answer)."""
    tables = {t.facet: t for t in views.tables()}
    decided: dict[str, list[dict[str, Any]]] = {"confirmed": [], "rejected": []}
    for a, b, confirmed in mapping_rows(views):
        decided["confirmed" if confirmed else "rejected"].append(
            {"key_a": a, "key_b": b, "a": _field_json(views, a, tables),
             "b": _field_json(views, b, tables)})
    return {"suggestions": suggestions(views), **decided}
