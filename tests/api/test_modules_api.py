"""Module and field-mapping routes (spec 05 §5 "Modules, mappings", spec 04 §4, J4) in-process."""

from __future__ import annotations

import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.api_modules import view_file
from openprod.core.errors import NotFound, ValidationError
from tests.api.conftest import Api, error_of

PROBE = """manifest_version = 1
[module]
id = "probe"
version = "{version}"
name = "Probe"
description = "A module made by the tests"
[tables.Things.fields]
title = {{ type = "text", shared_key = "name" }}
size = {{ type = "integer" }}
[views.main]
entry = "views/main.js"
table = "probe.Things"
"""
VIEW_JS = "export function mount(element, api) { element.textContent = 'probe'; }\n"


def make_package(root: Path, version: str = "1.0.0", *, toml: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "module.toml").write_text(toml if toml is not None else PROBE.format(version=version))
    (root / "views").mkdir(exist_ok=True)
    (root / "views" / "main.js").write_text(VIEW_JS)
    return root


def _src(api: Api, name: str) -> Path:
    return api.home.path.parent / "sources" / name


async def _b_install(api: Api) -> dict[str, Any]:
    return {"path": str(make_package(_src(api, "probe")))}


async def _b_adopt(api: Api) -> dict[str, Any]:
    return {"id": "contacts"}


async def _adopt_pair(api: Api) -> None:
    for mid in ("contacts", "crew_calls"):
        await api.ok("POST", "/modules/adopt", {"id": mid})


async def _b_confirm(api: Api) -> dict[str, Any]:
    await _adopt_pair(api)
    return {"key_a": "contacts.People.email", "key_b": "crew_calls.Crew.email"}


async def _b_reject(api: Api) -> dict[str, Any]:
    await _adopt_pair(api)
    return {"key_a": "contacts.People.notes", "key_b": "crew_calls.Calls.notes"}


# merged into tests/api/test_api.py's route-by-route checks; installing writes no ops
BODIES: dict[str, Callable[[Api], Awaitable[dict[str, Any]]]] = {
    "/modules/install": _b_install, "/modules/adopt": _b_adopt,
    "/field-mappings/confirm": _b_confirm, "/field-mappings/reject": _b_reject}
NO_WRITE = frozenset(["/modules/install"])


async def _modules(api: Api) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in (await api.ok("GET", "/modules/list"))["modules"]}


# --- install -----------------------------------------------------------------------------------

async def test_install_folder_then_again_is_a_no_op(api: Api) -> None:
    head = await api.head()
    src = make_package(_src(api, "probe"))
    r = await api.ok("POST", "/modules/install", {"path": str(src)})
    assert (r["id"], r["version"], r["installed"]) == ("probe", "1.0.0", True)
    assert r["views"][0]["url"] == "/m/probe/1.0.0/views/main.js"
    dest = api.home.path / "modules" / "probe" / "1.0.0"
    assert (dest / "module.toml").read_bytes() == (src / "module.toml").read_bytes()
    assert (dest / "views" / "main.js").read_text() == VIEW_JS
    again = await api.ok("POST", "/modules/install", {"path": str(src)})
    assert again["installed"] is False
    assert [p.name for p in (api.home.path / "modules" / "probe").iterdir()] == ["1.0.0"]
    assert await api.head() == head  # install is per user: no ops
    m = (await _modules(api))["probe"]
    assert (m["installed"], m["adopted"], m["builtin"]) == (["1.0.0"], None, None)


async def test_install_zip_and_changed_content_under_same_version(api: Api) -> None:
    src = make_package(_src(api, "zipped"), "2.0.0")
    zpath = _src(api, "probe.zip")
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in ("module.toml", "views/main.js"):
            zf.write(src / f, f"probe/{f}")  # a zip of the folder itself: prefix stripped
        zf.writestr("probe/stray.txt", "ignored with a warning")
    r = await api.ok("POST", "/modules/install", {"path": str(zpath)})
    assert (r["version"], r["installed"]) == ("2.0.0", True)
    assert r["warnings"]
    dest = api.home.path / "modules" / "probe" / "2.0.0"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "module.toml", "views/main.js"]
    (src / "module.toml").write_text(PROBE.format(version="2.0.0") + "# changed\n")
    err = await error_of(await api.post("/modules/install", {"path": str(src)}), 409,
                         "module_version_conflict")
    assert err["details"]["version"] == "2.0.0"
    assert (dest / "module.toml").read_text() == PROBE.format(version="2.0.0")


