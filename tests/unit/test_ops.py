"""Tests for openprod.core.ops: payload admission, seal/open (spec 01 §1.2, §1.3, §3-§5, §11.2)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import attrs
import pytest
from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import codec, hlc, ids, values
from openprod.core import ops as O
from openprod.core.errors import ContentError, IntegrityError, ValidationError
from openprod.core.identity import Identity
from tests.helpers import T0

IDENT = Identity.from_seed(bytes(range(32)), "author")
OTHER = Identity.from_seed(bytes(range(1, 33)), "other")
WS = ids.new_id()
WS2 = ids.new_id()
E, E2 = ids.new_id(), ids.new_id()
EDGE, EDGE2 = ids.new_id(), ids.new_id()
NEW = ids.new_id()
V4 = uuid.UUID("12345678-1234-4234-8234-123456789abc").bytes
A32, B32 = bytes(range(32)), bytes(range(100, 132))
FACET = "workspace.t_0123456789abcdef0123456789abcdef"
MIB = 1 << 20


def h(i: int, wall: int = T0) -> bytes:
    return hlc.pack(wall, i)


def hlcs(n: int) -> list[bytes]:
    return [h(i) for i in range(n)]


# --- one valid payload per op type ------------------------------------------------------------

VALID: dict[str, dict[str, Any]] = {
    "CreateEntity": {"e": E},
    "DeleteEntity": {"e": E, "cascade": [EDGE, EDGE2]},
    "RestoreEntity": {"e": E},
    "AttachFacet": {"e": E, "facet": FACET},
    "DetachFacet": {"e": E, "facet": FACET},
    "SetField": {"e": E, "facet": FACET, "field": "f_title", "value": ["text", "hi"]},
    "ClearField": {"e": E, "facet": FACET, "field": "f_title"},
    "SetCRDTField": {"e": E, "facet": FACET, "field": "notes", "delta": b"\x01\x00"},
    "CreateEdge": {"edge": NEW, "type": "crm.owns", "src": E, "dst": E2},
    "DeleteEdge": {"edge": EDGE},
    "RestoreEdge": {"edge": EDGE},
    "SetEdgeProperty": {"edge": EDGE, "key": "weight", "value": ["integer", 3]},
    "ClearEdgeProperty": {"edge": EDGE, "key": "weight"},
    "CreateOrderedEdge": {
        "edge": NEW, "type": "crm.items", "src": E, "dst": E2, "index": "V",
    },
    "MoveOrderedEdge": {"edge": EDGE, "index": "V1"},
    "RebalanceOrderedEdges": {
        "parent": E, "type": "crm.items", "order": [[EDGE2, "F"], [EDGE, "V"]],
    },
    "DefineTable": {"facet": FACET, "label": "Tasks"},
    "DefineField": {"facet": FACET, "field": "f_title", "ftype": "text", "label": "Title"},
    "DefineEdgeType": {"type": "crm.owns", "ordered": False, "label": "Owns"},
    "ConfirmFieldMapping": {
        "facet_a": "crm.Contact", "field_a": "email", "facet_b": "shop.Customer",
        "field_b": "email",
    },
    "RejectFieldMapping": {
        "facet_a": "crm.Contact", "field_a": "email", "facet_b": "crm.Contact",
        "field_b": "mail",
    },
    "MergeEntities": {"survivor": E, "absorbed": E2},
    "SplitEntity": {"source": E, "new_entity": NEW, "facets": ["crm.Contact", "shop.Customer"]},
    "CreateWorkspace": {"name": "Team", "owner": A32, "recovery_pub": B32},
    "RecoverOwnership": {"new_owner": A32, "new_recovery_pub": B32, "recovery_sig": bytes(64)},
    "PutConfig": {"ns": "workspace", "key": "join_mode", "value": "open"},
    "DeleteConfig": {"ns": "access_key", "key": "k1"},
}

# further valid payloads exercising optional keys and boundaries
MORE_VALID: list[tuple[str, dict[str, Any]]] = [
    ("DeleteEntity", {"e": E, "cascade": []}),
    ("DeleteEntity", {"e": V4, "cascade": [V4], "resolves": [E, E2], "conflict": NEW}),
    ("RestoreEntity", {"e": E, "resolves": [E], "conflict": E2}),
    ("SetField", {**VALID["SetField"], "resolves": [E], "conflict": E2}),
    ("ClearField", {**VALID["ClearField"], "resolves": [E2]}),
    ("SetEdgeProperty", {**VALID["SetEdgeProperty"], "conflict": E}),
    ("ClearEdgeProperty", {**VALID["ClearEdgeProperty"], "resolves": []}),
    ("CreateEdge", {**VALID["CreateEdge"], "props": {"role": ["enum", "lead"]}}),
    ("CreateEdge", {**VALID["CreateEdge"], "props": {}}),
    ("CreateOrderedEdge", {**VALID["CreateOrderedEdge"], "props": {"qty": ["integer", 2]}}),
    ("CreateOrderedEdge", {**VALID["CreateOrderedEdge"], "index": "z" * 128}),
    ("MoveOrderedEdge", {"edge": EDGE, "index": "0001"}),
    ("DefineField", {**VALID["DefineField"], "crdt": True}),
    ("DefineField", {**VALID["DefineField"], "ftype": "integer", "crdt": False}),
    ("DefineField", {**VALID["DefineField"], "ftype": "enum", "opts": {
        "choices": ["a", ["b", "Bee"]], "required": True, "hidden": False,
        "default": ["enum", "a"], "mode": "discrete",
    }}),
    ("DefineField", {**VALID["DefineField"], "opts": {
        "mode": "reference", "ref": "crm.Contact.email", "ref_table": "crm.Contact",
    }}),
    ("DefineField", {**VALID["DefineField"], "field": "a" * 48, "label": "x" * 200}),
    ("DefineTable", {"facet": "m" * 32 + "." + "T" * 48, "label": "L"}),
    ("DefineEdgeType", {"type": "crm.items", "ordered": True, "label": "Items",
                        "props": {"qty": "integer", "note": "text"}}),
    ("CreateWorkspace", {**VALID["CreateWorkspace"], "forked_from": {
        "ws": WS2, "genesis_hash": A32, "oplog_digest": B32}}),
    ("PutConfig", {"ns": "actor", "key": "a" * 256, "value": {"display_name": "Ann", "n": [1]}}),
    ("PutConfig", {"ns": "x", "key": "k", "value": "x" * (256 * 1024 - 5)}),
    ("SetCRDTField", {**VALID["SetCRDTField"], "delta": b"\x00" * MIB}),
    ("SplitEntity", {"source": V4, "new_entity": NEW, "facets": ["crm.Contact"]}),
    ("MergeEntities", {"survivor": bytes(16), "absorbed": b"\xff" * 16}),
]

VALID_VALUES: list[list[Any]] = [
    ["text", ""],
    ["text", "x" * MIB],
    ["text", "é" * (MIB // 2)],  # 1 MiB of UTF-8
    ["integer", values.I64_MAX],
    ["integer", values.I64_MIN],
    ["integer", 0],
    ["datetime", -1],
    ["duration", values.I64_MAX],
    ["float", 0.0],
    ["float", -1.5],
    ["float", 1e308],
    ["boolean", True],
    ["boolean", False],
    ["enum", "a"],
    ["date", "2024-02-29"],
    ["date", "0001-01-01"],
    ["date", "9999-12-31"],
    ["entity_ref", E],
    ["entity_ref", V4],
    ["blob_ref", A32],
    ["ref", [E, "crm.Contact.email"]],
]

BAD_VALUES: list[Any] = [
    None,
    "text",
    [],
    ["text"],
    ["text", "a", "b"],
    [1, "a"],
    ["txt", "a"],
    ["Text", "a"],
    ["text", 1],
    ["text", b"a"],
    ["text", "x" * MIB + "x"],
    ["text", "é" * (MIB // 2) + "x"],
    ["integer", values.I64_MAX + 1],
    ["integer", values.I64_MIN - 1],
    ["integer", True],
    ["integer", 1.0],
    ["integer", "1"],
    ["datetime", 2**63],
    ["duration", -(2**63) - 1],
    ["float", 1],
    ["float", -0.0],
    ["float", float("nan")],
    ["float", float("inf")],
    ["float", "1.5"],
    ["boolean", 1],
    ["boolean", None],
    ["enum", ""],
    ["enum", 3],
    ["date", "2023-02-29"],
    ["date", "2023-13-01"],
    ["date", "2023-00-10"],
    ["date", "2023-1-01"],
    ["date", "20230101"],
    ["date", "2023-01-01T00:00"],
    ["date", "2023-01-01 "],
    ["date", "٢٠٢٣-٠١-٠١"],
    ["date", 20230101],
    ["entity_ref", E[:15]],
    ["entity_ref", E + b"\x00"],
    ["entity_ref", ids.to_text(E)],
    ["blob_ref", E],
    ["blob_ref", A32 + b"\x00"],
    ["ref", [E, "crm.Contact"]],
    ["ref", [E[:15], "crm.Contact.email"]],
    ["ref", E],
    ["ref", [E, "crm.Contact.email", 1]],
]


def with_(t: str, **changes: Any) -> tuple[str, dict[str, Any]]:
    p = copy.deepcopy(VALID[t])
    p.update(changes)
    return t, p


def without(t: str, key: str) -> tuple[str, dict[str, Any]]:
    p = copy.deepcopy(VALID[t])
    del p[key]
    return t, p


INVALID: dict[str, tuple[str, dict[str, Any]]] = {
    # ids
    "id 15 bytes": with_("DeleteEdge", edge=EDGE[:15]),
    "id 17 bytes": with_("AttachFacet", e=E + b"\x00"),
    "id as text": with_("RestoreEntity", e=ids.to_text(E)),
    "id as bytearray": with_("RestoreEntity", e=bytearray(E)),
    "new entity not v7": with_("CreateEntity", e=V4),
    "new entity zero": with_("CreateEntity", e=bytes(16)),
    "new edge not v7": with_("CreateEdge", edge=V4),
    "new ordered edge not v7": with_("CreateOrderedEdge", edge=V4),
    "split new_entity not v7": with_("SplitEntity", new_entity=V4),
    "src bad": with_("CreateEdge", src=E[:8]),
    "owner 31 bytes": with_("CreateWorkspace", owner=A32[:31]),
    "recovery sig 63 bytes": with_("RecoverOwnership", recovery_sig=bytes(63)),
    # names
    "facet without table": with_("AttachFacet", facet="workspace"),
    "facet with two dots": with_("AttachFacet", facet="a.B.c"),
    "facet module uppercase": with_("DefineTable", facet="Crm.Contact"),
    "facet module starts with digit": with_("DefineTable", facet="1crm.Contact"),
    "facet module 33 chars": with_("DefineTable", facet="m" * 33 + ".T"),
    "facet table starts with digit": with_("DefineTable", facet="crm.1Contact"),
    "facet table 49 chars": with_("DefineTable", facet="crm." + "T" * 49),
    "facet table with dash": with_("DefineTable", facet="crm.Con-tact"),
    "facet empty table": with_("DefineTable", facet="crm."),
    "field uppercase": with_("SetField", field="Title"),
    "field underscore prefix": with_("ClearField", field="_sys"),
    "field starts with digit": with_("ClearField", field="1a"),
    "field 49 chars": with_("DefineField", field="a" * 49),
    "field with dash": with_("SetCRDTField", field="a-b"),
    "field empty": with_("SetCRDTField", field=""),
    "field reserved id": with_("DefineField", field="id"),
    "field trailing newline": with_("SetField", field="title\n"),
    "edge type uppercase name": with_("CreateEdge", type="crm.Owns"),
    "edge type without module": with_("DefineEdgeType", type="owns"),
    "edge type three parts": with_("CreateOrderedEdge", type="a.b.c"),
    "property key uppercase": with_("SetEdgeProperty", key="Weight"),
    "property key empty": with_("ClearEdgeProperty", key=""),
    "config ns uppercase": with_("PutConfig", ns="Workspace"),
    "config key empty": with_("DeleteConfig", key=""),
    "config key 257 chars": with_("PutConfig", key="k" * 257),
    "mapping facet bad": with_("ConfirmFieldMapping", facet_b="shop"),
    "split facet bad": with_("SplitEntity", facets=["crm"]),
    # keys
    "missing e": without("SetField", "e"),
    "missing value": without("SetField", "value"),
    "missing cascade": without("DeleteEntity", "cascade"),
    "missing ordered": without("DefineEdgeType", "ordered"),
    "missing label": without("DefineField", "label"),
    "unknown key": with_("SetField", extra=1),
    "optional key as null": with_("CreateEdge", props=None),
    "optional crdt as null": with_("DefineField", crdt=None),
    # values
    "set value not a value": with_("SetField", value="hi"),
    "set value integer as text": with_("SetField", value=["integer", "x"]),
    "edge prop value -0.0": with_("SetEdgeProperty", value=["float", -0.0]),
    "edge props bad value": with_("CreateEdge", props={"w": ["integer", 2**63]}),
    "edge props bad name": with_("CreateOrderedEdge", props={"W": ["integer", 1]}),
    "edge props not a map": with_("CreateEdge", props=[["w", ["integer", 1]]]),
    # lists
    "cascade unsorted": with_("DeleteEntity", cascade=[EDGE2, EDGE]),
    "cascade duplicate": with_("DeleteEntity", cascade=[EDGE, EDGE]),
    "cascade bad id": with_("DeleteEntity", cascade=[EDGE[:3]]),
    "cascade not a list": with_("DeleteEntity", cascade=EDGE),
    "resolves unsorted": with_("SetField", resolves=[E2, E]),
    "resolves duplicate": with_("RestoreEntity", resolves=[E, E]),
    "conflict bad id": with_("ClearField", conflict=b"x"),
    "split facets unsorted": with_("SplitEntity", facets=["shop.Customer", "crm.Contact"]),
    "split facets duplicate": with_("SplitEntity", facets=["crm.Contact", "crm.Contact"]),
    "split facets empty": with_("SplitEntity", facets=[]),
    # identity repair
    "survivor equals absorbed": with_("MergeEntities", absorbed=E),
    "survivor larger than absorbed": with_("MergeEntities", survivor=E2, absorbed=E),
    "mapping pair equal": with_(
        "ConfirmFieldMapping", facet_b="crm.Contact", field_b="email"),
    "mapping pair reversed": with_(
        "RejectFieldMapping", field_a="mail", field_b="email"),
    # fractional index
    "index empty": with_("CreateOrderedEdge", index=""),
    "index trailing zero": with_("MoveOrderedEdge", index="V0"),
    "index only zero": with_("MoveOrderedEdge", index="0"),
    "index bad char": with_("MoveOrderedEdge", index="V-"),
    "index 129 chars": with_("MoveOrderedEdge", index="z" * 129),
    "index not text": with_("MoveOrderedEdge", index=5),
    "order decreasing": with_("RebalanceOrderedEdges", order=[[EDGE, "V"], [EDGE2, "F"]]),
    "order equal indexes": with_("RebalanceOrderedEdges", order=[[EDGE, "V"], [EDGE2, "V"]]),
    "order duplicate edge": with_("RebalanceOrderedEdges", order=[[EDGE, "F"], [EDGE, "V"]]),
    "order empty": with_("RebalanceOrderedEdges", order=[]),
    "order bad index": with_("RebalanceOrderedEdges", order=[[EDGE, "F0"]]),
    "order bad pair": with_("RebalanceOrderedEdges", order=[[EDGE, "F", 1]]),
    "order bad edge id": with_("RebalanceOrderedEdges", order=[[b"x", "F"]]),
    # labels
    "label empty": with_("DefineTable", label=""),
    "label 201 chars": with_("DefineEdgeType", label="x" * 201),
    "workspace name empty": with_("CreateWorkspace", name=""),
    # field definitions
    "ftype unknown": with_("DefineField", ftype="string"),
    "ftype ref is a kind not a type": with_("DefineField", ftype="ref"),
    "ftype unhashable": with_("DefineField", ftype=["text"]),
    "crdt not bool": with_("DefineField", crdt=1),
    "crdt on integer": with_("DefineField", ftype="integer", crdt=True),
    "crdt on enum": with_("DefineField", ftype="enum", crdt=True),
    "opts not a map": with_("DefineField", opts=["choices"]),
    "opts unknown key": with_("DefineField", opts={"color": "red"}),
    "opts unknown key beside known": with_("DefineField", opts={"required": True, "x": 1}),
    "opts choices empty": with_("DefineField", opts={"choices": []}),
    "opts choices empty key": with_("DefineField", opts={"choices": [""]}),
    "opts choices bad pair": with_("DefineField", opts={"choices": [["a"]]}),
    "opts choices duplicate": with_("DefineField", opts={"choices": ["a", ["a", "A"]]}),
    "opts required not bool": with_("DefineField", opts={"required": 1}),
    "opts hidden not bool": with_("DefineField", opts={"hidden": "no"}),
    "opts mode unknown": with_("DefineField", opts={"mode": "mirror"}),
    "opts ref not a field key": with_("DefineField", opts={"ref": "crm.Contact"}),
    "opts ref_table bad": with_("DefineField", opts={"ref_table": "crm"}),
    "opts default bad value": with_("DefineField", opts={"default": ["integer", "1"]}),
    "edge type props bad ftype": with_("DefineEdgeType", props={"qty": "int"}),
    "edge type props unhashable ftype": with_("DefineEdgeType", props={"qty": ["integer"]}),
    "edge type props bad name": with_("DefineEdgeType", props={"Qty": "integer"}),
    "ordered not bool": with_("DefineEdgeType", ordered=0),
    # sizes and blobs
    "crdt delta empty": with_("SetCRDTField", delta=b""),
    "crdt delta over 1 MiB": with_("SetCRDTField", delta=b"\x00" * (MIB + 1)),
    "crdt delta not bytes": with_("SetCRDTField", delta="x"),
    "config over 256 KiB": with_("PutConfig", value="x" * (256 * 1024 - 4)),
    "config NaN": with_("PutConfig", value={"x": float("nan")}),
    "config not encodable": with_("PutConfig", value={1: "int key"}),
    "forked_from missing key": with_("CreateWorkspace", forked_from={"ws": WS2}),
    "forked_from bad member": with_(
        "CreateWorkspace", forked_from={"ws": WS2, "genesis_hash": A32, "oplog_digest": b"x"}),
}


def test_valid_covers_every_op_type() -> None:
    assert set(VALID) == set(O.OP_TYPES)
    assert len(O.OP_TYPES) == 27
    assert {
        "DefineField", "ConfirmFieldMapping", "RejectFieldMapping", "MergeEntities",
        "SplitEntity",
    } == set(O.STRUCTURAL)


@pytest.mark.parametrize(
    ("t", "p"), list(VALID.items()) + MORE_VALID,
    ids=list(VALID) + [f"{t}-{i}" for i, (t, _) in enumerate(MORE_VALID)],
)
def test_valid_payloads_pass(t: str, p: dict[str, Any]) -> None:
    assert O.payload_problem(t, p) is None
    obj = O.payload_from_wire(t, p)
    assert obj.t == t
    obj.check()
    assert obj.to_wire() == p


@pytest.mark.parametrize("t", sorted(VALID))
def test_every_required_key_is_required_and_unknown_keys_refused(t: str) -> None:
    cls = O.OP_TYPES[t]
    for key, (_, required) in cls.schema.items():
        if required:
            assert O.payload_problem(*without(t, key)) is not None, key
    assert O.payload_problem(*with_(t, zzz=1)) is not None
    assert O.payload_problem(t, [VALID[t]]) is not None  # payload not a map


@pytest.mark.parametrize("t", sorted(VALID))
def test_every_key_checks_its_kind(t: str) -> None:
    for key in O.OP_TYPES[t].schema:
        if (t, key) == ("PutConfig", "value"):
            continue  # any canonical value
        for junk in (12345, None, 1.5):
            assert O.payload_problem(*with_(t, **{key: junk})) is not None, (key, junk)


def test_unknown_op_types_are_refused() -> None:
    for t in ("Nope", "setfield", "", None, 1, ["SetField"]):
        assert O.payload_problem(t, {}) is not None


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_payloads_are_refused(case: str) -> None:
    t, p = INVALID[case]
    problem = O.payload_problem(t, p)
    assert isinstance(problem, str) and problem
    with pytest.raises(ValidationError):
        O.payload_problem(t, p, raise_as=ValidationError)


@pytest.mark.parametrize("v", VALID_VALUES, ids=lambda v: f"{v[0]}")
def test_valid_values(v: list[Any]) -> None:
    assert values.value_problem(v) is None
    assert O.payload_problem(*with_("SetField", value=v)) is None
    assert O.payload_problem(*with_("SetEdgeProperty", value=v)) is None


@pytest.mark.parametrize("v", BAD_VALUES, ids=lambda v: repr(v)[:40])
def test_bad_values(v: Any) -> None:
    assert values.value_problem(v) is not None
    assert O.payload_problem(*with_("SetField", value=v)) is not None
    assert O.payload_problem(*with_("SetEdgeProperty", value=v)) is not None
    assert O.payload_problem(*with_("CreateEdge", props={"p": v})) is not None
    with pytest.raises(ValidationError):
        values.check_value(v)


def test_check_on_payload_objects() -> None:
    O.SetField(E, FACET, "f_x", ["integer", 1]).check()
    with pytest.raises(ValidationError):
        O.SetField(E, FACET, "f_x", ["integer", "x"]).check()
    with pytest.raises(ValidationError):
        O.MergeEntities(E2, E).check()
    with pytest.raises(ValidationError):
        O.DefineField(FACET, "f_x", "integer", "X", crdt=True).check()
    with pytest.raises(ValidationError):
        O.PutConfig("x", "k", float("nan")).check()
    # optional attributes left as None are omitted on the wire, never null
    assert "props" not in O.CreateEdge(NEW, "crm.owns", E, E2).to_wire()


@given(st.from_regex(r"[a-z][a-z0-9_]{0,47}", fullmatch=True))
def test_local_names_matching_the_regex_pass(name: str) -> None:
    expected_ok = name != "id"
    assert (O.payload_problem(*with_("DefineField", field=name)) is None) == expected_ok
    assert O.payload_problem(*with_("ClearEdgeProperty", key=name)) is None


@given(st.text(max_size=50))
def test_local_names_follow_the_regex_exactly(name: str) -> None:
    import re

    ok = re.fullmatch(r"[a-z][a-z0-9_]{0,47}", name) is not None and name.isascii()
    assert (O.payload_problem(*with_("ClearField", field=name)) is None) == ok


# --- seal / open ------------------------------------------------------------------------------

def sample_payloads() -> list[O.Payload]:
    e = ids.new_id()
    return [
        O.CreateEntity(e),
        O.AttachFacet(e, FACET),
        O.SetField(e, FACET, "f_title", ["text", "hello"]),
        O.SetField(e, FACET, "f_n", ["float", 2.5]),
    ]


def sealed(payloads: list[O.Payload] | None = None, **kw: Any) -> O.Bundle:
    payloads = payloads or sample_payloads()
    return O.seal(IDENT, WS, kw.pop("kind", "user"), payloads, kw.pop("hlcs", hlcs(len(payloads))),
                  kw.pop("causal_vc", {OTHER.actor: h(3)}), **kw)


def resigned(record: list[Any], ident: Identity = IDENT, **changes: Any) -> list[Any]:
    """The record with header keys changed (None removes one) and a fresh valid signature."""
    hdr = codec.decode(record[0])
    for k, v in changes.items():
        if v is None:
            hdr.pop(k, None)
        else:
            hdr[k] = v
    hb = codec.encode(hdr)
    return [hb, ident.sign(O.SIG_PREFIX + hb), list(record[2])]


def craft_raw(enc: list[bytes], bid: bytes, ident: Identity = IDENT, **header: Any
              ) -> list[Any]:
    """A validly signed record over raw body bytes (bypassing seal's checks)."""
    hdr: dict[str, Any] = {
        "v": 1, "ws": WS, "bundle": bid, "actor": ident.actor, "hlc": h(len(enc) - 1),
        "kind": "user", "n": len(enc),
        "ops": blake3(b"".join(O.op_hash(b) for b in enc)).digest(), "causal_vc": [], "mv": {},
    }
    hdr.update(header)
    hb = codec.encode(hdr)
    return [hb, ident.sign(O.SIG_PREFIX + hb), enc]


def craft(bodies: list[dict[str, Any]], **header: Any) -> list[Any]:
    """A validly signed record built from body maps."""
    return craft_raw([codec.encode(b) for b in bodies], bodies[0]["bundle"], **header)


def body(bid: bytes, i: int = 0, **over: Any) -> dict[str, Any]:
    b = {"v": 1, "ws": WS, "id": ids.new_id(), "hlc": h(i), "actor": IDENT.actor,
         "bundle": bid, "t": "CreateEntity", "p": {"e": ids.new_id()}}
    b.update(over)
    return b


def test_seal_open_round_trip() -> None:
    b = sealed(meta={"undoes": ids.new_id()}, mv={"crm": "1.0.0"})
    opened = O.open_bundle(b.record, WS)
    assert opened == b
    assert opened.header_hash == blake3(b.header).digest()
    assert [o.t for o in opened.ops] == ["CreateEntity", "AttachFacet", "SetField", "SetField"]
    assert opened.hlc == opened.ops[-1].hlc == h(3)
    assert opened.causal_vc == {OTHER.actor: h(3)}
    assert opened.mv == {"crm": "1.0.0"} and opened.meta is not None
    # the record survives the wire (canonical CBOR) unchanged
    wire = codec.decode(codec.encode(b.record))
    assert O.open_bundle(wire, WS) == b


def test_sealed_body_and_header_shape() -> None:
    b = sealed()
    hdr = codec.decode(b.header)
    assert set(hdr) == {"v", "ws", "bundle", "actor", "hlc", "kind", "n", "ops", "causal_vc",
                        "mv"}
    assert hdr["n"] == 4 and hdr["ws"] == WS and hdr["actor"] == IDENT.actor
    assert hdr["ops"] == blake3(b"".join(O.op_hash(x) for x in b.bodies)).digest()
    for i, raw in enumerate(b.bodies):
        d = codec.decode(raw)
        assert set(d) == {"v", "ws", "id", "hlc", "actor", "bundle", "t", "p"}
        assert d["bundle"] == b.bundle_id and d["hlc"] == h(i)
        assert ids.is_v7(d["id"])
        assert O.decode_stored(raw, b.ops[i].op_hash) == d


def test_every_op_type_seals_and_opens() -> None:
    payloads = [O.payload_from_wire(t, p) for t, p in VALID.items()]
    b = sealed(payloads)
    opened = O.open_bundle(b.record, WS)
    assert [o.p for o in opened.ops] == list(VALID.values())


def test_seal_refuses_bad_kind_and_counts() -> None:
    with pytest.raises(ValidationError):
        sealed(kind="bogus")
    with pytest.raises(ValidationError):
        O.seal(IDENT, WS, "user", [], [], {})
    with pytest.raises(ValidationError):
        O.seal(IDENT, WS, "user", sample_payloads(), hlcs(3), {})


@given(st.data())
def test_any_flipped_byte_is_an_integrity_error(data: st.DataObject) -> None:
    b = BUNDLE
    part = data.draw(st.sampled_from(["header", "sig", "body"]))
    rec = [b.header, b.sig, list(b.bodies)]
    if part == "body":
        j = data.draw(st.integers(0, len(b.bodies) - 1))
        target = rec[2][j]
    else:
        target = rec[0] if part == "header" else rec[1]
    i = data.draw(st.integers(0, len(target) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(target)
    flipped[i] ^= 1 << bit
    if part == "body":
        rec[2][j] = bytes(flipped)
    elif part == "header":
        rec[0] = bytes(flipped)
    else:
        rec[1] = bytes(flipped)
    with pytest.raises(IntegrityError) as ei:
        O.open_bundle(rec, WS)
    expected = "bad_digest" if part == "body" else "bad_signature"
    assert ei.value.code == expected


BUNDLE = sealed()


def test_tampering_codes() -> None:
    b = BUNDLE
    body0 = bytearray(b.bodies[0])
    body0[-1] ^= 0x01
    cases = {
        "flipped body": ([b.header, b.sig, [bytes(body0), *b.bodies[1:]]], "bad_digest"),
        "dropped body": ([b.header, b.sig, list(b.bodies[:-1])], "bad_digest"),
        "swapped bodies": ([b.header, b.sig, [b.bodies[1], b.bodies[0], *b.bodies[2:]]],
                           "bad_digest"),
        "extra body": ([b.header, b.sig, [*b.bodies, b.bodies[0]]], "bad_digest"),
        "flipped sig": ([b.header, bytes([b.sig[0] ^ 1]) + b.sig[1:], list(b.bodies)],
                        "bad_signature"),
        "short sig": ([b.header, b.sig[:63], list(b.bodies)], "bad_signature"),
        "other signer": ([b.header, OTHER.sign(O.SIG_PREFIX + b.header), list(b.bodies)],
                         "bad_signature"),
        "sig without prefix": ([b.header, IDENT.sign(b.header), list(b.bodies)],
                               "bad_signature"),
        "flipped header": ([bytes([*b.header[:-1], b.header[-1] ^ 1]), b.sig, list(b.bodies)],
                           "bad_signature"),
    }
    for name, (rec, code) in cases.items():
        with pytest.raises(IntegrityError) as ei:
            O.open_bundle(rec, WS)
        assert ei.value.code == code, name


def test_wrong_workspace_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        O.open_bundle(BUNDLE.record, WS2)
    # a header re-signed into another ws still carries bodies bound to the first: the body
    # check then fails as content (the author signed it), never as a success
    moved = resigned(BUNDLE.record, ws=WS2)
    with pytest.raises(ContentError):
        O.open_bundle(moved, WS2)


@pytest.mark.parametrize(
    "rec",
    [None, [], [b"", b""], "x", [b"\xa0", bytes(64), b"not a list"], [1, bytes(64), []],
     [b"\xa0", 1, []], [b"\xff", bytes(64), []], [codec.encode([1]), bytes(64), []]],
    ids=repr,
)
def test_malformed_records_are_integrity_errors(rec: Any) -> None:
    with pytest.raises(IntegrityError):
        O.open_bundle(rec, WS)


def test_header_problems_before_the_signature_are_integrity_errors() -> None:
    for changes in ({"zzz": 1}, {"actor": b"x" * 31}, {"bundle": b"short"}, {"ops": b"x"},
                    {"ws": None}):
        with pytest.raises(IntegrityError):
            O.open_bundle(resigned(BUNDLE.record, **changes), WS)


def test_signed_bad_payload_is_a_content_error_with_details() -> None:
    e = ids.new_id()
    bad = O.seal(IDENT, WS, "user", [O.CreateEntity(e), O.SetField(e, FACET, "f", [
        "integer", "x"])], hlcs(2), {})
    with pytest.raises(ContentError) as ei:
        O.open_bundle(bad.record, WS)
    err = ei.value
    assert err.code == "content"
    assert err.details["bundle_id"] == bad.bundle_id
    assert err.details["actor"] == IDENT.actor
    assert err.details["hlc"] == bad.hlc


@pytest.mark.parametrize(
    "order", [[1, 0], [0, 0], [2, 1, 3]], ids=["decreasing", "equal", "dip"]
)
def test_non_increasing_hlcs_within_a_bundle_are_content_errors(order: list[int]) -> None:
    payloads = [O.CreateEntity(ids.new_id()) for _ in order]
    b = O.seal(IDENT, WS, "user", payloads, [h(i) for i in order], {})
    with pytest.raises(ContentError):
        O.open_bundle(b.record, WS)


@pytest.mark.parametrize(
    "changes",
    [
        {"n": 5},
        {"n": 0},
        {"n": "4"},
        {"hlc": h(2)},
        {"hlc": h(9)},
        {"hlc": b"short"},
        {"hlc": 7},
        {"kind": "bogus"},
        {"kind": ["user"]},
        {"v": 2},
        {"v": None},
        {"causal_vc": [[b"x", h(1)]]},
        {"causal_vc": [[a, h(1)] for a in sorted([OTHER.actor, IDENT.actor], reverse=True)]},
        {"causal_vc": [[IDENT.actor, h(1)], [IDENT.actor, h(2)]]},
        {"causal_vc": None},
        {"mv": {"crm": 1}},
        {"mv": []},
        {"meta": {"big": "x" * (16 * 1024)}},
        {"meta": "x"},
    ],
    ids=repr,
)
def test_signed_header_content_problems_are_content_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ContentError) as ei:
        O.open_bundle(resigned(BUNDLE.record, **changes), WS)
    d = ei.value.details
    assert d["bundle_id"] == BUNDLE.bundle_id and d["actor"] == IDENT.actor
    # the reported hlc is the header's when well formed, else None (it may advance a VC)
    header_hlc = changes.get("hlc", BUNDLE.hlc)
    assert d["hlc"] == (header_hlc if hlc.is_hlc(header_hlc) else None)


def test_signed_body_problems_are_content_errors() -> None:
    bid = ids.new_id()
    cases = {
        "body wrong ws": craft([body(bid, ws=WS2)]),
        "body wrong actor": craft([body(bid, actor=OTHER.actor)]),
        "body wrong bundle": craft([body(bid), body(ids.new_id(), 1)]),
        "body wrong version": craft([body(bid, v=2)]),
        "body op id not v7": craft([body(bid, id=V4)]),
        "body unknown type": craft([body(bid, t="Frobnicate")]),
        "body bad payload": craft([body(bid, t="SetField", p={"e": E})]),
        "body extra key": craft([{**body(bid), "x": 1}]),
        "body missing key": craft([{k: v for k, v in body(bid).items() if k != "p"}]),
        "body bad hlc": craft([body(bid, hlc=b"short")], hlc=h(0)),
        "body not a map": craft_raw([codec.encode([1, 2])], bid),
        # non-canonical body bytes, signed by their author: settled, not an integrity failure
        "body trailing byte": craft_raw([codec.encode(body(bid)) + b"\x00"], bid),
        "body not cbor": craft_raw([b"\xff\xff"], bid),
    }
    for name, rec in cases.items():
        with pytest.raises(ContentError) as ei:
            O.open_bundle(rec, WS)
        assert ei.value.details["bundle_id"] == bid, name


def test_crafted_valid_record_opens() -> None:
    bid = ids.new_id()
    rec = craft([body(bid, 0), body(bid, 1)])
    b = O.open_bundle(rec, WS)
    assert b.bundle_id == bid and len(b.ops) == 2


def test_repeated_op_id_within_a_bundle_is_a_content_error() -> None:
    oid = ids.new_id()
    payloads = [O.CreateEntity(ids.new_id()), O.CreateEntity(ids.new_id())]
    b = O.seal(IDENT, WS, "user", payloads, hlcs(2), {}, op_ids=[oid, oid])
    with pytest.raises(ContentError):
        O.open_bundle(b.record, WS)


def test_seal_with_given_ids_and_verify_sig_off() -> None:
    oid, bid = ids.new_id(), ids.new_id()
    b = O.seal(IDENT, WS, "user", [O.CreateEntity(ids.new_id())], hlcs(1), {}, op_ids=[oid],
               bundle_id=bid)
    assert b.bundle_id == bid and b.ops[0].op_id == oid
    forged = [b.header, bytes(64), list(b.bodies)]
    with pytest.raises(IntegrityError):
        O.open_bundle(forged, WS)
    assert O.open_bundle(forged, WS, verify_sig=False).bundle_id == bid


def test_stored_body_corruption_is_caught_by_op_hash() -> None:
    b = BUNDLE
    raw = bytearray(b.bodies[2])
    raw[5] ^= 0x40
    with pytest.raises(IntegrityError) as ei:
        O.decode_stored(bytes(raw), b.ops[2].op_hash)
    assert ei.value.code == "bad_digest"


def test_stamp_and_target() -> None:
    b = BUNDLE
    op = b.ops[0]
    assert op.stamp == op.hlc + op.op_id and len(op.stamp) == 28
    assert b.first_stamp == op.stamp
    assert O.target_of("SetField", VALID["SetField"]) == E
    assert O.target_of("DeleteEdge", VALID["DeleteEdge"]) == EDGE
    assert O.target_of("MergeEntities", VALID["MergeEntities"]) == E2
    assert O.target_of("PutConfig", VALID["PutConfig"]) is None


def test_payload_objects_are_frozen() -> None:
    p = O.CreateEntity(E)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.e = E2  # type: ignore[misc]


json_trees = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.binary(max_size=33),
              st.text(max_size=10), st.floats(allow_nan=False, allow_infinity=False)),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                               max_size=4),
    max_leaves=12,
)


@given(st.sampled_from(sorted(VALID)), st.data())
def test_payload_problem_never_raises_on_decoded_junk(t: str, data: st.DataObject) -> None:
    """Admission must judge any decodable payload, never crash (it runs on foreign bytes)."""
    p = copy.deepcopy(VALID[t])
    keys = sorted(O.OP_TYPES[t].schema)
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        p[key] = data.draw(json_trees)
    problem = O.payload_problem(t, p)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        codec.encode(p)  # an admitted payload is always encodable


@given(json_trees)
def test_payload_problem_never_raises_on_junk_payloads(p: Any) -> None:
    for t in ("SetField", "DefineField", "RebalanceOrderedEdges", "PutConfig"):
        problem = O.payload_problem(t, p)
        assert problem is None or isinstance(problem, str)
