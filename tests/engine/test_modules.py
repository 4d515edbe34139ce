"""Adopting module packages and field-mapping suggestions (spec 04 §4) on the pure engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from openprod.core import codec
from openprod.engine.manifest import Package, load_package
from openprod.engine.modules import SchemaChangeUnsupported, TypeMismatch
from tests.helpers import Net

BUILTIN = Path(__file__).resolve().parents[2] / "modules"


def builtin(name: str) -> Package:
    return load_package(BUILTIN / name)


def package(root: Path, toml: str) -> Package:
    root.mkdir(parents=True, exist_ok=True)
    (root / "module.toml").write_text(toml)
    return load_package(root)


V1 = """manifest_version = 1
[module]
id = "gear"
version = "1.0.0"
name = "Gear"
[tables.Items.fields]
name = { type = "text" }
kind = { type = "enum", choices = ["light", "sound"] }
count = { type = "integer" }
[edges.in_case]
from = "gear.Items"
properties = { slot = "integer" }
"""


def _tables(ws: object) -> dict[str, object]:
    return {t.facet: t for t in ws.views.tables()}  # type: ignore[attr-defined]


def test_builtin_modules_validate() -> None:
    ids = {builtin(d.name).id for d in BUILTIN.iterdir() if (d / "module.toml").is_file()}
    assert ids == {"contacts", "crew_calls", "lighting_cues"}


def test_adopt_defines_tables_fields_edges_and_config(net: Net) -> None:
    a = net.add_peer("a")
    pkg = builtin("lighting-cues")
    r = a.adopt_module(pkg)
    assert r.bundle_id is not None
    kinds = [codec.decode(row[0])["kind"] for row in a.storage.conn.execute(
        "SELECT header FROM bundles WHERE bundle_id = ?", (r.bundle_id,))]
    assert kinds == ["schema"]
    tables = _tables(a)
    assert {"lighting_cues.Cues", "lighting_cues.CueLists", "lighting_cues.SMCues"} <= set(tables)
    cues = a.views.table("lighting_cues.Cues")
    assert cues.module == "lighting_cues" and cues.label == "Cues"
    f = {x.name: x for x in cues.fields}
    assert [x.name for x in cues.fields] == ["number", "label", "time", "page", "is_called",
                                            "notes"]
    assert (f["time"].ftype, f["page"].ftype, f["is_called"].ftype) == (
        "duration", "integer", "boolean")
    assert f["number"].opts == {"required": True} and f["number"].label == "Cue"
    assert f["is_called"].opts == {"default": ["boolean", False]}
    et = a.views.edge_type("lighting_cues.cue_stack")
    assert et is not None and et["ordered"] is True and et["label"] == "In cue list"

    contacts = a.adopt_module(builtin("contacts"))
    assert contacts.bundle_id is not None
    dept = a.views.field_def("contacts.People", "department")
    assert dept is not None and dept.ftype == "enum"
    assert dept.choices is not None and "lighting" in dept.choices
    calls = a.adopt_module(builtin("crew-calls"))
    assert calls.bundle_id is not None
    fp = a.views.edge_type("crew_calls.for_person")
    assert fp is not None and fp["props"] == {"role_today": "text"} and fp["ordered"] is False
    cfg = {str(k): codec.decode(bytes(v)) for k, v in a.proj.conn.execute(
        "SELECT key, value FROM config WHERE ns = 'module'")}
    assert cfg["contacts"]["version"] == "1.0.0"
    assert cfg["contacts"]["manifest_hash"] == builtin("contacts").manifest_hash
    assert cfg["contacts"]["shared_keys"]["contacts.People.email"] == "email"
    assert cfg["crew_calls"]["title_fields"] == {"crew_calls.Crew": "name",
                                                 "crew_calls.Calls": "label"}
    # records work like any table's, with the module's types enforced
    rec = a.create_record("lighting_cues.Cues", {"number": "12", "time": 3000, "page": 4}).id
    assert a.get_record(rec)["values"]["time"] == 3000


def test_adopt_same_version_twice_is_a_no_op(net: Net) -> None:
    a = net.add_peer("a")
    a.adopt_module(builtin("contacts"))
    head, digest = a.storage.head_seq(), a.oplog_digest()
    again = a.adopt_module(builtin("contacts"))
    assert again.bundle_id is None and again.seq == head
    assert a.oplog_digest() == digest


def test_upgrade_that_is_a_superset_is_adopted(net: Net, tmp_path: Path) -> None:
    a = net.add_peer("a")
    a.adopt_module(package(tmp_path / "v1", V1))
    e = a.create_record("gear.Items", {"name": "par", "kind": "light"}).id
    v2 = V1.replace('version = "1.0.0"', 'version = "1.1.0"').replace(
        '["light", "sound"]', '["light", "sound", "video"]').replace(
        'count = { type = "integer" }', 'count = { type = "integer" }\nweight = { type = "float" }'
    ) + '[tables.Cases.fields]\nlabel = { type = "text" }\n'
    r = a.adopt_module(package(tmp_path / "v2", v2))
    assert r.bundle_id is not None
    items = a.views.table("gear.Items")
    assert [f.name for f in items.fields] == ["name", "kind", "count", "weight"]
    kind = items.field("kind")
    assert kind.choices == ["light", "sound", "video"]
    assert "gear.Cases" in _tables(a)
    a.update_record(e, {"kind": "video", "weight": 1.5})
    assert a.get_record(e)["values"]["kind"] == "video"
    cfg = codec.decode(bytes(next(iter(a.proj.conn.execute(
        "SELECT value FROM config WHERE ns = 'module' AND key = 'gear'")))[0]))
    assert cfg["version"] == "1.1.0"


@pytest.mark.parametrize("change", [
    ("count = { type = \"integer\" }", "count = { type = \"text\" }"),  # ftype changed
    ("count = { type = \"integer\" }\n", ""),  # field removed
    ('["light", "sound"]', '["light"]'),  # choice removed
    ("properties = { slot = \"integer\" }", "ordered = true"),  # ordering and property changed
])
def test_upgrade_that_changes_the_schema_is_refused(net: Net, tmp_path: Path,
                                                    change: tuple[str, str]) -> None:
    a = net.add_peer("a")
    a.adopt_module(package(tmp_path / "v1", V1))
    head, digest, state = a.storage.head_seq(), a.oplog_digest(), a.state_hash()
    bad = V1.replace('version = "1.0.0"', 'version = "2.0.0"').replace(*change)
    assert bad != V1.replace('version = "1.0.0"', 'version = "2.0.0"')
    with pytest.raises(SchemaChangeUnsupported) as exc:
        a.adopt_module(package(tmp_path / "v2", bad))
    assert exc.value.code == "schema_change_unsupported"
    assert exc.value.details["problems"]
    assert (a.storage.head_seq(), a.oplog_digest(), a.state_hash()) == (head, digest, state)
    assert a.views.field_def("gear.Items", "count").ftype == "integer"  # type: ignore[union-attr]


def test_downgrade_is_refused(net: Net, tmp_path: Path) -> None:
    a = net.add_peer("a")
    a.adopt_module(package(tmp_path / "v2", V1.replace('"1.0.0"', '"1.2.0"')))
    head = a.storage.head_seq()
    with pytest.raises(SchemaChangeUnsupported):
        a.adopt_module(package(tmp_path / "v1", V1))
    assert a.storage.head_seq() == head


def _adopt_both(net: Net):  # type: ignore[no-untyped-def]
    a = net.add_peer("a")
    a.adopt_module(builtin("contacts"))
    a.adopt_module(builtin("crew-calls"))
    return a


def test_suggestions_for_contacts_and_crew_calls(net: Net) -> None:
    a = _adopt_both(net)
    got = {(s["key_a"], s["key_b"]): s for s in a.mapping_suggestions()}
    assert set(got) == {
        ("contacts.People.full_name", "crew_calls.Crew.name"),
        ("contacts.People.email", "crew_calls.Crew.email"),
        ("contacts.People.phone", "crew_calls.Crew.phone"),
        ("contacts.People.department", "crew_calls.Crew.department"),
        ("contacts.People.notes", "crew_calls.Calls.notes"),
    }
    dept = got[("contacts.People.department", "crew_calls.Crew.department")]
    assert dept["compatible"] is False and dept["reason"] == "enum vs text"
    name = got[("contacts.People.full_name", "crew_calls.Crew.name")]
    assert name["compatible"] is True and name["shared_key"] == "name"
    assert name["a"]["label"] == "Name" and name["b"]["table"] == "crew_calls.Crew"


def test_only_one_module_adopted_suggests_nothing(net: Net) -> None:
    a = net.add_peer("a")
    a.adopt_module(builtin("contacts"))
    assert a.mapping_suggestions() == []


def test_confirm_makes_one_slot_and_reject_hides_the_suggestion(net: Net) -> None:
    a = _adopt_both(net)
    p = a.create_record("contacts.People", {"full_name": "Jane", "email": "j@x.org"}).id
    a.add_to_table(p, "crew_calls.Crew")
    a.confirm_mapping("crew_calls.Crew.email", "contacts.People.email")  # any order
    assert a.proj.slot_of("crew_calls.Crew", "email") == a.proj.slot_of("contacts.People",
                                                                        "email")
    assert a.get_record(p)["values"]["email"] == "j@x.org"
    a.update_record(p, {"email": "jane@x.org"}, table="crew_calls.Crew")
    vals = a.views.record_values(p, a.views.table("contacts.People"))[0]
    assert vals["email"] == "jane@x.org"  # written through the Crew field, read via People
    a.reject_mapping("contacts.People.notes", "crew_calls.Calls.notes")
    left = {(s["key_a"], s["key_b"]) for s in a.mapping_suggestions()}
    assert ("contacts.People.email", "crew_calls.Crew.email") not in left
    assert ("contacts.People.notes", "crew_calls.Calls.notes") not in left
    assert ("contacts.People.phone", "crew_calls.Crew.phone") in left


def test_confirming_an_incompatible_pair_fails_type_mismatch(net: Net) -> None:
    a = _adopt_both(net)
    head = a.storage.head_seq()
    for op in (a.confirm_mapping, a.reject_mapping):
        with pytest.raises(TypeMismatch) as exc:
            op("contacts.People.department", "crew_calls.Crew.department")
        assert exc.value.code == "type_mismatch"
        assert exc.value.details["type_a"] == "enum"
    assert a.storage.head_seq() == head
    assert any(s["key_b"] == "crew_calls.Crew.department" for s in a.mapping_suggestions())


def test_adoption_and_decisions_replicate(net: Net) -> None:
    a = _adopt_both(net)
    b = net.add_peer("b")
    a.confirm_mapping("contacts.People.phone", "crew_calls.Crew.phone")
    net.sync_all()
    assert b.views.table("contacts.People").module == "contacts"
    assert b.proj.slot_of("crew_calls.Crew", "phone") == "contacts.People.phone"
    assert {(s["key_a"], s["key_b"]) for s in b.mapping_suggestions()} == {
        (s["key_a"], s["key_b"]) for s in a.mapping_suggestions()}
    net.assert_converged()