async def test_hostile_package_is_400_with_every_problem_and_installs_nothing(api: Api) -> None:
    bad = """manifest_version = 1
[module]
id = "core"
version = "1.0"
name = "Bad"
[tables.T.fields]
a = { type = "text", shraed_key = "x" }
b = { type = "nope" }
"""
    src = make_package(_src(api, "bad"), toml=bad)
    (src / "views" / "evil.js").symlink_to("/etc/passwd")
    err = await error_of(await api.post("/modules/install", {"path": str(src)}), 400,
                         "invalid_module")
    got = {(e["path"], e["code"]) for e in err["details"]["errors"]}
    assert {("module.id", "reserved"), ("module.version", "bad_version"),
            ("tables.T.fields.a.shraed_key", "unknown_key"),
            ("views/evil.js", "unsafe_path")} <= got
    assert any(p == "tables.T.fields.b.type" for p, _ in got)
    assert all(set(e) == {"path", "code", "message"} and e["message"]
               for e in err["details"]["errors"])
    assert not (api.home.path / "modules").exists() or not any(
        (api.home.path / "modules").iterdir())


async def test_install_errors(api: Api) -> None:
    await error_of(await api.post("/modules/install", {"path": "relative/dir"}), 400, "invalid")
    err = await error_of(await api.post("/modules/install",
                                        {"path": str(_src(api, "missing"))}), 400,
                         "invalid_module")
    assert err["details"]["errors"][0]["code"] == "missing_file"
    zpath = _src(api, "evil.zip")
    zpath.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("module.toml", PROBE.format(version="1.0.0"))
        zf.writestr("../escape.js", "x")
    err = await error_of(await api.post("/modules/install", {"path": str(zpath)}), 400,
                         "invalid_module")
    assert ("../escape.js", "unsafe_path") in {(e["path"], e["code"])
                                               for e in err["details"]["errors"]}
    assert not (api.home.path.parent / "escape.js").exists()


# --- adopt -------------------------------------------------------------------------------------

async def test_adopt_builtin_installs_it_and_announces_tables(api: Api) -> None:
    listed = await _modules(api)
    assert {"contacts", "crew_calls", "lighting_cues"} <= set(listed)
    assert listed["contacts"]["builtin"] == "1.0.0" and listed["contacts"]["installed"] == []
    sub, _ = api.node.hub.subscribe(None)
    head = await api.head()
    r = await api.ok("POST", "/modules/adopt", {"id": "lighting_cues"})
    assert r["seq"] > head and r["changed"] is True and r["bundle_id"]
    assert set(r["tables"]) == {"lighting_cues.Cues", "lighting_cues.CueLists",
                                "lighting_cues.SMCues"}
    await api.settled()
    seen = []
    while True:
        ev = sub.recv.receive_nowait()
        seen.append(ev["type"])
        if ev["type"] == "tables_changed":
            assert ev["seq"] == r["seq"]
            break
    sub.close()
    tables = {t["id"]: t for t in (await api.ok("GET", "/tables/list"))["tables"]}
    cues = tables["lighting_cues.Cues"]
    assert cues["module"] == "lighting_cues" and cues["label"] == "Cues"
    assert {f["name"]: f["type"] for f in cues["fields"]}["time"] == "duration"
    types = {e["type"]: e for e in (await api.ok("GET", "/edge-types/list"))["edge_types"]}
    assert types["lighting_cues.cue_stack"]["ordered"] is True
    # which tables the relationship joins (record pickers offer the right records)
    assert (types["lighting_cues.cue_stack"]["from"], types["lighting_cues.cue_stack"]["to"]) == (
        "lighting_cues.Cues", "lighting_cues.CueLists")
    m = (await _modules(api))["lighting_cues"]
    assert (m["installed"], m["adopted"]) == (["1.0.0"], "1.0.0")
    assert m["views"][0]["url"] == "/m/lighting_cues/1.0.0/views/cue_list.js"

    again = await api.ok("POST", "/modules/adopt", {"id": "lighting_cues", "version": "1.0.0"})
    assert again["changed"] is False and "bundle_id" not in again
    assert again["seq"] == await api.head() == r["seq"]


