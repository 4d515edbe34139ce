"""HTTP routes for modules and field mappings (spec 05 §5 "Modules, mappings", spec 04 §4, J4).

Declared with `actors.api.api` like every other route (so they are in the OpenAPI document and
the generic route tests); `actors.api` imports this module at its end. Installing touches only
this user's install store (`Home.modules`, in a worker thread: it reads, hashes and copies
files); adopting and the mapping decisions are workspace commands on the single writer. Module
view files are served by `serve_view` (registered by `create_app`, not JSON).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from quart import Response

from actors import blocking
from actors.api import _command, _field, _query, _result, api, obj
from actors.module_store import (
    ModuleNotInstalled,
    ModuleStore,
    builtin_modules,
    describe,
    valid_id,
    valid_version,
)
from actors.node import Node
from openprod.core import values
from openprod.core.errors import NotFound, ValidationError
from openprod.engine import modules as modmod
from openprod.engine.manifest import Package, relpath_problem

# (not imported from actors.api: mypy cannot type it through the circular import)
STR: dict[str, Any] = {"type": "string"}
VIEW_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
              ".json": "application/json", ".html": "text/html"}


def _seq(node: Node) -> int:
    return node.session.writer.appended if node.session is not None else 0


def _store(node: Node) -> ModuleStore:
    return node.home.modules


def _package_for(store: ModuleStore, mid: str, version: str | None) -> Package:
    """The installed package to adopt. A built-in module is installed from the repository's
    `modules/` folder first when this user has not installed it (or asks for its version)."""
    builtin = builtin_modules().get(mid)
    if builtin is not None and (version is None or version == builtin[0].version) \
            and builtin[0].version not in store.versions(mid):
        store.install(builtin[1])
    return store.load(mid, version)


@api("/modules/install", "POST", "Install a module package (a local folder or .zip) for this "
     "user; 400 invalid_module lists every problem", body=obj(["path"], path=STR))
async def install_module(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    raw = _field(body, "path", str)
    src = Path(raw).expanduser()
    if not src.is_absolute():
        raise ValidationError("path must be an absolute path to a folder or .zip", field="path")
    pkg, fresh = await blocking.run_sync(_store(node).install, src)
    info = describe(pkg, _store(node).version_dir(pkg.id, pkg.version))
    return {**info, "installed": fresh, "warnings": list(pkg.warnings), "seq": _seq(node)}


@api("/modules/list", "GET", "Modules: installed versions, the version adopted in this "
     "workspace, and the built-in ones", query=("after",))
async def list_modules(node: Node, body: Any) -> dict[str, Any]:
    def local() -> tuple[list[dict[str, Any]], dict[str, tuple[Package, Path]]]:
        return _store(node).installed(), builtin_modules()

    installed, builtins = await blocking.run_sync(local)
    adopted: dict[str, dict[str, Any]] = {}
    if node.session is not None:
        adopted = await _query(node, modmod.module_configs)
    by_id: dict[str, dict[str, Any]] = {}

    def entry(mid: str) -> dict[str, Any]:
        return by_id.setdefault(mid, {"id": mid, "name": mid, "description": "",
                                      "installed": [], "adopted": None, "builtin": None,
                                      "views": []})

    for info in installed:  # oldest first: the newest installed version names the module
        e = entry(info["id"])
        e["installed"].append(info["version"])
        e.update(name=info["name"], description=info["description"], views=info["views"])
    for mid, (pkg, _path) in builtins.items():
        e = entry(mid)
        e["builtin"] = pkg.version
        if not e["installed"]:
            e.update(name=pkg.name, description=pkg.description)
    for mid, doc in adopted.items():
        entry(mid)["adopted"] = doc["version"]
    return {"modules": [by_id[k] for k in sorted(by_id)], "seq": _seq(node)}


@api("/modules/adopt", "POST", "Adopt an installed module (built-ins install themselves): one "
     "schema change adding its tables; the adopted version again changes nothing",
     body=obj(["id"], id=STR, version=STR))
async def adopt_module(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    mid = _field(body, "id", str)
    version = _field(body, "version", str, required=False)
    if not valid_id(mid):
        raise ValidationError(f"{mid!r} is not a module id", field="id")
    if version is not None and not valid_version(version):
        raise ValidationError(f"{version!r} is not an X.Y.Z version", field="version")
    pkg = await blocking.run_sync(_package_for, _store(node), mid, version)
    r = await _command(node, lambda ws: ws.adopt_module(pkg))
    return _result(r, id=pkg.id, version=pkg.version, changed=r.bundle_id is not None,
                   tables=[f"{pkg.id}.{t}" for t in pkg.manifest.tables])


@api("/field-mappings/list", "GET", "Field mappings: suggested (from module shared keys), "
     "confirmed and rejected pairs", query=("after",))
async def list_field_mappings(node: Node, body: Any) -> dict[str, Any]:
    lists = await _query(node, modmod.mapping_lists)
    return {**lists, "seq": node.current.deriver.applied}


def _pair(body: dict[str, Any]) -> tuple[str, str]:
    keys = []
    for k in ("key_a", "key_b"):
        v = _field(body, k, str)
        if not values.is_field_key(v):
            raise ValidationError(f"{k} must be a field key module.Table.field", field=k)
        keys.append(v)
    return keys[0], keys[1]


@api("/field-mappings/confirm", "POST", "Confirm a mapping: both fields become one value "
     "(same type, not CRDT text, else 400 type_mismatch)",
     body=obj(["key_a", "key_b"], key_a=STR, key_b=STR))
async def confirm_field_mapping(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    a, b = _pair(body)
    r = await _command(node, lambda ws: ws.confirm_mapping(a, b))
    return _result(r, key_a=min(a, b), key_b=max(a, b))


@api("/field-mappings/reject", "POST", "Keep two fields separate: the pair is no longer "
     "suggested on any peer (a confirmed pair is split)",
     body=obj(["key_a", "key_b"], key_a=STR, key_b=STR))
async def reject_field_mapping(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    a, b = _pair(body)
    r = await _command(node, lambda ws: ws.reject_mapping(a, b))
    return _result(r, key_a=min(a, b), key_b=max(a, b))


# --- module views (static files from the install store) ----------------------------------------

def view_file(store: ModuleStore, mid: str, version: str, rel: str) -> Path:
    """The installed file `views/<rel>` of a module version, refusing anything that could leave
    that folder (`..`, absolute paths, backslashes, symlinks)."""
    if not valid_id(mid) or not valid_version(version):
        raise NotFound("no such module view", id=mid, version=version)
    if relpath_problem(rel) is not None:
        raise ValidationError("not a path inside the module's views folder", path=rel)
    root = store.root / mid / version / "views"
    if not root.is_dir() or root.is_symlink():
        raise ModuleNotInstalled(f"module {mid} {version} is not installed", id=mid,
                                 version=version)
    path = root / rel
    # every component must be a real directory / file of the copy (install never writes
    # symlinks; this also holds if someone edits the store by hand)
    cur = root
    for part in rel.split("/"):
        cur = cur / part
        if cur.is_symlink():
            raise NotFound("no such module view", path=rel)
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
        raise NotFound("no such module view", path=rel)
    return resolved


async def serve_view(node: Node, mid: str, version: str, file: str) -> Response:
    path = await blocking.run_sync(view_file, _store(node), mid, version, file)
    data = await blocking.run_sync(path.read_bytes)
    ctype = VIEW_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] \
        or "application/octet-stream"
    resp = Response(data, status=200, content_type=ctype)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-cache"
    # views run in sandboxed iframes (opaque origin "null"), which load module scripts with
    # CORS; these are static package files without data or credentials, so any origin may read
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


__all__ = ["serve_view", "view_file"]
