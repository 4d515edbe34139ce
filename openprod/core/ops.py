"""Operation types, the op envelope and the signed bundle (spec 01 §3–§5).

Each V1 op type is a frozen attrs class whose attributes are its wire keys. `payload_from_wire`
validates a received payload completely (admission); `to_wire` gives the map that goes in the
body. A bundle is `[header, sig, [body…]]`: one Ed25519 signature over the header, which commits
to every body's BLAKE3 `op_hash` in order. `seal` builds one; `open_bundle` checks one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
from blake3 import blake3

from openprod.core import codec, identity, ids, values
from openprod.core import hlc as hlcmod
from openprod.core import vclock as vcmod
from openprod.core.errors import (
    CodecError,
    ContentError,
    IntegrityError,
    OpenprodError,
    ValidationError,
)
from openprod.engine import fracindex

VERSION = 1
SIG_PREFIX = b"openprod/bundle/v1\n"
MAX_OPS = 100_000
MAX_BUNDLE = 64 * 1024 * 1024
MAX_BODY = 4 * 1024 * 1024
MAX_META = 16 * 1024
MAX_CONFIG = 256 * 1024
MAX_DELTA = 1 << 20
MAX_LABEL = 200
BUNDLE_KINDS = frozenset(
    ["user", "script", "import", "schema", "undo", "redo", "resolution", "overlay_commit"]
)
OPT_KEYS = frozenset(["choices", "required", "default", "hidden", "mode", "ref", "ref_table"])

Check = Callable[[Any], str | None]


# --- field checks: each returns None if fine, else the problem ------------------------------

def _id(x: Any) -> str | None:
    return None if ids.is_id(x) else "must be a 16-byte id"


def _new_id(x: Any) -> str | None:
    return None if ids.is_v7(x) else "must be a new UUIDv7 id"


def _facet(x: Any) -> str | None:
    return None if values.is_facet(x) else "must be a table id module.Table"


def _local(x: Any) -> str | None:
    return None if values.is_local_name(x) else "must match ^[a-z][a-z0-9_]{0,47}$"


def _edge_type(x: Any) -> str | None:
    return None if values.is_edge_type(x) else "must be an edge type module.name"


def _text(limit: int) -> Check:
    def check(x: Any) -> str | None:
        if type(x) is not str or not x:
            return "must be non-empty text"
        return None if len(x) <= limit else f"must be at most {limit} characters"
    return check


def _bool(x: Any) -> str | None:
    return None if type(x) is bool else "must be true or false"


def _bytes(n: int) -> Check:
    def check(x: Any) -> str | None:
        return None if type(x) is bytes and len(x) == n else f"must be {n} bytes"
    return check


def _sorted_unique(item: Check) -> Check:
    def check(x: Any) -> str | None:
        if type(x) is not list:
            return "must be an array"
        for i, v in enumerate(x):
            p = item(v)
            if p is not None:
                return f"item {i} {p}"
            if i and not x[i - 1] < v:
                return "must be sorted and unique"
        return None
    return check


def _value(x: Any) -> str | None:
    return values.value_problem(x)


def _delta(x: Any) -> str | None:
    if type(x) is not bytes or not x:
        return "must be non-empty bytes"
    return None if len(x) <= MAX_DELTA else "exceeds 1 MiB"


def _index(x: Any) -> str | None:
    return None if fracindex.is_valid_key(x) else "must be a fractional index key"


def _props(x: Any) -> str | None:
    if type(x) is not dict:
        return "must be a map"
    for k, v in x.items():
        if not values.is_local_name(k):
            return f"property name {k!r} is invalid"
        p = values.value_problem(v)
        if p:
            return f"property {k}: {p}"
    return None


def _prop_decls(x: Any) -> str | None:
    if type(x) is not dict:
        return "must be a map of property name to field type"
    for k, v in x.items():
        if not values.is_local_name(k) or type(v) is not str or v not in values.FTYPES:
            return f"property {k!r} must map a valid name to a field type"
    return None


def _ftype(x: Any) -> str | None:
    if type(x) is str and x in values.FTYPES:
        return None
    return f"must be one of {sorted(values.FTYPES)}"


def _opts(x: Any) -> str | None:
    if type(x) is not dict:
        return "must be a map"
    unknown = set(x) - OPT_KEYS
    if unknown:
        return f"unknown option(s) {sorted(unknown)}"
    ch = x.get("choices")
    if ch is not None:
        if type(ch) is not list or not ch:
            return "choices must be a non-empty array"
        keys = []
        for c in ch:
            if type(c) is str and c:
                keys.append(c)
            elif type(c) is list and len(c) == 2 and all(type(p) is str and p for p in c):
                keys.append(c[0])
            else:
                return "each choice must be a key or [key, label]"
        if len(set(keys)) != len(keys):
            return "choice keys must be unique"
    for flag in ("required", "hidden"):
        if flag in x and type(x[flag]) is not bool:
            return f"{flag} must be true or false"
    if "mode" in x and x["mode"] not in ("discrete", "reference"):
        return "mode must be discrete or reference"
    if "ref" in x and not values.is_field_key(x["ref"]):
        return "ref must be a field key"
    if "ref_table" in x and not values.is_facet(x["ref_table"]):
        return "ref_table must be a table id"
    if "default" in x:
        return values.value_problem(x["default"])
    return None


def _order(x: Any) -> str | None:
    if type(x) is not list or not x:
        return "must be a non-empty array of [edge, index]"
    seen: set[bytes] = set()
    for pair in x:
        if type(pair) is not list or len(pair) != 2 or _id(pair[0]) or _index(pair[1]):
            return "each entry must be [edge id, index key]"
        if pair[0] in seen:
            return "edges must be unique"
        seen.add(pair[0])
    keys = [p[1] for p in x]
    if any(not a < b for a, b in itertools.pairwise(keys)):
        return "indexes must be strictly increasing"
    return None


def _any_config(x: Any) -> str | None:
    try:
        size = len(codec.encode(x))
    except CodecError as exc:
        return f"is not a canonical CBOR value ({exc})"
    return None if size <= MAX_CONFIG else "exceeds 256 KiB"


def _forked_from(x: Any) -> str | None:
    if type(x) is not dict or set(x) != {"ws", "genesis_hash", "oplog_digest"}:
        return "must be {ws, genesis_hash, oplog_digest}"
    if _id(x["ws"]) or _bytes(32)(x["genesis_hash"]) or _bytes(32)(x["oplog_digest"]):
        return "has malformed members"
    return None


# --- op types -------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Payload]] = {}


class Payload:
    """Base of the op payload classes; subclasses are frozen attrs classes."""

    t: ClassVar[str]
    # wire key -> (check, required)
    schema: ClassVar[Mapping[str, tuple[Check, bool]]]
    structural: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "t" in cls.__dict__:
            _REGISTRY[cls.t] = cls

    def to_wire(self) -> dict[str, Any]:
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(
                a.name for a in attrs.fields(type(self))  # type: ignore[arg-type]
            )
        out = {}
        for k in names:
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out

    def check(self) -> None:
        """Validate like admission does; raises ValidationError."""
        payload_problem(self.t, self.to_wire(), raise_as=ValidationError, obj=self)

    def extra_check(self) -> str | None:
        return None


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _optional(**kw: Any) -> Any:
    return attrs.field(default=None, kw_only=True, **kw)


_WRITE_TAGS: dict[str, tuple[Check, bool]] = {
    "resolves": (_sorted_unique(_id), False),
    "conflict": (_id, False),
}


@attrs.frozen
class CreateEntity(Payload):
    t = "CreateEntity"
    schema = {"e": (_new_id, True)}
    e: bytes


@attrs.frozen
class DeleteEntity(Payload):
    t = "DeleteEntity"
    schema = {"e": (_id, True), "cascade": (_sorted_unique(_id), True), **_WRITE_TAGS}
    e: bytes
    cascade: list[bytes] = attrs.field(factory=list)
    resolves: list[bytes] | None = _optional()
    conflict: bytes | None = _optional()


@attrs.frozen
class RestoreEntity(Payload):
    t = "RestoreEntity"
    schema = {"e": (_id, True), **_WRITE_TAGS}
    e: bytes
    resolves: list[bytes] | None = _optional()
    conflict: bytes | None = _optional()


@attrs.frozen
class AttachFacet(Payload):
    t = "AttachFacet"
    schema = {"e": (_id, True), "facet": (_facet, True)}
    e: bytes
    facet: str


@attrs.frozen
class DetachFacet(Payload):
    t = "DetachFacet"
    schema = {"e": (_id, True), "facet": (_facet, True)}
    e: bytes
    facet: str


@attrs.frozen
class SetField(Payload):
    t = "SetField"
    schema = {
        "e": (_id, True), "facet": (_facet, True), "field": (_local, True),
        "value": (_value, True), **_WRITE_TAGS,
    }
    e: bytes
    facet: str
    field: str
    value: list[Any]
    resolves: list[bytes] | None = _optional()
    conflict: bytes | None = _optional()


@attrs.frozen
class ClearField(Payload):
    t = "ClearField"
    schema = {"e": (_id, True), "facet": (_facet, True), "field": (_local, True), **_WRITE_TAGS}
    e: bytes
    facet: str
    field: str
    resolves: list[bytes] | None = _optional()
    conflict: bytes | None = _optional()


@attrs.frozen
class SetCRDTField(Payload):
    t = "SetCRDTField"
    schema = {
        "e": (_id, True), "facet": (_facet, True), "field": (_local, True),
        "delta": (_delta, True),
    }
    e: bytes
    facet: str
    field: str
    delta: bytes


@attrs.frozen
class CreateEdge(Payload):
    t = "CreateEdge"
    schema = {
        "edge": (_new_id, True), "type": (_edge_type, True), "src": (_id, True),
        "dst": (_id, True), "props": (_props, False),
    }
    edge: bytes
    type: str
    src: bytes
    dst: bytes
    props: dict[str, Any] | None = _optional()


@attrs.frozen
class DeleteEdge(Payload):
    t = "DeleteEdge"
    schema = {"edge": (_id, True)}
    edge: bytes


@attrs.frozen
class RestoreEdge(Payload):
    t = "RestoreEdge"
    schema = {"edge": (_id, True)}
    edge: bytes


@attrs.frozen
class SetEdgeProperty(Payload):
    t = "SetEdgeProperty"
    schema = {"edge": (_id, True), "key": (_local, True), "value": (_value, True), **_WRITE_TAGS}
    edge: bytes
    key: str
    value: list[Any]
    resolves: list[bytes] | None = _optional()
    conflict: bytes | None = _optional()


@attrs.frozen
class ClearEdgeProperty(Payload):
    t = "ClearEdgeProperty"
    schema = {"edge": (_id, True), "key": (_local, True), **_WRITE_TAGS}
    edge: bytes
    key: str
    resolves: list[bytes] | None = _optional()
    conflict: bytes | None = _optional()


@attrs.frozen
class CreateOrderedEdge(Payload):
    t = "CreateOrderedEdge"
    schema = {
        "edge": (_new_id, True), "type": (_edge_type, True), "src": (_id, True),
        "dst": (_id, True), "index": (_index, True), "props": (_props, False),
    }
    edge: bytes
    type: str
    src: bytes
    dst: bytes
    index: str
    props: dict[str, Any] | None = _optional()


@attrs.frozen
class MoveOrderedEdge(Payload):
    t = "MoveOrderedEdge"
    schema = {"edge": (_id, True), "index": (_index, True)}
    edge: bytes
    index: str


@attrs.frozen
class RebalanceOrderedEdges(Payload):
    t = "RebalanceOrderedEdges"
    schema = {"parent": (_id, True), "type": (_edge_type, True), "order": (_order, True)}
    parent: bytes
    type: str
    order: list[list[Any]]


@attrs.frozen
class DefineTable(Payload):
    t = "DefineTable"
    schema = {"facet": (_facet, True), "label": (_text(MAX_LABEL), True)}
    facet: str
    label: str


@attrs.frozen
class DefineField(Payload):
    t = "DefineField"
    structural = True
    schema = {
        "facet": (_facet, True), "field": (_local, True), "ftype": (_ftype, True),
        "crdt": (_bool, False), "label": (_text(MAX_LABEL), True), "opts": (_opts, False),
    }
    facet: str
    field: str
    ftype: str
    label: str
    crdt: bool | None = _optional()
    opts: dict[str, Any] | None = _optional()

    def extra_check(self) -> str | None:
        if self.crdt and self.ftype != "text":
            return "only text fields can be CRDT"
        if self.field == "id":
            return "field name 'id' is reserved"
        return None


@attrs.frozen
class DefineEdgeType(Payload):
    t = "DefineEdgeType"
    schema = {
        "type": (_edge_type, True), "ordered": (_bool, True),
        "label": (_text(MAX_LABEL), True), "props": (_prop_decls, False),
    }
    type: str
    ordered: bool
    label: str
    props: dict[str, str] | None = _optional()


class _MappingPair(Payload):
    schema = {
        "facet_a": (_facet, True), "field_a": (_local, True),
        "facet_b": (_facet, True), "field_b": (_local, True),
    }
    structural = True
    facet_a: str
    field_a: str
    facet_b: str
    field_b: str

    def extra_check(self) -> str | None:
        a = values.field_key(self.facet_a, self.field_a)
        b = values.field_key(self.facet_b, self.field_b)
        return None if a < b else "the pair must be ordered key_a < key_b"

    @property
    def keys(self) -> tuple[str, str]:
        return (values.field_key(self.facet_a, self.field_a),
                values.field_key(self.facet_b, self.field_b))


@attrs.frozen
class ConfirmFieldMapping(_MappingPair):
    t = "ConfirmFieldMapping"
    facet_a: str
    field_a: str
    facet_b: str
    field_b: str


@attrs.frozen
class RejectFieldMapping(_MappingPair):
    t = "RejectFieldMapping"
    facet_a: str
    field_a: str
    facet_b: str
    field_b: str


@attrs.frozen
class MergeEntities(Payload):
    t = "MergeEntities"
    structural = True
    schema = {"survivor": (_id, True), "absorbed": (_id, True)}
    survivor: bytes
    absorbed: bytes

    def extra_check(self) -> str | None:
        return None if self.survivor < self.absorbed else "survivor must be the smaller id"


@attrs.frozen
class SplitEntity(Payload):
    t = "SplitEntity"
    structural = True
    schema = {
        "source": (_id, True), "new_entity": (_new_id, True),
        "facets": (_sorted_unique(_facet), True),
    }
    source: bytes
    new_entity: bytes
    facets: list[str]

    def extra_check(self) -> str | None:
        return None if self.facets else "facets must not be empty"


@attrs.frozen
class CreateWorkspace(Payload):
    t = "CreateWorkspace"
    schema = {
        "name": (_text(MAX_LABEL), True), "owner": (_bytes(32), True),
        "recovery_pub": (_bytes(32), True), "forked_from": (_forked_from, False),
    }
    name: str
    owner: bytes
    recovery_pub: bytes
    forked_from: dict[str, Any] | None = _optional()


@attrs.frozen
class RecoverOwnership(Payload):
    t = "RecoverOwnership"
    schema = {
        "new_owner": (_bytes(32), True), "new_recovery_pub": (_bytes(32), True),
        "recovery_sig": (_bytes(64), True),
    }
    new_owner: bytes
    new_recovery_pub: bytes
    recovery_sig: bytes


@attrs.frozen
class PutConfig(Payload):
    t = "PutConfig"
    schema = {"ns": (_local, True), "key": (_text(256), True), "value": (_any_config, True)}
    ns: str
    key: str
    value: Any


@attrs.frozen
class DeleteConfig(Payload):
    t = "DeleteConfig"
    schema = {"ns": (_local, True), "key": (_text(256), True)}
    ns: str
    key: str


OP_TYPES: Mapping[str, type[Payload]] = _REGISTRY
STRUCTURAL = frozenset(t for t, c in _REGISTRY.items() if c.structural)
WRITE_TYPES = frozenset(["SetField", "ClearField"])
PROP_WRITE_TYPES = frozenset(["SetEdgeProperty", "ClearEdgeProperty"])
EXISTENCE_TYPES = frozenset(["CreateEntity", "DeleteEntity", "RestoreEntity"])


def payload_problem(
    t: Any, p: Any, raise_as: type[OpenprodError] | None = None, obj: Payload | None = None
) -> str | None:
    """Why (t, p) is not an admissible payload, or None. With raise_as, raise instead."""
    problem = _payload_problem(t, p, obj)
    if problem is not None and raise_as is not None:
        raise raise_as(f"{t}: {problem}", op_type=str(t))
    return problem


def _payload_problem(t: Any, p: Any, obj: Payload | None = None) -> str | None:
    cls = _REGISTRY.get(t) if type(t) is str else None
    if cls is None:
        return f"unknown op type {t!r}"
    if type(p) is not dict:
        return "payload must be a map"
    schema = cls.schema
    for k in p:
        if k not in schema:
            return f"unknown key {k!r}"
    for k, (check, required) in schema.items():
        if k not in p:
            if required:
                return f"missing {k!r}"
            continue
        problem = check(p[k])
        if problem is not None:
            return f"{k} {problem}"
    return (obj if obj is not None else payload_from_wire(t, p)).extra_check()


def payload_from_wire(t: str, p: Mapping[str, Any]) -> Payload:
    """Build the payload object (no validation; use payload_problem first for foreign data)."""
    return _REGISTRY[t](**p)


def target_of(t: str, p: Mapping[str, Any]) -> bytes | None:
    """The entity or edge an op is about (the `entity` column of the ops table)."""
    for k in ("e", "edge", "absorbed", "source", "parent"):
        v = p.get(k)
        if v is not None:
            return bytes(v)
    return None


# --- envelope and bundle --------------------------------------------------------------------

def op_hash(body: bytes) -> bytes:
    return blake3(body).digest()


@attrs.frozen
class Op:
    """One decoded, verified op of a bundle."""

    op_id: bytes
    hlc: bytes
    actor: bytes
    bundle: bytes
    t: str
    p: dict[str, Any]
    body: bytes
    op_hash: bytes

    @property
    def stamp(self) -> bytes:
        return self.hlc + self.op_id


@attrs.frozen
class Bundle:
    """A whole signed bundle, verified; `record` is its exact wire form."""

    header: bytes
    sig: bytes
    bodies: tuple[bytes, ...]
    bundle_id: bytes
    ws: bytes
    actor: bytes
    hlc: bytes
    kind: str
    causal_vc: dict[bytes, bytes]
    mv: dict[str, str]
    meta: dict[str, Any] | None
    header_hash: bytes
    ops: tuple[Op, ...]

    @property
    def record(self) -> list[Any]:
        return [self.header, self.sig, list(self.bodies)]

    @property
    def first_stamp(self) -> bytes:
        return self.ops[0].stamp


def seal(
    ident: identity.Identity,
    ws: bytes,
    kind: str,
    payloads: Sequence[Payload],
    hlcs: Sequence[bytes],
    causal_vc: Mapping[bytes, bytes],
    *,
    mv: Mapping[str, str] | None = None,
    meta: Mapping[str, Any] | None = None,
    bundle_id: bytes | None = None,
    op_ids: Sequence[bytes] | None = None,
) -> Bundle:
    """Build and sign a bundle from already-validated payloads (one HLC per op).

    Does not validate payloads (callers run `Payload.check`), so tests can forge bad content.
    """
    if kind not in BUNDLE_KINDS:
        raise ValidationError(f"unknown bundle kind {kind!r}")
    n = len(payloads)
    if not 1 <= n <= MAX_OPS or len(hlcs) != n:
        raise ValidationError(f"a bundle holds 1..{MAX_OPS} ops, one HLC each")
    bid = bundle_id or ids.new_id()
    actor = ident.actor
    bodies: list[bytes] = []
    ops: list[Op] = []
    hashes: list[bytes] = []
    for i, pl in enumerate(payloads):
        oid = op_ids[i] if op_ids is not None else ids.new_id()
        p = pl.to_wire()
        # Payloads come checked (Payload.check) from the engine; tests seal bad ones on purpose
        # to exercise admission, which re-checks every received body strictly.
        body = codec.encode_trusted({
            "v": VERSION, "ws": ws, "id": oid, "hlc": hlcs[i], "actor": actor,
            "bundle": bid, "t": pl.t, "p": p,
        })
        if len(body) > MAX_BODY:
            raise ValidationError("an op body exceeds 4 MiB", op_type=pl.t)
        h = op_hash(body)
        bodies.append(body)
        hashes.append(h)
        ops.append(Op(oid, hlcs[i], actor, bid, pl.t, p, body, h))
    header_map: dict[str, Any] = {
        "v": VERSION, "ws": ws, "bundle": bid, "actor": actor, "hlc": hlcs[-1], "kind": kind,
        "n": n, "ops": blake3(b"".join(hashes)).digest(),
        "causal_vc": vcmod.to_wire(causal_vc), "mv": dict(mv or {}),
    }
    if meta:
        header_map["meta"] = dict(meta)
    header = codec.encode(header_map)
    if meta and len(codec.encode(header_map["meta"])) > MAX_META:
        raise ValidationError("bundle meta exceeds 16 KiB")
    sig = ident.sign(SIG_PREFIX + header)
    return Bundle(
        header, sig, tuple(bodies), bid, ws, actor, hlcs[-1], kind, dict(causal_vc),
        dict(mv or {}), dict(meta) if meta else None, blake3(header).digest(), tuple(ops),
    )


_HEADER_KEYS = frozenset(
    ["v", "ws", "bundle", "actor", "hlc", "kind", "n", "ops", "causal_vc", "mv", "meta"]
)
_BODY_KEYS = frozenset(["v", "ws", "id", "hlc", "actor", "bundle", "t", "p"])


def _integrity(msg: str, **d: Any) -> IntegrityError:
    return IntegrityError(msg, **d)


@attrs.frozen
class Envelope:
    """What can be read off a bundle record before its content is judged."""

    header: dict[str, Any]
    header_hash: bytes


def open_bundle(record: Any, ws: bytes, *, verify_sig: bool = True) -> Bundle:
    """Check a received `[header, sig, [body…]]` record completely.

    IntegrityError (not settled): undecodable header, wrong ws, signature or digests.
    ContentError (settled, carries bundle_id/actor/hlc): valid signature, bad payload.
    """
    if type(record) is not list or len(record) != 3:
        raise _integrity("a bundle record is [header, sig, [body…]]")
    header_b, sig, bodies = record
    if type(header_b) is not bytes or type(sig) is not bytes or type(bodies) is not list:
        raise _integrity("a bundle record is [header, sig, [body…]]")
    try:
        h = codec.decode(header_b, max_size=MAX_META + 64 * 1024 + 40 * 1024 * 1024)
    except CodecError as exc:
        raise _integrity(f"undecodable bundle header: {exc}") from exc
    if type(h) is not dict or set(h) - _HEADER_KEYS:
        raise _integrity("bundle header has unknown keys")
    actor: Any = h.get("actor")
    bid: Any = h.get("bundle")
    if h.get("ws") != ws:
        raise _integrity("bundle belongs to another workspace")
    if type(actor) is not bytes or len(actor) != 32 or not ids.is_id(bid):
        raise _integrity("bundle header lacks a valid actor or bundle id")
    if type(h.get("ops")) is not bytes or len(h["ops"]) != 32:
        raise _integrity("bundle header lacks its ops digest")
    if len(sig) != 64 or (verify_sig and not identity.verify(actor, SIG_PREFIX + header_b, sig)):
        raise _integrity("bad bundle signature", bundle_id=ids.to_text(bid))
    hashes = []
    total = len(header_b)
    for b in bodies:
        if type(b) is not bytes:
            raise _integrity("bundle body is not bytes")
        total += len(b)
        hashes.append(op_hash(b))
    if blake3(b"".join(hashes)).digest() != h["ops"]:
        raise IntegrityError(
            "op bodies do not match the signed digest", bundle_id=ids.to_text(bid)
        ).with_code("bad_digest")
    # From here on the bytes are exactly what the author signed: failures are settled.
    return _judge_content(h, header_b, sig, bodies, hashes, ws, total)


def _content(h: dict[str, Any], msg: str) -> ContentError:
    # a malformed hlc is not reported: it must never reach the vector clock when settled
    hlc = h.get("hlc") if hlcmod.is_hlc(h.get("hlc")) else None
    return ContentError(msg, bundle_id=h["bundle"], actor=h["actor"], hlc=hlc)


def _judge_content(
    h: dict[str, Any], header_b: bytes, sig: bytes, bodies: list[bytes], hashes: list[bytes],
    ws: bytes, total: int,
) -> Bundle:
    if total > MAX_BUNDLE:
        raise _content(h, "bundle exceeds 64 MiB")
    if h.get("v") != VERSION:
        raise _content(h, "unknown bundle version")
    kind: Any = h.get("kind")
    n: Any = h.get("n")
    bh: Any = h.get("hlc")
    if type(kind) is not str or kind not in BUNDLE_KINDS:
        raise _content(h, f"unknown bundle kind {kind!r}")
    if type(n) is not int or not 1 <= n <= MAX_OPS or n != len(bodies):
        raise _content(h, "bundle op count does not match")
    if not hlcmod.is_hlc(bh):
        raise _content(h, "bundle hlc malformed")
    try:
        causal_vc = vcmod.from_wire(h.get("causal_vc"))
    except CodecError as exc:
        raise _content(h, f"causal_vc: {exc}") from exc
    mv = h.get("mv")
    if type(mv) is not dict or any(type(v) is not str for v in mv.values()):
        raise _content(h, "mv must map module to version text")
    meta = h.get("meta")
    if meta is not None and (type(meta) is not dict or len(codec.encode(meta)) > MAX_META):
        raise _content(h, "meta must be a map of at most 16 KiB")
    ops: list[Op] = []
    prev: bytes | None = None
    for i, body in enumerate(bodies):
        try:
            if len(body) > MAX_BODY:
                raise CodecError("op body exceeds 4 MiB")
            b = codec.decode(body, max_size=MAX_BODY)
        except CodecError as exc:
            raise _content(h, f"op {i}: {exc}") from exc
        if type(b) is not dict or set(b) != _BODY_KEYS:
            raise _content(h, f"op {i}: body must have exactly {sorted(_BODY_KEYS)}")
        if b["v"] != VERSION or b["ws"] != ws or b["actor"] != h["actor"] or b["bundle"] != h[
            "bundle"
        ]:
            raise _content(h, f"op {i}: envelope does not match its bundle")
        if not ids.is_v7(b["id"]):
            raise _content(h, f"op {i}: op id must be a UUIDv7")
        oh = b["hlc"]
        if not hlcmod.is_hlc(oh) or (prev is not None and not prev < oh):
            raise _content(h, f"op {i}: HLCs must strictly increase within a bundle")
        prev = oh
        problem = payload_problem(b["t"], b["p"])
        if problem is not None:
            raise _content(h, f"op {i} ({b['t']}): {problem}")
        ops.append(Op(b["id"], oh, b["actor"], b["bundle"], b["t"], b["p"], body, hashes[i]))
    if prev != bh:
        raise _content(h, "header hlc must equal the last op's")
    if len({o.op_id for o in ops}) != len(ops):
        raise _content(h, "op ids repeat within the bundle")
    return Bundle(
        header_b, sig, tuple(bodies), h["bundle"], ws, h["actor"], bh, kind, causal_vc,
        dict(mv), meta, blake3(header_b).digest(), tuple(ops),
    )


def decode_stored(body: bytes, expected_hash: bytes) -> dict[str, Any]:
    """Decode a stored body after re-checking its op_hash (spec 01 §3); IntegrityError if bad."""
    if op_hash(body) != expected_hash:
        raise IntegrityError("stored op body does not match its op_hash").with_code("bad_digest")
    d: dict[str, Any] = codec.decode(body, max_size=MAX_BODY)
    return d
