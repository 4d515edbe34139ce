"""Tests for openprod.engine.manifest: package reading and module.toml validation (spec 04 §1, §2,
§3, §5 typing, §6 cycle detection, §8 scenarios 1-7)."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import values
from openprod.engine.manifest import (
    ManifestError,
    Package,
    PackageLimits,
    capability_covers,
    check_manifest,
    field_default,
    find_cycles,
    load_package,
    render_path,
)

CONTACTS = """\
manifest_version = 1
[module]
id = "contacts"
version = "1.0.0"
name = "Contacts"
capabilities = ["fs.read:imports/*.csv", "ui.notify"]

[tables.People]
title_field = "full_name"
[tables.People.fields]
full_name = { type = "text", required = true, shared_key = "name" }
email = { type = "text", shared_key = "email" }
phone = { type = "text", shared_key = "phone" }
department = { type = "enum", choices = ["Production", "Stage Management", "Lighting", "Sound"], shared_key = "department" }
company_role = { type = "text" }
notes = { type = "text", shared_key = "notes" }
bio = { type = "text", crdt = true }
photo = { type = "blob_ref" }

[views.people_list]
entry = "views/people_list.js"
table = "contacts.People"

[scripts.import_csv]
file = "scripts/import_csv.lua"
trigger = "manual"
args = { path = "text" }
capabilities = ["fs.read:imports/*.csv", "ui.notify"]
"""  # noqa: E501 - the spec's example, verbatim

CONTACTS_FILES = {
    "views/people_list.js": "export function mount(el, api) { return () => {}; }\n",
    "scripts/import_csv.lua": (
        "local data = core.await(fs.read(args.path))\n"
        "for line in data:gmatch('[^\\n]+') do\n"
        "  core.create_entity('contacts.People', { full_name = line })\n"
        "end\n"
        "ui.notify('imported')\n"
    ),
}

CALLSHEET = """\
manifest_version = 1
[module]
id = "callsheet"
version = "0.3.0"
name = "Call Sheet"

[tables.Crew]
title_field = "name"
[tables.Crew.fields]
name = { type = "text", required = true, shared_key = "name" }
email = { type = "text", shared_key = "email" }
phone = { type = "text", shared_key = "phone" }
department = { type = "text", shared_key = "department" }
role = { type = "text" }
active = { type = "boolean", default = true }

[tables.Calls]
title_field = "label"
[tables.Calls.fields]
label = { type = "text", required = true }
day = { type = "date", required = true }
call_time = { type = "datetime" }
location = { type = "text" }
person_phone = { type = "text", mode = "reference", ref = "callsheet.Crew.phone" }
published = { type = "boolean", default = false }
changed_after_publish = { type = "boolean", default = false }
notes = { type = "text", shared_key = "notes" }

[edges.for_person]
from = "callsheet.Calls"
to = "callsheet.Crew"
properties = { role_today = "text" }

[rules.crew_are_contacts]
label = "Active crew appear in Contacts"
source = "callsheet.Crew"
when = { field = "active", op = "eq", value = true }
action = "add_to_table"
target = "contacts.People"
set = [{ field = "company_role", copy_from = "role", mode = "fill_if_empty" }]
on_condition_lost = "propose_detach"

[scripts.generate_calls]
file = "scripts/generate_calls.lua"
trigger = "manual"
args = { day = "date", call_time = "datetime", location = "text" }

[scripts.flag_changed_calls]
file = "scripts/flag_changed_calls.lua"
trigger = "on_change"
watch = { table = "callsheet.Calls", fields = ["call_time", "location"], events = ["field_changed"] }
when = { field = "published", op = "eq", value = true }
writes = ["callsheet.Calls.changed_after_publish"]
"""  # noqa: E501 - the spec's example, verbatim

CALLSHEET_FILES = {
    "scripts/generate_calls.lua": """\
local crew = core.query({ table = "callsheet.Crew",
  where = { field = "active", op = "eq", value = true }, order_by = { { field = "name" } } })
for _, p in ipairs(crew) do
  local call = core.create_entity("callsheet.Calls", { day = args.day, call_time = args.call_time,
    location = args.location, label = core.get_field(p, "callsheet.Crew", "name") })
  core.create_edge("callsheet.for_person", call, p)
  core.set_reference(call, "callsheet.Calls", "person_phone", p)
end
""",
    "scripts/flag_changed_calls.lua": """\
for _, change in ipairs(core.context().changes) do
  core.set_field(change.entity_id, "callsheet.Calls", "changed_after_publish", true)
end
""",
}

# A small valid base the hostile cases below are built on.
BASE = """\
manifest_version = 1
[module]
id = "m"
version = "1.0.0"
name = "M"

