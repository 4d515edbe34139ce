"""CRDT text fields on pycrdt (Yjs-compatible).

This module owns the byte-level handling of CRDT text slots: one pycrdt `Doc`
per (entity, slot) whose root `Text` is named "v", persisted as a full-state
Yjs v1 update blob. It provides merging of `SetCRDTField` deltas into that
state (commutative, idempotent, order-independent; for deltas produced by a
real Yjs/yrs client even the resulting bytes are), reading the text value,
merging two states (entity merge; a split simply copies the blob), and the
author helpers that turn a local edit into an incremental delta.

Everything here is a pure function over bytes: a scratch `Doc` is built per
call and thrown away, so a failing update can never leave a half-applied doc
behind (pycrdt's `apply_update` may raise after integrating part of an update).

Text indices in the public API are Python `str` indices (code points). pycrdt
indexes `Text` by UTF-8 bytes, so indices are converted here; the Yjs clocks
inside the deltas are position-free, so deltas interoperate with UTF-16 based
Yjs peers regardless.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pycrdt import Doc, Text, TransactionEvent
from pycrdt import get_update as _diff_update
from pycrdt import merge_updates as _merge_updates

__all__ = [
    "MAX_DELTA",
    "ROOT",
    "CrdtError",
    "apply_delta",
    "delta_for_replace",
    "delta_for_splice",
    "empty_state",
    "is_valid_delta",
    "merge_states",
    "read_text",
]

MAX_DELTA = 1 << 20
ROOT = "v"
# Yjs v1 encoding of "no structs, empty delete set": the canonical empty update.
_EMPTY_UPDATE = b"\x00\x00"
# Yjs (JS) encodes client ids as var-uints that must stay within 2^53.
_MAX_CLIENT_ID = (1 << 53) - 1


class CrdtError(ValueError):
    """A delta or stored state is not a usable Yjs v1 update."""


def _is_rust_panic(exc: BaseException) -> bool:
    # pyo3 turns Rust panics into pyo3_runtime.PanicException, which derives
    # from BaseException and is not importable, so it is recognised by name.
    cls = type(exc)
    return cls.__name__ == "PanicException" and cls.__module__ == "pyo3_runtime"


@contextmanager
def _as_crdt_error(what: str) -> Iterator[None]:
    try:
        yield
    except CrdtError:
        raise
    except Exception as exc:
        raise CrdtError(f"{what}: {exc}") from exc
    except BaseException as exc:
        # Anything else that is BaseException-only (KeyboardInterrupt,
        # SystemExit, ...) must keep propagating untouched.
        if _is_rust_panic(exc):
            raise CrdtError(f"{what}: pycrdt panicked: {exc}") from exc
        raise


def _leading_varuint(data: bytes) -> int | None:
    value = 0
    for shift, byte in enumerate(data[:10]):
        value |= (byte & 0x7F) << (7 * shift)
        if byte < 0x80:
            return value
    return None


def _check_delta(delta: object) -> bytes:
    if not isinstance(delta, bytes):
        raise CrdtError(f"delta must be bytes, not {type(delta).__name__}")
    if len(delta) > MAX_DELTA:
        raise CrdtError(f"delta is {len(delta)} bytes, limit is {MAX_DELTA}")
    # yrs reserves a hash map sized by the leading client count before
    # reading any section: a 200-byte delta claiming ~2^28 clients costs
    # seconds and hundreds of MB. Each section takes at least 3 bytes, so
    # an honest count can never exceed a third of the length.
    clients = _leading_varuint(delta)
    if clients is None or clients * 3 > len(delta):
        raise CrdtError("delta declares more client sections than it has bytes")
    return delta


def _state_or_empty(state: bytes | None) -> bytes:
    if state is None or state == b"":
        return _EMPTY_UPDATE
    if not isinstance(state, bytes):
        raise CrdtError(f"state must be bytes, not {type(state).__name__}")
    return state


def _new_doc(client_id: int | None = None) -> tuple[Doc[Text], Text]:
    doc: Doc[Text] = Doc(client_id=client_id)
    text = doc.get(ROOT, type=Text)
    return doc, text


def _load(updates: list[bytes], what: str, client_id: int | None = None) -> tuple[Doc[Text], Text]:
    doc, text = _new_doc(client_id)
    with _as_crdt_error(what):
        for update in updates:
            doc.apply_update(update)
    return doc, text


def _integrate(sources: list[bytes], what: str) -> bytes:
    """Full state holding everything in `sources`, in canonical form.

    The sources are merged at the update level and integrated in a single
    transaction: yrs only garbage-collects deleted content that a
    transaction itself deleted, so feeding them one by one can leave
    deleted text behind when a pending struct is released later, and the
    resulting bytes would depend on delivery order.

    `Doc.get_update()` omits pending structs (those waiting for a causally
    earlier update) and pending deletions of unknown items. Dropping them
    would also make the result order-dependent, so the part of the merged
    update beyond the doc's state vector (exactly the pending structs, plus
    the delete set) is merged back in.
    """
    doc, _ = _new_doc()
    with _as_crdt_error(what):
        merged = _merge_updates(*sources) if len(sources) > 1 else sources[0]
        doc.apply_update(merged)
        full = doc.get_update()
        leftover = _diff_update(merged, doc.get_state())
        return _merge_updates(full, leftover)


def empty_state() -> bytes:
    """State of a field that has never been edited (reads as "")."""
    return _EMPTY_UPDATE


def is_valid_delta(delta: bytes) -> bool:
    """Context-free check: `apply_delta` would accept it onto an empty state.

    A delta that passes can still be rejected by `apply_delta` against a
    particular state (e.g. one that contradicts the structure already there).
    """
    try:
        apply_delta(None, delta)
    except CrdtError:
        return False
    return True


def apply_delta(state: bytes | None, delta: bytes) -> bytes:
    """Merge `delta` (a Yjs v1 update) into `state`; returns the new full state.

    `state` None means empty. Raises CrdtError if the delta is oversize or
    not a valid update for this state, or if `state` itself is corrupt; the
    caller then keeps its old state (the op is inert).
    """
    delta = _check_delta(delta)
    base = _state_or_empty(state)
    try:
        # The state goes first: should a forged delta reuse known struct
        # ids, the update merge keeps the stored version.
        return _integrate([base, delta], "invalid delta")
    except CrdtError:
        # Blame the stored state if it cannot even be loaded on its own.
        _load([base], "stored state is corrupt")
        raise


def read_text(state: bytes | None) -> str:
    """The text value of a stored state."""
    _, text = _load([_state_or_empty(state)], "stored state is corrupt")
    with _as_crdt_error("cannot read text"):
        return str(text)


def merge_states(a: bytes | None, b: bytes | None) -> bytes:
    """Union of two states (used when one entity absorbs another)."""
    return _integrate([_state_or_empty(a), _state_or_empty(b)], "cannot merge states")


def _check_client_id(client_id: int | None) -> None:
    if client_id is None:
        return
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise ValueError(f"client_id must be an int, got {client_id!r}")
    if not 0 <= client_id <= _MAX_CLIENT_ID:
        raise ValueError(f"client_id must be in [0, 2^53), got {client_id}")


def _check_text(value: str, name: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates cannot be stored in a Yjs string.
        raise ValueError(f"{name} is not valid Unicode: {exc}") from exc


def _splice(
    doc: Doc[Text], text: Text, current: str, index: int, delete: int, insert: str
) -> bytes:
    if delete == 0 and insert == "":
        return _EMPTY_UPDATE
    # pycrdt Text offsets are UTF-8 byte offsets; an offset inside a
    # multi-byte character misbehaves silently, so always convert.
    start = len(current[:index].encode("utf-8"))
    stop = start + len(current[index : index + delete].encode("utf-8"))
    updates: list[bytes] = []

    def capture(event: TransactionEvent) -> None:
        updates.append(event.update)

    # The transaction's own update holds just this edit (its delete set is
    # only the new deletions), unlike a state-vector diff, which would repeat
    # the whole delete set of the document.
    subscription = doc.observe(capture)
    try:
        with doc.transaction():
            if stop > start:
                del text[start:stop]
            if insert:
                text.insert(start, insert)
    finally:
        doc.unobserve(subscription)
    with _as_crdt_error("cannot encode delta"):
        delta = _merge_updates(*updates) if len(updates) > 1 else updates[0]
    if len(delta) > MAX_DELTA:
        raise CrdtError(f"edit produces a {len(delta)}-byte delta, limit is {MAX_DELTA}")
    return delta


def delta_for_splice(
    state: bytes | None,
    index: int,
    delete: int,
    insert: str,
    client_id: int | None = None,
) -> bytes:
    """Incremental delta performing `text[index:index + delete] = insert`.

    Indices count code points (Python `str` indexing). `client_id` is the
    Yjs client id of the author; None picks a random one. A fixed id must
    never be used by two writers that may edit concurrently, or their deltas
    collide. Raises ValueError for out-of-range indices or bad text, and
    CrdtError if `state` is corrupt or the delta would exceed MAX_DELTA.
    """
    for name, number in (("index", index), ("delete", delete)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"{name} must be a non-negative int, got {number!r}")
    _check_text(insert, "insert")
    _check_client_id(client_id)
    doc, text = _load([_state_or_empty(state)], "stored state is corrupt", client_id)
    current = str(text)
    if index > len(current) or index + delete > len(current):
        raise ValueError(
            f"splice [{index}:{index + delete}] out of range for text of length {len(current)}"
        )
    return _splice(doc, text, current, index, delete, insert)


def delta_for_replace(
    state: bytes | None,
    new_text: str,
    client_id: int | None = None,
) -> bytes:
    """Incremental delta turning the current text into `new_text`.

    Only the span between the longest common prefix and suffix is replaced,
    so a concurrent edit elsewhere in the text survives the merge.
    """
    _check_text(new_text, "new_text")
    _check_client_id(client_id)
    doc, text = _load([_state_or_empty(state)], "stored state is corrupt", client_id)
    current = str(text)
    limit = min(len(current), len(new_text))
    prefix = 0
    while prefix < limit and current[prefix] == new_text[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < limit - prefix
        and current[len(current) - 1 - suffix] == new_text[len(new_text) - 1 - suffix]
    ):
        suffix += 1
    return _splice(
        doc,
        text,
        current,
        prefix,
        len(current) - prefix - suffix,
        new_text[prefix : len(new_text) - suffix],
    )
