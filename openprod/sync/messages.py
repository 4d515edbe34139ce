"""The wire messages of the peer protocol (spec 03 §5) and their strict decoder.

Each message is one binary WebSocket frame holding one canonical CBOR map with a `t` key. Every
message type is a frozen attrs class whose attributes are exactly its wire keys; optional keys
are `None` when absent and omitted on the wire. `decode` refuses anything that is not exactly one
known message: an unknown `t`, an unknown or missing key, a wrong type, non-canonical bytes, an
unsorted vector clock → `ProtocolError` with close code 4007; a frame over `max_size` → 1009.
Before authentication only `hello`/`auth`/`list` are accepted, each at most 4 KiB.

Bundle records travel as `[header, sig, [body…]]` byte strings and are only shape-checked here;
opening and verifying them is the receipt pipeline's job (§6.4).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from openprod.core import codec, ids
from openprod.core import vclock as vcmod
from openprod.core.errors import CodecError, OpenprodError

# --- close codes (WebSocket close frames) ------------------------------------------------------

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_WRONG_WORKSPACE = 4001
CLOSE_BAD_AUTH = 4002
CLOSE_NO_COMMON_VERSION = 4003
CLOSE_JOIN_REFUSED = 4004
CLOSE_DUPLICATE = 4005
CLOSE_SELF = 4006
CLOSE_PROTOCOL = 4007
CLOSE_INVALID_SIGNED_DATA = 4008
CLOSE_TOO_SLOW = 4009
CLOSE_SHUTDOWN = 4010

# --- reject codes (in `ack.rejected`) ----------------------------------------------------------

REJECT_BAD_SIGNATURE = "bad_signature"
REJECT_BAD_DIGEST = "bad_digest"
REJECT_MALFORMED = "malformed"
REJECT_CONTENT = "content"
REJECT_FUTURE_HLC = "future_hlc"
REJECT_GAP = "gap"
REJECT_EQUIVOCATION = "equivocation"
REJECT_CODES = frozenset([
    REJECT_BAD_SIGNATURE, REJECT_BAD_DIGEST, REJECT_MALFORMED, REJECT_CONTENT,
    REJECT_FUTURE_HLC, REJECT_GAP, REJECT_EQUIVOCATION,
])

# --- limits ------------------------------------------------------------------------------------

SUBPROTOCOL = "openprod-sync.1"
PROTO_VERSION = 1
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_PRE_AUTH_SIZE = 4 * 1024
MAX_BLOB_QUERY = 64
MAX_CHUNK = 256 * 1024
MAX_TEXT = 256
NONCE_SIZE = 32
ACTOR_SIZE = 32
HASH_SIZE = 32
SIG_SIZE = 64
MAX_DIGEST = 64
JOIN_MODES = frozenset(["open", "key"])
PRE_AUTH = frozenset(["hello", "auth", "list"])

_GH = re.compile(r"\A[0-9a-f]{16}\Z")


class ProtocolError(OpenprodError):
    """A peer broke the protocol; the link closes with `close_code`."""

    code = "protocol"

    def __init__(self, close_code: int, message: str, **details: Any) -> None:
        super().__init__(message, close_code=close_code, **details)
        self.close_code = close_code


class _Bad(Exception):
    """A field value failed its check (internal; becomes ProtocolError 4007)."""


Parse = Callable[[Any], Any]


# --- field parsers: return the Python value or raise _Bad ---------------------------------------

def _uint(x: Any) -> int:
    if type(x) is not int or x < 0:
        raise _Bad("must be a non-negative integer")
    return x


def _bool(x: Any) -> bool:
    if type(x) is not bool:
        raise _Bad("must be true or false")
    return x


def _text(x: Any) -> str:
    if type(x) is not str or len(x) > MAX_TEXT:
        raise _Bad(f"must be text of at most {MAX_TEXT} characters")
    return x


def _nbytes(n: int) -> Parse:
    def parse(x: Any) -> bytes:
        if type(x) is not bytes or len(x) != n:
            raise _Bad(f"must be {n} bytes")
        return x
    return parse


def _digest(x: Any) -> bytes:
    if type(x) is not bytes or not 1 <= len(x) <= MAX_DIGEST:
        raise _Bad(f"must be 1 to {MAX_DIGEST} bytes")
    return x


def _id(x: Any) -> bytes:
    if not ids.is_id(x):
        raise _Bad("must be a 16-byte id")
    assert isinstance(x, bytes)
    return x


def _vc(x: Any) -> vcmod.VClock:
    try:
        return vcmod.from_wire(x)
    except CodecError as exc:
        raise _Bad(exc.message) from exc


def _list(item: Parse, max_len: int | None = None) -> Parse:
    def parse(x: Any) -> list[Any]:
        if type(x) is not list:
            raise _Bad("must be an array")
        if max_len is not None and len(x) > max_len:
            raise _Bad(f"must have at most {max_len} items")
        return [item(v) for v in x]
    return parse


def _body(x: Any) -> bytes:
    if type(x) is not bytes:
        raise _Bad("an op body must be bytes")
    return x


def _record(x: Any) -> list[Any]:
    if (
        type(x) is not list or len(x) != 3 or type(x[0]) is not bytes
        or type(x[1]) is not bytes or type(x[2]) is not list
        or any(type(b) is not bytes for b in x[2])
    ):
        raise _Bad("a bundle record is [header, sig, [body…]] byte strings")
    return x


def _rejected(x: Any) -> list[Any]:
    if type(x) is not list or len(x) != 2 or not ids.is_id(x[0]) or x[1] not in REJECT_CODES:
        raise _Bad("a rejection is [bundle_id, reject code]")
    return x


def _have(x: Any) -> list[Any]:
    if type(x) is not list or len(x) != 2:
        raise _Bad("a held blob is [hash, size]")
    return [_nbytes(HASH_SIZE)(x[0]), _uint(x[1])]


def _directory_entry(x: Any) -> dict[str, Any]:
    if type(x) is not dict or set(x) != {"ws", "name", "join", "gh"}:
        raise _Bad("a directory entry is {ws, name, join, gh}")
    _id(x["ws"])
    _text(x["name"])
    if x["join"] not in JOIN_MODES:
        raise _Bad("join must be open or key")
    if type(x["gh"]) is not str or not _GH.match(x["gh"]):
        raise _Bad("gh must be 16 lowercase hex characters")
    return x


def _chunk_len(x: Any) -> int:
    if type(x) is not int or not 1 <= x <= MAX_CHUNK:
        raise _Bad(f"must be 1 to {MAX_CHUNK}")
    return x


def _chunk_data(x: Any) -> bytes:
    if type(x) is not bytes or len(x) > MAX_CHUNK:
        raise _Bad(f"must be at most {MAX_CHUNK} bytes")
    return x


_actor = _nbytes(ACTOR_SIZE)
_hash = _nbytes(HASH_SIZE)


# --- the messages ------------------------------------------------------------------------------

class Message:
    """Base of every wire message: `T` is its `t`, `FIELDS` its keys and their parsers."""

    T: ClassVar[str] = ""
    FIELDS: ClassVar[Mapping[str, Parse]] = {}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.T}
        for name in self.FIELDS:
            v = getattr(self, name)
            if v is None and name in self.OPTIONAL:
                continue
            out[name] = vcmod.to_wire(v) if self.FIELDS[name] is _vc else v
        return out

    def check(self) -> None:
        """Cross-field rules beyond each field's own type (raise _Bad)."""