[tables.T1.fields]
x = { type = "text" }
y = { type = "text" }
status = { type = "text" }
kind = { type = "enum", choices = ["a", ["b", "Bee"]] }
n = { type = "integer" }
body = { type = "text", crdt = true }
"""


def write_pkg(root: Path, toml: str | bytes, files: Mapping[str, str | bytes] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = toml.encode() if isinstance(toml, str) else toml
    (root / "module.toml").write_bytes(data)
    for rel, content in dict(files).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def zip_pkg(path: Path, entries: Mapping[str, str | bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(prefix + name, content)
    return path


def problems(toml: str, files: Mapping[str, str | bytes] = ()) -> list[tuple[str, str]]:
    """(path, code) of every problem check_manifest reports; [] when it accepts."""
    scripts = {k: (v.encode() if isinstance(v, str) else v) for k, v in dict(files).items()}
    try:
        check_manifest(toml.encode(), files=list(scripts), scripts=scripts)
    except ManifestError as e:
        assert e.code == "invalid_module"
        for p in e.errors:
            assert set(p) == {"path", "code", "message"} and p["message"]
        return [(p["path"], p["code"]) for p in e.errors]
    return []


def rejected(root: Path) -> list[dict[str, str]]:
    with pytest.raises(ManifestError) as ei:
        load_package(root)
    return [dict(p) for p in ei.value.errors]


# --------------------------------------------------------------------------------------------
# §3 worked examples, §8.1


def test_contacts_loads(tmp_path: Path) -> None:
    root = write_pkg(tmp_path / "contacts", CONTACTS, CONTACTS_FILES)
    pkg = load_package(root)
    assert isinstance(pkg, Package)
    assert (pkg.id, pkg.version, pkg.name, pkg.description) == (
        "contacts", "1.0.0", "Contacts", ""
    )
    assert pkg.manifest_hash == blake3.blake3((root / "module.toml").read_bytes()).hexdigest()
    assert pkg.files == ("scripts/import_csv.lua", "views/people_list.js")
    assert pkg.warnings == ()
    people = pkg.manifest.tables["People"]
    assert list(people.fields) == [
        "full_name", "email", "phone", "department", "company_role", "notes", "bio", "photo"
    ]
    assert people.title_field == "full_name"
    assert people.fields["bio"].crdt and people.fields["bio"].type == "text"
    assert people.fields["department"].choice_keys() == [
        "Production", "Stage Management", "Lighting", "Sound"
    ]
    shared = {n: f.shared_key for n, f in people.fields.items() if f.shared_key}
    assert shared == {"full_name": "name", "email": "email", "phone": "phone",
                      "department": "department", "notes": "notes"}
    script = pkg.manifest.scripts["import_csv"]
    assert (script.trigger, script.args) == ("manual", {"path": "text"})
    assert pkg.manifest.module.capabilities == ["fs.read:imports/*.csv", "ui.notify"]
    assert pkg.manifest.views["people_list"].table == "contacts.People"


def test_callsheet_loads(tmp_path: Path) -> None:
    root = write_pkg(tmp_path / "callsheet", CALLSHEET, CALLSHEET_FILES)
    pkg = load_package(root)
    m = pkg.manifest
    assert (pkg.id, pkg.version) == ("callsheet", "0.3.0")
    assert set(m.tables) == {"Crew", "Calls"}
    assert m.tables["Calls"].title_field == "label"
    calls = m.tables["Calls"].fields
    assert (calls["person_phone"].mode, calls["person_phone"].ref) == (
        "reference", "callsheet.Crew.phone"
    )
    assert field_default(m.tables["Crew"].fields["active"]) == ["boolean", True]
    assert field_default(calls["published"]) == ["boolean", False]
    assert field_default(calls["label"]) is None
    assert m.edges["for_person"].from_ == "callsheet.Calls"
    assert m.edges["for_person"].properties == {"role_today": "text"}
    rule = m.rules["crew_are_contacts"]
    # the rule targets another module's table: accepted, dormant until contacts is adopted
    assert (rule.target, rule.set[0].copy_from, rule.auto_accept) == (
        "contacts.People", "role", False
    )
    watch = m.scripts["flag_changed_calls"].watch
    assert watch is not None and watch.fields == ["call_time", "location"]
    assert pkg.files == ("scripts/flag_changed_calls.lua", "scripts/generate_calls.lua")
    assert pkg.manifest_hash != load_package(
        write_pkg(tmp_path / "contacts", CONTACTS, CONTACTS_FILES)
    ).manifest_hash


def test_hash_is_of_the_exact_bytes(tmp_path: Path) -> None:
    a = load_package(write_pkg(tmp_path / "a", CALLSHEET, CALLSHEET_FILES))
    b = load_package(write_pkg(tmp_path / "b", "# same module\n" + CALLSHEET, CALLSHEET_FILES))
    assert a.manifest == b.manifest
    assert a.manifest_hash != b.manifest_hash
    assert b.manifest_hash == blake3.blake3(
        ("# same module\n" + CALLSHEET).encode()
    ).hexdigest()


def test_title_field_defaults_to_first_text_field() -> None:
    toml = BASE.replace("[tables.T1.fields]\n", "[tables.T1.fields]\nd = { type = 'date' }\n")
    m = check_manifest(toml.encode())
    assert m.tables["T1"].title_field == "x"
    no_text = BASE.split("[tables.T1.fields]")[0] + "[tables.T2.fields]\nd = { type = 'date' }\n"
    assert check_manifest(no_text.encode()).tables["T2"].title_field is None
    assert problems(BASE.replace("[tables.T1.fields]", "[tables.T1]\ntitle_field = 'zz'\n"
                                 "[tables.T1.fields]")) == [
        ("tables.T1.title_field", "undefined_field")
    ]


# --------------------------------------------------------------------------------------------
# §8.2 - §8.4: hostile manifests, every error reported at once


def test_unknown_keys() -> None:
    toml = BASE.replace('y = { type = "text" }', 'y = { type = "text", shraed_key = "y" }')
    toml += "[plugin]\nname = 'x'\n"
    assert sorted(problems(toml)) == [
        ("plugin", "unknown_key"), ("tables.T1.fields.y.shraed_key", "unknown_key")
    ]


@pytest.mark.parametrize(
    ("old", "new", "path", "code"),
    [
        ('x = { type = "text" }', 'x = { type = "string" }', "tables.T1.fields.x.type",
         "unknown_type"),
        ('x = { type = "text" }', 'x = { type = "enum" }', "tables.T1.fields.x.choices",
         "missing_choices"),
        ('x = { type = "text" }', 'x = { type = "boolean", default = "yes" }',
         "tables.T1.fields.x.default", "bad_default"),
        ('body = { type = "text", crdt = true }',
         'body = { type = "text", crdt = true, shared_key = "body" }',
         "tables.T1.fields.body.shared_key", "bad_shared_key"),
        ('n = { type = "integer" }', 'n = { type = "integer", crdt = true }',
         "tables.T1.fields.n.crdt", "crdt_not_text"),
        ('id = "m"', 'id = "core"', "module.id", "reserved"),
        ('id = "m"', 'id = "Mod"', "module.id", "bad_name"),
        ('version = "1.0.0"', 'version = "1.0"', "module.version", "bad_version"),
        ("manifest_version = 1", "manifest_version = 2", "manifest_version",
         "unsupported_version"),
        ('x = { type = "text" }', 'x = { type = "text", required = "yes" }',
         "tables.T1.fields.x.required", "bad_type"),
        ('x = { type = "text" }', 'x = { type = "text", choices = ["a"] }',
         "tables.T1.fields.x.choices", "bad_option"),
        ('kind = { type = "enum", choices = ["a", ["b", "Bee"]] }',
         'kind = { type = "enum", choices = ["a", "a"] }', "tables.T1.fields.kind.choices[1]",
         "bad_choices"),
        ('kind = { type = "enum", choices = ["a", ["b", "Bee"]] }',
         'kind = { type = "enum", choices = [] }', "tables.T1.fields.kind.choices",
         "bad_choices"),
        ('kind = { type = "enum", choices = ["a", ["b", "Bee"]] }',
         'kind = { type = "enum", choices = ["a", 3] }', "tables.T1.fields.kind.choices[1]",
         "bad_choices"),
        ('kind = { type = "enum", choices = ["a", ["b", "Bee"]] }',
         'kind = { type = "enum", choices = ["a", ["b", "Bee"]], default = "c" }',
         "tables.T1.fields.kind.default", "bad_default"),
        ('x = { type = "text" }', 'x = { type = "entity_ref", default = "x" }',
         "tables.T1.fields.x.default", "bad_default"),
        ('body = { type = "text", crdt = true }',
         'body = { type = "text", crdt = true, default = "hi" }',
         "tables.T1.fields.body.default", "bad_default"),
        ('x = { type = "text" }', 'x = { type = "date", default = "2024-02-30" }',
         "tables.T1.fields.x.default", "bad_default"),
        ('x = { type = "text" }', 'x = { type = "text", mode = "reference" }',
         "tables.T1.fields.x.ref", "missing_key"),
        ('x = { type = "text" }', 'x = { type = "text", ref = "m.T1.y" }',
         "tables.T1.fields.x.ref", "bad_option"),
        ('x = { type = "text" }', 'x = { type = "text", mode = "reference", ref = "m.T1.n" }',
         "tables.T1.fields.x.ref", "type_mismatch"),
        ('x = { type = "text" }', 'x = { type = "text", mode = "reference", ref = "m.T9.y" }',
         "tables.T1.fields.x.ref", "undefined_table"),
        ('x = { type = "text" }',
         'x = { type = "text", mode = "reference", ref = "m.T1.y", shared_key = "x" }',
         "tables.T1.fields.x.shared_key", "bad_shared_key"),
        ('x = { type = "text" }', 'x = { type = "text", ref_table = "m.T1" }',
         "tables.T1.fields.x.ref_table", "bad_option"),
        ('x = { type = "text" }', 'Xx = { type = "text" }', "tables.T1.fields.Xx", "bad_name"),
        ('x = { type = "text" }', 'id = { type = "text" }', "tables.T1.fields.id", "reserved"),
        ('x = { type = "text" }', 'x = "text"', "tables.T1.fields.x", "bad_type"),
        ('[tables.T1.fields]', '[tables.t1.fields]\na = { type = "text" }\n[tables.T1.fields]',
         "tables.T1", "duplicate_table"),
    ],
)
def test_field_and_module_problems(old: str, new: str, path: str, code: str) -> None:
    assert old in BASE
    assert problems(BASE.replace(old, new)) == [(path, code)]


def test_three_problems_reported_together() -> None:
    toml = (
        BASE.replace('id = "m"', 'id = "core"')
        .replace('x = { type = "text" }', 'x = { type = "string" }')
        .replace('y = { type = "text" }', 'y = { type = "text", shraed_key = "y" }')
    )
    assert sorted(problems(toml)) == [
        ("module.id", "reserved"),
        ("tables.T1.fields.x.type", "unknown_type"),
        ("tables.T1.fields.y.shraed_key", "unknown_key"),
    ]


def test_structural_errors_do_not_hide_semantic_ones() -> None:
    # a field missing its type is pruned after reporting; the rest is still checked
    toml = BASE.replace('x = { type = "text" }', 'x = { label = "X" }').replace(
        'version = "1.0.0"', 'version = "v1"')
    assert sorted(problems(toml)) == [
        ("module.version", "bad_version"), ("tables.T1.fields.x.type", "missing_key")
    ]
    assert sorted(problems(BASE.replace("[module]", "[modul]"))) == [
        ("modul", "unknown_key"), ("module", "missing_key")
    ]


def test_bad_array_elements_and_odd_values_are_reported_not_crashed() -> None:
    toml = BASE.replace('version = "1.0.0"', 'version = "x"') + (
        "[rules.r]\nsource = 'm.T1'\ntarget = 'o.X'\naction = 'add_to_table'\n"
        "set = [{ field = 'a', value = 1 }, { field = 'b', vaule = 2 }]\n"
        "[rules.q]\nsource = 'm.T1'\ntarget = 'o.X'\naction = 'add_to_table'\n"
        "when = { field = 'x', op = ['eq'], value = 'a' }\n"
        "[scripts.s]\nfile = 'scripts/s.lua'\ntrigger = 'on_change'\n"
        "watch = { table = 'm.T1' }\nwrites = ['m.T1.x', 3]\n"
        "[tables.T1.fields.z]\ntype = 1\n"
    )
    assert sorted(problems(toml, {"scripts/s.lua": SCRIPT})) == [
        ("module.version", "bad_version"),
        ("rules.q.when.op", "bad_op"),
        ("rules.r.set[1].vaule", "unknown_key"),
        ("scripts.s.writes[1]", "bad_type"),
        ("tables.T1.fields.z.type", "bad_type"),
    ]


def test_caps() -> None:
    head = BASE.split("[tables.T1.fields]")[0]
    many_tables = head + "".join(f"[tables.T{i}.fields]\na = {{ type = 'text' }}\n"
                                 for i in range(65))
    assert problems(many_tables) == [("tables", "too_many")]
    many_fields = head + "[tables.T.fields]\n" + "".join(
        f"f{i} = {{ type = 'integer' }}\n" for i in range(257))
    assert problems(many_fields) == [("tables.T.fields", "too_many")]
    many_rules = BASE + "".join(
        f"[rules.r{i}]\nsource = 'o.A'\ntarget = 'o.B'\naction = 'add_to_table'\n"
        for i in range(65))
    assert problems(many_rules) == [("rules", "too_many")]


def test_toml_syntax_errors_name_the_line() -> None:
    toml = BASE + '[tables.T1.fields]\nq = { type = "text" }\n'
    with pytest.raises(ManifestError) as ei:
        check_manifest(toml.encode())
    (p,) = ei.value.errors
    assert (p["path"], p["code"]) == ("module.toml", "toml_syntax")
    dup_line = toml.splitlines().index("[tables.T1.fields]", 10) + 1
    assert f"line {dup_line}" in p["message"] and "twice" in p["message"]

    with pytest.raises(ManifestError) as ei:
        check_manifest(b'manifest_version = 1\nmanifest_version = 1\n')
    assert ei.value.errors[0]["code"] == "toml_syntax"
    assert "line 2" in ei.value.errors[0]["message"]
    with pytest.raises(ManifestError) as ei:
        check_manifest(b"\xff\xfe = 1")
    assert ei.value.errors[0]["code"] == "bad_encoding"


SCRIPT = "core.log('info', 'hi')\n"


def script_manifest(body: str) -> str:
    return BASE + "[scripts.s]\n" + body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("file = 'scripts/s.lua'\ntrigger = 'background'\n",
         [("scripts.s.trigger", "unsupported_in_v1")]),
        ("file = 'scripts/s.lua'\ntrigger = 'nightly'\n", [("scripts.s.trigger", "bad_value")]),
        ("file = 'scripts/s.lua'\ntrigger = 'on_change'\nwatch = { table = 'm.T1' }\n",
         [("scripts.s.writes", "missing_key")]),
        ("file = 'scripts/s.lua'\ntrigger = 'on_change'\nwrites = []\n",
         [("scripts.s.watch", "missing_key")]),
        ("file = 'scripts/s.lua'\ncapabilities = ['net.osc:8000']\n",
         [("scripts.s.capabilities[0]", "unsupported_capability")]),
        ("file = 'scripts/s.lua'\ncapabilities = ['ui.notify']\n",
         [("scripts.s.capabilities[0]", "undeclared_capability")]),
        ("file = 'scripts/s.lua'\ncapabilities = 'ui.notify'\n",
         [("scripts.s.capabilities", "bad_type")]),
        ("file = 'scripts/s.lua'\nlimits = { timeout_s = 121, memory_mib = 256 }\n",
         [("scripts.s.limits.timeout_s", "out_of_range")]),
        ("file = 'scripts/s.lua'\nlimits = { max_instructions = 1000000001, memory_mib = 0 }\n",
         [("scripts.s.limits.memory_mib", "out_of_range"),
          ("scripts.s.limits.max_instructions", "out_of_range")]),
        ("file = 'scripts/s.lua'\nargs = { when = 'moment' }\n",
         [("scripts.s.args.when", "unknown_type")]),
        ("file = 'scripts/s.lua'\nwrites = ['m.T1.x']\n", [("scripts.s.writes", "bad_option")]),
        ("file = 'scripts/s.lua'\ntrigger = 'on_change'\nwatch = { table = 'm.T1', "
         "fields = ['nope'], events = ['field_changed', 'exploded'] }\nwrites = ['m.T1.y']\n",
         [("scripts.s.watch.events[1]", "bad_value"),
          ("scripts.s.watch.fields[0]", "undefined_field")]),
        ("file = 'scripts/s.lua'\ntrigger = 'on_change'\nwatch = { table = 'm.T1' }\n"
         "writes = ['m.T1.zz', 'm.T7', 'edge:m.nope', 'other.T.f', 'nonsense']\n",
         [("scripts.s.writes[0]", "undefined_field"), ("scripts.s.writes[1]", "undefined_table"),
          ("scripts.s.writes[2]", "undefined_edge"), ("scripts.s.writes[3]", "missing_capability"),
          ("scripts.s.writes[4]", "bad_name")]),
        ("file = 'scripts/s.lua'\ntrigger = 'on_change'\nwatch = { table = 'm.T1' }\n"
         "writes = []\nwhen = { field = 'kind', op = 'lt', value = 'a' }\n",
         [("scripts.s.when.op", "bad_op")]),
        ("file = 'scripts/s.lua'\ntrigger = 'on_change'\nwatch = { table = 'other.T' }\n"
         "writes = ['m.T1.y']\nwhen = { field = 'anything', op = 'eq', value = 1 }\n", []),
    ],
)
def test_script_problems(body: str, expected: list[tuple[str, str]]) -> None:
    assert problems(script_manifest(body), {"scripts/s.lua": SCRIPT}) == expected


def test_script_capabilities_within_module_capabilities() -> None:
    toml = BASE.replace('name = "M"', 'name = "M"\ncapabilities = ["fs.read:in/*.csv", '
                        '"data.write:other", "ui.notify"]')
    body = ("file = 'scripts/s.lua'\ntrigger = 'on_change'\nwatch = { table = 'm.T1' }\n"
            "writes = ['other.T.f', 'edge:other.e']\n"
            "capabilities = ['fs.read:in/a.csv', 'data.write:other.T', 'data.write:other']\n")
    assert problems(toml + "[scripts.s]\n" + body, {"scripts/s.lua": SCRIPT}) == []
    body = "file = 'scripts/s.lua'\ncapabilities = ['fs.read:in/*/x.csv', 'fs.write:in/a.csv']\n"
    assert problems(toml + "[scripts.s]\n" + body, {"scripts/s.lua": SCRIPT}) == [
        ("scripts.s.capabilities[0]", "undeclared_capability"),
        ("scripts.s.capabilities[1]", "undeclared_capability"),
    ]
    bad_module_caps = BASE.replace('name = "M"', 'name = "M"\ncapabilities = '
                                   '["fs.read:/etc/*", "fs.write:../x", "data.write:Bad"]')
    assert problems(bad_module_caps) == [
        ("module.capabilities[0]", "unsupported_capability"),
        ("module.capabilities[1]", "unsupported_capability"),
        ("module.capabilities[2]", "unsupported_capability"),
    ]


def test_capability_covers() -> None:
    assert capability_covers("ui.notify", "ui.notify")
    assert capability_covers("fs.read:imports/*.csv", "fs.read:imports/a.csv")
    assert not capability_covers("fs.read:imports/*.csv", "fs.read:imports/sub/a.csv")
    assert capability_covers("fs.read:imports/**", "fs.read:imports/sub/a.csv")
    assert not capability_covers("fs.read:imports/*.csv", "fs.write:imports/a.csv")
    assert capability_covers("data.write:contacts", "data.write:contacts.People")
    assert not capability_covers("data.write:contacts.People", "data.write:contacts")


# --------------------------------------------------------------------------------------------
# §8.5: script files


def test_script_file_problems(tmp_path: Path) -> None:
    toml = BASE + (
        "[scripts.up]\nfile = '../x.lua'\n"
        "[scripts.gone]\nfile = 'scripts/gone.lua'\n"
        "[scripts.bad]\nfile = 'scripts/bad.lua'\n"
        "[scripts.nested]\nfile = 'scripts/sub/n.lua'\n"
        "[scripts.abs]\nfile = '/etc/passwd.lua'\n"
        "[scripts.ok]\nfile = 'scripts/ok.lua'\n"
    )
    root = write_pkg(tmp_path / "m", toml, {
        "scripts/bad.lua": "local x = 1\nif x then\n  print(x)\n",
        "scripts/ok.lua": SCRIPT,
        "scripts/sub/n.lua": SCRIPT,
    })
    errs = rejected(root)
    assert [(e["path"], e["code"]) for e in errs] == [
        ("scripts.up.file", "unsafe_path"),
        ("scripts.gone.file", "missing_file"),
        ("scripts.nested.file", "bad_path"),
        ("scripts.abs.file", "unsafe_path"),
        ("scripts.bad.file", "script_syntax"),
    ]
    syntax = errs[-1]["message"]
    # file:line of the error, as Lua reports it (the missing `end` is found at end of file)
    assert re.match(r"scripts/bad\.lua:\d+: ", syntax), syntax
    assert "'end' expected" in syntax


def test_script_is_compiled_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    src = f"local f = io.open({json.dumps(str(marker))}, 'w')\nf:write('x')\nf:close()\n"
    root = write_pkg(tmp_path / "m", BASE + "[scripts.s]\nfile = 'scripts/s.lua'\n",
                     {"scripts/s.lua": src})
    assert load_package(root).files == ("scripts/s.lua",)
    assert not marker.exists()


def test_binary_lua_chunks_are_refused() -> None:
    assert problems(BASE + "[scripts.s]\nfile = 'scripts/s.lua'\n",
                    {"scripts/s.lua": b"\x1bLua\x54\x00junk"}) == [
        ("scripts.s.file", "script_syntax")
    ]


def test_symlinks_in_folder_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside.lua"
    outside.write_text(SCRIPT)
    root = write_pkg(tmp_path / "m", BASE + "[scripts.s]\nfile = 'scripts/s.lua'\n",
                     {"views/v.js": "x"})
    (root / "scripts").mkdir()
    os.symlink(outside, root / "scripts" / "s.lua")
    os.symlink(tmp_path, root / "assets")
    errs = rejected(root)
    codes = {(e["path"], e["code"]) for e in errs}
    assert ("scripts/s.lua", "unsafe_path") in codes
    assert ("assets", "unsafe_path") in codes
    # the symlinked script is not part of the package, so the manifest check misses it too
    assert ("scripts.s.file", "missing_file") in codes


def test_view_entries(tmp_path: Path) -> None:
    toml = BASE + (
        "[views.a]\nentry = 'views/a.js'\ntable = 'm.T1'\n"
        "[views.b]\nentry = 'views/lib/b.mjs'\n"
        "[views.c]\nentry = 'views/c.css'\n"
        "[views.d]\nentry = 'views/d.js'\n"
        "[views.e]\nentry = 'views/a.js'\ntable = 'm.Nope'\n"
    )
    root = write_pkg(tmp_path / "m", toml, {"views/a.js": "", "views/lib/b.mjs": "",
                                            "views/c.css": ""})
    assert [(e["path"], e["code"]) for e in rejected(root)] == [
        ("views.c.entry", "bad_path"), ("views.d.entry", "missing_file"),
        ("views.e.table", "undefined_table"),
    ]


def test_unexpected_top_level_entries_warn(tmp_path: Path) -> None:
    root = write_pkg(tmp_path / "m", BASE, {
        "README.md": "hi", "LICENSE": "x", "assets/logo.png": b"\x89PNG",
        "notes.txt": "?", "build/out.o": b"\x00",
    })
    pkg = load_package(root)
    assert sorted(pkg.warnings) == ["ignored unexpected entry 'build'",
                                    "ignored unexpected entry 'notes.txt'"]
    assert pkg.files == ()


def test_size_limits(tmp_path: Path) -> None:
    root = write_pkg(tmp_path / "m", BASE + "[scripts.s]\nfile = 'scripts/s.lua'\n",
                     {"scripts/s.lua": SCRIPT, "assets/big.bin": b"\x00" * 4000})
    assert load_package(root).id == "m"
    toml_size = (root / "module.toml").stat().st_size
    cases = [
        (PackageLimits(max_script=len(SCRIPT) - 1), "scripts/s.lua"),
        (PackageLimits(max_manifest=toml_size - 1), "module.toml"),
        (PackageLimits(max_unpacked=4000), "."),
    ]
    for limits, path in cases:
        errs = rejected_with(root, limits)
        assert [(e["path"], e["code"]) for e in errs] == [(path, "too_large")]
    # exactly at the caps is fine
    assert load_package(root, limits=PackageLimits(
        max_script=len(SCRIPT), max_manifest=toml_size,
        max_unpacked=toml_size + len(SCRIPT) + 4000)).id == "m"


def rejected_with(root: Path, limits: PackageLimits) -> list[dict[str, str]]:
    with pytest.raises(ManifestError) as ei:
        load_package(root, limits=limits)
    return [dict(p) for p in ei.value.errors]


def test_missing_module_toml(tmp_path: Path) -> None:
    (tmp_path / "m" / "views").mkdir(parents=True)
    assert [(e["path"], e["code"]) for e in rejected(tmp_path / "m")] == [
        ("module.toml", "missing_file")
    ]


# --------------------------------------------------------------------------------------------
# Zip packages


def test_zip_package_matches_folder(tmp_path: Path) -> None:
    entries = {"module.toml": CONTACTS, **CONTACTS_FILES}
    folder = load_package(write_pkg(tmp_path / "contacts", CONTACTS, CONTACTS_FILES))
    flat = load_package(zip_pkg(tmp_path / "flat.zip", entries))
    nested = load_package(zip_pkg(tmp_path / "nested.zip", entries, prefix="contacts/"))
    for pkg in (flat, nested):
        assert (pkg.manifest, pkg.manifest_hash, pkg.files) == (
            folder.manifest, folder.manifest_hash, folder.files
        )


def _zip_with(path: Path, extra: list[tuple[zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("module.toml", BASE)
        for info, data in extra:
            zf.writestr(info, data)
    return path


def test_zip_hostile_entries(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("scripts/s.lua")
    link.create_system = 3
    link.external_attr = 0o120777 << 16  # a symlink entry pointing at /etc/passwd
    dev = zipfile.ZipInfo("assets/dev")
    dev.create_system = 3
    dev.external_attr = 0o020644 << 16  # a character device
    cases = [
        (link, b"/etc/passwd", "scripts/s.lua"),
        (zipfile.ZipInfo("../evil.lua"), SCRIPT.encode(), "../evil.lua"),
        (zipfile.ZipInfo("scripts/../../evil.lua"), b"", "scripts/../../evil.lua"),
        (zipfile.ZipInfo("/abs/module.toml"), b"", "/abs/module.toml"),
        (zipfile.ZipInfo("C:/win.lua"), b"", "C:/win.lua"),
        (zipfile.ZipInfo("scripts\\win.lua"), b"", "scripts\\win.lua"),
        (dev, b"", "assets/dev"),
    ]
    for i, (info, data, name) in enumerate(cases):
        errs = rejected(_zip_with(tmp_path / f"c{i}.zip", [(info, data)]))
        assert [(e["path"], e["code"]) for e in errs] == [(name, "unsafe_path")], name
    # all at once: every bad entry is reported
    errs = rejected(_zip_with(tmp_path / "all.zip", [(i, d) for i, d, _ in cases]))
    assert [e["path"] for e in errs] == [name for _, _, name in cases]


def test_zip_size_limits(tmp_path: Path) -> None:
    path = zip_pkg(tmp_path / "p.zip", {"module.toml": BASE, "assets/zeros": b"\x00" * 100_000})
    assert load_package(path).id == "m"  # compresses tiny, but unpacked size is what counts
    with pytest.raises(ManifestError) as ei:
        load_package(path, limits=PackageLimits(max_unpacked=50_000))
    assert [(e["path"], e["code"]) for e in ei.value.errors] == [("p.zip", "too_large")]
    with pytest.raises(ManifestError) as ei:
        load_package(path, limits=PackageLimits(max_manifest=100))
    assert ei.value.errors[0]["code"] == "too_large"
    assert ei.value.errors[0]["path"] == "module.toml"


def test_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ManifestError) as ei:
        load_package(bad)
    assert ei.value.errors[0]["code"] == "bad_archive"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.md", "no manifest")
    (tmp_path / "y.zip").write_bytes(buf.getvalue())
    with pytest.raises(ManifestError) as ei:
        load_package(tmp_path / "y.zip")
    assert [(e["path"], e["code"]) for e in ei.value.errors] == [("module.toml", "missing_file")]


# --------------------------------------------------------------------------------------------
# Rules, §5 condition typing, §8.7


def rule(name: str, body: str) -> str:
    return f"[rules.{name}]\naction = 'add_to_table'\n{body}"


TWO_TABLES = BASE + "[tables.T2.fields]\nx = { type = 'text' }\ny = { type = 'text' }\n" \
    "flag = { type = 'boolean' }\nwhen = { type = 'datetime' }\nf = { type = 'float' }\n" \
    "[edges.crew]\nfrom = 'm.T1'\nto = 'm.T2'\nproperties = { role = 'text', rank = 'integer' }\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'nope', op = 'eq', value = 'a' }\n",
         [("rules.r.when.field", "undefined_field")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'kind', op = 'lt', value = 'a' }\n",
         [("rules.r.when.op", "bad_op")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'x', op = 'eq' }\n",
         [("rules.r.when.value", "null_literal")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'x', op = 'eq', value = '' }\n",
         [("rules.r.when.value", "bad_value")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'kind', op = 'eq', value = 'zz' }\n",
         [("rules.r.when.value", "bad_value")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'body', op = 'eq', value = 'a' }\n",
         [("rules.r.when.op", "bad_op")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\n"
         "when = { field = 'body', op = 'contains', value = 'a' }\n", []),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'n', op = 'ge', value = 2.5 }\n", []),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'n', op = 'eq', value = 'two' }\n",
         [("rules.r.when.value", "bad_value")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'n', op = 'in', values = [] }\n",
         [("rules.r.when.values", "bad_value")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\n"
         "when = { field = 'kind', op = 'in', values = ['a', 'q'] }\n",
         [("rules.r.when.values[1]", "bad_value")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'n', op = 'between', value = 1 }\n",
         [("rules.r.when.op", "bad_op")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\n"
         "when = { field = 'x', op = 'eq', value = 'a', extra = 1 }\n",
         [("rules.r.when.extra", "unknown_key")]),
        ("source = 'm.T2'\ntarget = 'm.T1'\n"
         "when = { any = [{ field = 'flag', op = 'eq', value = true }, "
         "{ not = { field = 'when', op = 'lt', value = 1700000000000 } }, "
         "{ field = '$id', op = 'ne', value = '0190a0d8-7c3a-7000-8000-000000000000' }, "
         "{ in_table = 'm.T2' }, { in_table = 'other.Table' }] }\n", []),
        ("source = 'm.T2'\ntarget = 'm.T1'\n"
         "when = { all = [{ field = 'flag', op = 'lt', value = true }, { in_table = 'm.T9' }] }\n",
         [("rules.r.when.all[0].op", "bad_op"), ("rules.r.when.all[1].in_table",
                                                 "undefined_table")]),
        ("source = 'm.T1'\ntarget = 'o.X'\n"
         "when = { edge = 'm.crew', dir = 'out', props = { field = 'rank', op = 'gt', value = 2 },"
         " other = { table = 'm.T2', where = { field = 'flag', op = 'eq', value = true } } }\n",
         []),
        ("source = 'm.T1'\ntarget = 'o.X'\n"
         "when = { edge = 'm.crew', dir = 'up', props = { field = 'nope', op = 'eq', value = 1 },"
         " other = { table = 'm.T2', where = { field = 'x', op = 'eq', value = 3 } } }\n",
         [("rules.r.when.dir", "bad_value"), ("rules.r.when.props.field", "undefined_field"),
          ("rules.r.when.other.where.value", "bad_value")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { edge = 'm.nope', dir = 'in' }\n",
         [("rules.r.when.edge", "undefined_edge")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\nwhen = { bogus = 1 }\n",
         [("rules.r.when", "bad_condition")]),
        ("source = 'm.T9'\ntarget = 'T2'\naction = 'merge'\non_condition_lost = 'shrug'\n",
         [("rules.r.action", "bad_value"), ("rules.r.on_condition_lost", "bad_value"),
          ("rules.r.source", "undefined_table"), ("rules.r.target", "bad_name")]),
        ("source = 'm.T1'\ntarget = 'm.T2'\n", [("rules.r.action", "missing_key")]),
        # another module's tables: allowed, dormant; fields there cannot be checked yet
        ("source = 'other.A'\ntarget = 'other.B'\n"
         "when = { field = 'whatever', op = 'lt', value = 3 }\n"
         "set = [{ field = 'z', value = 1 }, { field = 'w', copy_from = 'v' }]\n", []),
        ("source = 'm.T1'\ntarget = 'm.T2'\nset = [{ field = 'x', copy_from = 'y' }, "
         "{ field = 'flag', value = 'yes' }, { field = 'zz', value = 1 }, "
         "{ field = 'when', copy_from = 'x' }, { field = 'y', copy_from = 'nope' }, "
         "{ field = 'f', value = 1.5, copy_from = 'n' }, { field = 'x', value = 'a', "
         "mode = 'sometimes' }]\n",
         [("rules.r.set[1].value", "bad_value"), ("rules.r.set[2].field", "undefined_field"),
          ("rules.r.set[3].copy_from", "type_mismatch"),
          ("rules.r.set[4].copy_from", "undefined_field"), ("rules.r.set[5]", "bad_value"),
          ("rules.r.set[6].field", "duplicate"), ("rules.r.set[6].mode", "bad_value")]),
    ],
)
def test_rule_problems(body: str, expected: list[tuple[str, str]]) -> None:
    if "action" in body or expected == [("rules.r.action", "missing_key")]:
        toml = TWO_TABLES + f"[rules.r]\n{body}"
    else:
        toml = TWO_TABLES + rule("r", body)
    assert problems(toml) == expected


def test_condition_depth_and_hops() -> None:
    cond: dict[str, object] = {"field": "x", "op": "eq", "value": "a"}
    for _ in range(7):
        cond = {"not": cond}
    toml = TWO_TABLES + rule("r", "source = 'm.T1'\ntarget = 'm.T2'\n") + "when = "
    assert problems(toml + _inline(cond) + "\n") == []  # 8 levels
    assert problems(toml + _inline({"not": cond}) + "\n") == [
        ("rules.r.when" + ".not" * 8, "too_deep")
    ]
    edge = {"edge": "other.e", "dir": "out", "other": {"table": "other.T", "where": {
        "edge": "other.e", "dir": "out", "other": {"table": "other.T", "where": {
            "edge": "other.e", "dir": "out", "other": {"table": "other.T", "where": {
                "edge": "other.e", "dir": "out"}}}}}}}
    toml = TWO_TABLES + rule("r", "source = 'm.T1'\ntarget = 'm.T2'\n") + \
        "when = " + _inline(edge) + "\n"
    assert problems(toml) == [("rules.r.when" + ".other.where" * 3, "too_deep")]


def _inline(x: object) -> str:
    """A Python value as a TOML inline value."""
    if isinstance(x, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_inline(v)}" for k, v in x.items()) + " }"
    if isinstance(x, list):
        return "[" + ", ".join(_inline(v) for v in x) + "]"
    if isinstance(x, bool):
        return "true" if x else "false"
    return json.dumps(x)


def test_conditions_as_sub_tables() -> None:
    toml = TWO_TABLES + rule("r", "source = 'm.T1'\ntarget = 'm.T2'\n") + (
        "[[rules.r.when.all]]\nfield = 'x'\nop = 'starts_with'\nvalue = 'A'\n"
        "[[rules.r.when.all]]\nfield = 'kind'\nop = 'ne'\nvalue = 'b'\n"
    )
    assert problems(toml) == []
    assert problems(toml.replace("value = 'b'", "value = 'c'")) == [
        ("rules.r.when.all[1].value", "bad_value")
    ]


# --------------------------------------------------------------------------------------------
# §6 / §8.6 cycles


def test_two_rules_cycle() -> None:
    toml = TWO_TABLES + rule(
        "a", "source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'x', op = 'eq', value = '1' }\n"
        "set = [{ field = 'y', value = 'v' }]\n"
    ) + rule(
        "b", "source = 'm.T2'\ntarget = 'm.T1'\nwhen = { field = 'y', op = 'eq', value = '1' }\n"
        "set = [{ field = 'x', value = 'v' }]\n"
    )
    with pytest.raises(ManifestError) as ei:
        check_manifest(toml.encode())
    assert [(e["path"], e["code"], e["message"]) for e in ei.value.errors] == [
        ("rules.a", "cycle_detected", "m.a -> m.b -> m.a")
    ]


def test_rules_chain_without_cycle_is_accepted() -> None:
    # T1 -> T2 (sets y) and T2 -> other (watching y): a chain, not a cycle
    toml = TWO_TABLES + rule(
        "a", "source = 'm.T1'\ntarget = 'm.T2'\nset = [{ field = 'y', value = 'v' }]\n"
    ) + rule("b", "source = 'm.T2'\ntarget = 'other.X'\n"
                  "when = { field = 'y', op = 'eq', value = '1' }\n")
    assert problems(toml) == []


def test_on_change_script_self_loop() -> None:
    toml = BASE + (
        "[scripts.s]\nfile = 'scripts/s.lua'\ntrigger = 'on_change'\n"
        "watch = { table = 'm.T1', fields = ['status'] }\nwrites = ['m.T1.status']\n"
    )
    with pytest.raises(ManifestError) as ei:
        check_manifest(toml.encode(), files=["scripts/s.lua"])
    assert [(e["path"], e["code"], e["message"]) for e in ei.value.errors] == [
        ("scripts.s", "cycle_detected", "script:m.s -> script:m.s")
    ]
    # watching other fields (or only record events) while writing status is fine
    ok = toml.replace("fields = ['status']", "fields = ['x'], events = ['field_changed']")
    assert problems(ok, {"scripts/s.lua": SCRIPT}) == []


def test_rule_and_script_cycle() -> None:
    # the rule adds T1 records to T2; the script reacts to new T2 records by writing T1.x,
    # which the rule's condition watches
    toml = TWO_TABLES + rule(
        "r", "source = 'm.T1'\ntarget = 'm.T2'\nwhen = { field = 'x', op = 'eq', value = '1' }\n"
    ) + (
        "[scripts.s]\nfile = 'scripts/s.lua'\ntrigger = 'on_change'\n"
        "watch = { table = 'm.T2', events = ['record_added'] }\nwrites = ['m.T1.x']\n"
    )
    assert problems(toml, {"scripts/s.lua": SCRIPT}) == [("rules.r", "cycle_detected")]
    with pytest.raises(ManifestError) as ei:
        check_manifest(toml.encode(), files=["scripts/s.lua"])
    assert ei.value.errors[0]["message"] == "m.r -> script:m.s -> m.r"


def _reaches(graph: dict[str, set[str]], a: str, b: str) -> bool:
    seen, todo = set(), [a]
    while todo:
        n = todo.pop()
        for m in graph[n]:
            if m == b:
                return True
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return False


@given(st.dictionaries(
    st.sampled_from("abcdef"),
    st.tuples(st.sets(st.sampled_from("kjlmn")), st.sets(st.sampled_from("kjlmn"))),
))
def test_find_cycles_matches_reachability(nodes: dict[str, tuple[set[str], set[str]]]) -> None:
    graph = {x: {y for y, (_, wy) in nodes.items() if wx & wy} for x, (wx, _) in nodes.items()}
    cyclic = {x for x in nodes if _reaches(graph, x, x)}
    paths = find_cycles(nodes)
    on_reported = set()
    for p in paths:
        steps = p.split(" -> ")
        assert steps[0] == steps[-1]
        for a, b in itertools.pairwise(steps):
            assert b in graph[a]  # every step is a real write→watch edge
        on_reported |= set(steps)
    assert on_reported <= cyclic
    # one path per cyclic component: every cyclic node is mutually reachable with a reported one
    for x in cyclic:
        assert any(x in p.split(" -> ") or (_reaches(graph, x, p.split(" -> ")[0])
                   and _reaches(graph, p.split(" -> ")[0], x)) for p in paths)


# --------------------------------------------------------------------------------------------
# Names (01 §1.2), property-based


def _key(name: str) -> str:
    return json.dumps(name)  # a TOML basic-string key


NAME_CHARS = st.text(alphabet=st.sampled_from("aZz09_-.é A"), max_size=50)


@given(NAME_CHARS)
def test_table_names(name: str) -> None:
    toml = BASE.split("[tables.T1.fields]")[0] + f"[tables.{_key(name)}.fields]\n" \
        "a = { type = 'text' }\n"
    ok = values.TABLE_RE.fullmatch(name) is not None
    assert problems(toml) == ([] if ok else [(render_path(("tables", name)), "bad_name")])


@given(NAME_CHARS)
def test_field_names(name: str) -> None:
    toml = BASE + f"[tables.T2.fields]\n{_key(name)} = {{ type = 'text' }}\n"
    expected = [] if values.is_local_name(name) else [
        (render_path(("tables", "T2", "fields", name)), "bad_name")
    ]
    if name == "id":
        expected = [("tables.T2.fields.id", "reserved")]
    assert problems(toml) == expected


@given(st.one_of(NAME_CHARS, st.sampled_from(sorted(values.RESERVED_MODULES))))
def test_module_ids(name: str) -> None:
    toml = BASE.replace('id = "m"', f"id = {_key(name)}")
    if not values.is_module(name):
        expected = [("module.id", "bad_name")]
    elif name in values.RESERVED_MODULES:
        expected = [("module.id", "reserved")]
    else:
        expected = []
    assert problems(toml) == expected


@given(NAME_CHARS)
def test_edge_rule_script_view_names(name: str) -> None:
    toml = BASE + (
        f"[edges.{_key(name)}]\nfrom = 'm.T1'\n"
        f"[rules.{_key(name)}]\nsource = 'x.A'\ntarget = 'x.B'\naction = 'add_to_table'\n"
    )
    expected = [] if values.is_local_name(name) else [
        (render_path(("edges", name)), "bad_name"), (render_path(("rules", name)), "bad_name")
    ]
    assert problems(toml) == expected


def test_render_path() -> None:
    assert render_path(("tables", "People", "fields", "email", "shraed_key")) == \
        "tables.People.fields.email.shraed_key"
    assert render_path(("rules", "r", "set", 0, "field")) == "rules.r.set[0].field"
    assert render_path(("tables", "a.b")) == 'tables."a.b"'