async def test_adopt_before_install_unknown_and_bad_ids(api: Api) -> None:
    head = await api.head()
    err = await error_of(await api.post("/modules/adopt", {"id": "probe"}), 404,
                         "module_not_installed")
    assert err["details"]["id"] == "probe" and err["details"]["installed"] == []
    await error_of(await api.post("/modules/adopt", {"id": "nosuchmodule"}), 404,
                   "module_not_installed")
    await error_of(await api.post("/modules/adopt", {"id": "contacts", "version": "9.9.9"}),
                   404, "module_not_installed")
    for body in ({"id": "../etc"}, {"id": "Contacts"}, {"id": "contacts", "version": "1"}):
        await error_of(await api.post("/modules/adopt", body), 400, "invalid")
    assert await api.head() == head
    await api.ok("POST", "/modules/install", {"path": str(make_package(_src(api, "p")))})
    r = await api.ok("POST", "/modules/adopt", {"id": "probe"})
    assert r["changed"] is True and r["seq"] > head


async def test_adopt_upgrade_and_refused_change(api: Api) -> None:
    await api.ok("POST", "/modules/install", {"path": str(make_package(_src(api, "v1")))})
    await api.ok("POST", "/modules/adopt", {"id": "probe"})
    v2 = PROBE.format(version="1.1.0") + "[tables.Boxes.fields]\nlabel = { type = \"text\" }\n"
    await api.ok("POST", "/modules/install",
                 {"path": str(make_package(_src(api, "v2"), toml=v2))})
    r = await api.ok("POST", "/modules/adopt", {"id": "probe"})  # newest installed
    assert (r["version"], r["changed"]) == ("1.1.0", True)
    v3 = PROBE.format(version="2.0.0").replace('size = { type = "integer" }',
                                               'size = { type = "float" }')
    await api.ok("POST", "/modules/install",
                 {"path": str(make_package(_src(api, "v3"), toml=v3))})
    head = await api.head()
    err = await error_of(await api.post("/modules/adopt", {"id": "probe", "version": "2.0.0"}),
                         400, "schema_change_unsupported")
    assert err["details"]["problems"][0]["path"] == "probe.Things.size"
    assert await api.head() == head
    assert (await _modules(api))["probe"]["adopted"] == "1.1.0"


# --- field mappings ----------------------------------------------------------------------------

async def test_field_mappings_list_confirm_reject(api: Api) -> None:
    empty = await api.ok("GET", "/field-mappings/list")
    assert (empty["suggestions"], empty["confirmed"], empty["rejected"]) == ([], [], [])
    await _adopt_pair(api)
    listed = await api.ok("GET", "/field-mappings/list")
    pairs = {(s["key_a"], s["key_b"]): s for s in listed["suggestions"]}
    assert len(pairs) == 5
    assert pairs[("contacts.People.department", "crew_calls.Crew.department")][
        "compatible"] is False
    c = await api.ok("POST", "/field-mappings/confirm",
                     {"key_a": "crew_calls.Crew.name", "key_b": "contacts.People.full_name"})
    assert (c["key_a"], c["key_b"]) == ("contacts.People.full_name", "crew_calls.Crew.name")
    r = await api.ok("POST", "/field-mappings/reject",
                     {"key_a": "contacts.People.notes", "key_b": "crew_calls.Calls.notes"})
    assert r["seq"] > c["seq"]
    after = await api.ok("GET", "/field-mappings/list")
    assert [(x["key_a"], x["key_b"]) for x in after["confirmed"]] == [
        ("contacts.People.full_name", "crew_calls.Crew.name")]
    assert [(x["key_a"], x["key_b"]) for x in after["rejected"]] == [
        ("contacts.People.notes", "crew_calls.Calls.notes")]
    assert after["confirmed"][0]["b"]["label"] == "Name"
    assert len(after["suggestions"]) == 3
    # one slot: a person written through Crew reads the same name in People
    person = await api.record("contacts.People", full_name="Jane")
    await api.ok("POST", "/records/update", {"id": person, "table": "contacts.People",
                                             "values": {"full_name": "Jane Doe"}})
    rec = await api.ok("GET", f"/records/{person}")
    assert rec["values"]["full_name"] == "Jane Doe"