@attrs.frozen
class Hello(Message):
    T: ClassVar[str] = "hello"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "proto_min": _uint, "proto_max": _uint, "ws": _id, "genesis": _hash,
        "actor": _actor, "nonce": _nbytes(NONCE_SIZE), "name": _text, "device": _text,
        "sw": _text,
    }
    OPTIONAL: ClassVar[frozenset[str]] = frozenset(["genesis"])

    proto_min: int
    proto_max: int
    ws: bytes
    actor: bytes
    nonce: bytes
    name: str
    device: str
    sw: str
    genesis: bytes | None = None

    def check(self) -> None:
        if not 1 <= self.proto_min <= self.proto_max:
            raise _Bad("need 1 <= proto_min <= proto_max")


@attrs.frozen
class Auth(Message):
    T: ClassVar[str] = "auth"
    FIELDS: ClassVar[Mapping[str, Parse]] = {"sig": _nbytes(SIG_SIZE), "join": _hash}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset(["join"])

    sig: bytes
    join: bytes | None = None


@attrs.frozen
class ListWorkspaces(Message):
    T: ClassVar[str] = "list"


@attrs.frozen
class Directory(Message):
    T: ClassVar[str] = "directory"
    FIELDS: ClassVar[Mapping[str, Parse]] = {"workspaces": _list(_directory_entry)}

    workspaces: list[dict[str, Any]]


@attrs.frozen
class ClockMsg(Message):
    T: ClassVar[str] = "clock"
    FIELDS: ClassVar[Mapping[str, Parse]] = {"vc": _vc, "full": _bool}

    vc: vcmod.VClock
    full: bool = False


@attrs.frozen
class Ops(Message):
    T: ClassVar[str] = "ops"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "seq": _uint, "prev": _vc, "bundles": _list(_record), "more": _bool,
        "cont": _list(_body), "remaining": _uint, "done": _bool, "live": _bool,
    }
    OPTIONAL: ClassVar[frozenset[str]] = frozenset(["cont", "remaining"])

    seq: int
    prev: vcmod.VClock
    bundles: list[list[Any]]
    more: bool = False
    done: bool = False
    live: bool = False
    cont: list[bytes] | None = None
    remaining: int | None = None


@attrs.frozen
class Ack(Message):
    T: ClassVar[str] = "ack"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "seq": _uint, "vc": _vc, "applied": _uint, "dup": _uint,
        "rejected": _list(_rejected),
    }

    seq: int
    vc: vcmod.VClock
    applied: int
    dup: int
    rejected: list[list[Any]] = attrs.field(factory=list)