async def test_field_mapping_errors(api: Api) -> None:
    await _adopt_pair(api)
    head = await api.head()
    err = await error_of(await api.post("/field-mappings/confirm", {
        "key_a": "contacts.People.department", "key_b": "crew_calls.Crew.department"}),
        400, "type_mismatch")
    assert (err["details"]["type_a"], err["details"]["type_b"]) == ("enum", "text")
    await error_of(await api.post("/field-mappings/confirm", {
        "key_a": "contacts.People.nope", "key_b": "crew_calls.Crew.name"}), 404, "not_found")
    await error_of(await api.post("/field-mappings/reject", {
        "key_a": "contacts.People.email", "key_b": "contacts.People.email"}), 400, "invalid")
    err = await error_of(await api.post("/field-mappings/confirm", {
        "key_a": "email", "key_b": "crew_calls.Crew.name"}), 400, "invalid")
    assert err["details"]["field"] == "key_a"
    assert await api.head() == head


# --- views -------------------------------------------------------------------------------------

async def test_views_are_served_read_only_without_the_token(api: Api) -> None:
    await api.ok("POST", "/modules/install", {"path": str(make_package(_src(api, "p")))})
    resp = await api.get("/m/probe/1.0.0/views/main.js", auth=False)
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/javascript")
    assert (await resp.get_data()).decode() == VIEW_JS
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert (await api.request("POST", "/m/probe/1.0.0/views/main.js")).status_code == 405
    await error_of(await api.get("/m/probe/1.0.0/views/other.js"), 404, "not_found")
    await error_of(await api.get("/m/probe/9.9.9/views/main.js"), 404, "module_not_installed")
    await error_of(await api.get("/m/nosuch/1.0.0/views/main.js"), 404, "module_not_installed")
    await error_of(await api.get("/m/probe/1.0.0/views/main.js",
                                 headers={"Host": "evil.example"}, auth=False), 403, "forbidden")


async def test_a_sandboxed_view_frame_may_load_view_files_only(api: Api) -> None:
    """A view's iframe has no origin (`Origin: null`): it may load the module's view files,
    nothing else."""
    await api.ok("POST", "/modules/install", {"path": str(make_package(_src(api, "p")))})
    null = {"Origin": "null"}
    resp = await api.get("/m/probe/1.0.0/views/main.js", headers=null, auth=False)
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    await error_of(await api.get("/tables/list", headers=null), 403, "forbidden")
    await error_of(await api.post("/records/create", {"table": "x"}, headers=null), 403,
                   "forbidden")


async def test_view_path_traversal_is_refused(api: Api) -> None:
    await api.ok("POST", "/modules/install", {"path": str(make_package(_src(api, "p")))})
    secret = api.home.path / "modules" / "probe" / "1.0.0" / "module.toml"
    base = "/m/probe/1.0.0/views/"
    for path in (base + "../module.toml", base + "%2e%2e/module.toml", base + "..%2fmodule.toml",
                 base + "%5c..%5cmodule.toml", "/m/..%2f..%2fidentity.json/1.0.0/views/x",
                 "/m/probe/..%2f1.0.0/views/main.js"):
        resp = await api.get(path, auth=False)
        assert resp.status_code in (400, 404), (path, resp.status_code)
        assert secret.read_text() not in (await resp.get_data()).decode(errors="replace")
    # the file-level guard on its own, for names a URL parser would normalise away
    store = api.home.modules
    for rel in ("../module.toml", "/etc/passwd", "a/../../module.toml", "..\\module.toml"):
        with pytest.raises((ValidationError, NotFound)):
            view_file(store, "probe", "1.0.0", rel)
    link = api.home.path / "modules" / "probe" / "1.0.0" / "views" / "leak.js"
    link.symlink_to(secret)
    await error_of(await api.get("/m/probe/1.0.0/views/leak.js"), 404, "not_found")