@attrs.frozen
class State(Message):
    T: ClassVar[str] = "state"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "vc": _vc, "oplog_digest": _digest, "state_hash": _digest,
    }

    vc: vcmod.VClock
    oplog_digest: bytes
    state_hash: bytes


@attrs.frozen
class Ping(Message):
    T: ClassVar[str] = "ping"
    FIELDS: ClassVar[Mapping[str, Parse]] = {"n": _uint, "wall_ms": _uint}

    n: int
    wall_ms: int


@attrs.frozen
class Pong(Message):
    T: ClassVar[str] = "pong"
    FIELDS: ClassVar[Mapping[str, Parse]] = {"n": _uint, "wall_ms": _uint}

    n: int
    wall_ms: int


@attrs.frozen
class BlobQuery(Message):
    T: ClassVar[str] = "blob_query"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "req": _uint, "hashes": _list(_hash, MAX_BLOB_QUERY),
    }

    req: int
    hashes: list[bytes]


@attrs.frozen
class BlobHave(Message):
    T: ClassVar[str] = "blob_have"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "req": _uint, "have": _list(_have, MAX_BLOB_QUERY),
        "missing": _list(_hash, MAX_BLOB_QUERY),
    }

    req: int
    have: list[list[Any]]
    missing: list[bytes]


@attrs.frozen
class BlobGet(Message):
    T: ClassVar[str] = "blob_get"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "req": _uint, "hash": _hash, "off": _uint, "len": _chunk_len,
    }

    req: int
    hash: bytes
    off: int
    len: int


@attrs.frozen
class BlobChunk(Message):
    T: ClassVar[str] = "blob_chunk"
    FIELDS: ClassVar[Mapping[str, Parse]] = {
        "req": _uint, "hash": _hash, "off": _uint, "size": _uint, "data": _chunk_data,
    }

    req: int
    hash: bytes
    off: int
    size: int
    data: bytes


@attrs.frozen
class BlobErr(Message):
    T: ClassVar[str] = "blob_err"
    FIELDS: ClassVar[Mapping[str, Parse]] = {"req": _uint, "hash": _hash, "code": _text}

    req: int
    hash: bytes
    code: str


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.T: cls
    for cls in (
        Hello, Auth, ListWorkspaces, Directory, ClockMsg, Ops, Ack, State, Ping, Pong,
        BlobQuery, BlobHave, BlobGet, BlobChunk, BlobErr,
    )
}


def _violation(message: str, **details: Any) -> ProtocolError:
    return ProtocolError(CLOSE_PROTOCOL, message, **details)


def from_wire(
    x: Any, *, before_auth: bool = False, pre_auth: frozenset[str] = PRE_AUTH
) -> Message:
    """Validate a decoded map and build its message (ProtocolError 4007 if anything is off)."""
    if type(x) is not dict:
        raise _violation("a message must be a map")
    t = x.get("t")
    if type(t) is not str or t not in MESSAGE_TYPES:
        raise _violation("unknown message type", t=repr(t)[:64])
    if before_auth and t not in pre_auth:
        raise _violation(f"{t} is not allowed before authentication", t=t)
    cls = MESSAGE_TYPES[t]
    keys = set(x) - {"t"}
    unknown = keys - set(cls.FIELDS)
    if unknown:
        raise _violation(f"{t} has unknown keys", t=t, keys=sorted(unknown)[:8])
    missing = set(cls.FIELDS) - cls.OPTIONAL - keys
    if missing:
        raise _violation(f"{t} lacks keys", t=t, keys=sorted(missing))
    kwargs: dict[str, Any] = {}
    for name in keys:
        try:
            kwargs[name] = cls.FIELDS[name](x[name])
        except _Bad as exc:
            raise _violation(f"{t}.{name} {exc}", t=t, field=name) from exc
    msg = cls(**kwargs)
    try:
        msg.check()
    except _Bad as exc:
        raise _violation(f"{t}: {exc}", t=t) from exc
    return msg


def decode(
    frame: bytes,
    *,
    max_size: int = MAX_MESSAGE_SIZE,
    before_auth: bool,
    pre_auth: frozenset[str] = PRE_AUTH,
) -> Message:
    """Strictly decode one frame: size → canonical CBOR → one known, well-typed message.

    `pre_auth` is the set of types accepted before authentication: `hello`/`auth`/`list` by
    default; a dialer that sent `list` passes `PRE_AUTH | {"directory"}` to read the reply.
    """
    if len(frame) > max_size:
        raise ProtocolError(CLOSE_TOO_BIG, f"{len(frame)}-byte message exceeds {max_size}")
    if before_auth and len(frame) > MAX_PRE_AUTH_SIZE:
        raise _violation(f"{len(frame)}-byte message before authentication exceeds 4 KiB")
    try:
        x = codec.decode(frame, max_size=max_size)
    except CodecError as exc:
        raise _violation(f"undecodable message: {exc.message}") from exc
    return from_wire(x, before_auth=before_auth, pre_auth=pre_auth)


def encode(msg: Message) -> bytes:
    """The canonical bytes of one message."""
    return codec.encode(msg.to_wire())
