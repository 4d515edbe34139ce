"""Tests for openprod.engine.crdt (CRDT text fields on pycrdt)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.engine.crdt import (
    MAX_DELTA,
    CrdtError,
    apply_delta,
    delta_for_replace,
    delta_for_splice,
    empty_state,
    is_valid_delta,
    merge_states,
    read_text,
)

# No surrogates: a Python str that can be stored in a Yjs text.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
EMOJI_TEXT = "a😀b👩‍👩‍👧c𝄞é中"


def state_of(text: str, client_id: int = 1) -> bytes:
    return apply_delta(None, delta_for_splice(None, 0, 0, text, client_id=client_id))


def apply_all(state: bytes | None, deltas: list[bytes]) -> bytes:
    out = empty_state() if state is None else state
    for delta in deltas:
        out = apply_delta(out, delta)
    return out


# -- basics ---------------------------------------------------------------------


def test_empty_state_reads_empty() -> None:
    assert read_text(empty_state()) == ""
    assert read_text(None) == ""
    assert read_text(b"") == ""
    assert is_valid_delta(empty_state())


def test_splice_insert_delete_replace() -> None:
    s = state_of("hello world")
    assert read_text(s) == "hello world"
    s = apply_delta(s, delta_for_splice(s, 5, 0, ",", client_id=2))
    assert read_text(s) == "hello, world"
    s = apply_delta(s, delta_for_splice(s, 0, 5, "HELLO", client_id=2))
    assert read_text(s) == "HELLO, world"
    s = apply_delta(s, delta_for_splice(s, 5, 7, "", client_id=2))
    assert read_text(s) == "HELLO"
    s = apply_delta(s, delta_for_splice(s, 5, 0, "!", client_id=2))
    assert read_text(s) == "HELLO!"


def test_noop_splice_is_valid_empty_update() -> None:
    s = state_of("abc")
    delta = delta_for_splice(s, 1, 0, "")
    assert is_valid_delta(delta)
    assert read_text(apply_delta(s, delta)) == "abc"


def test_splice_delta_is_incremental() -> None:
    s = state_of("hello world, this is a long enough text")
    delta = delta_for_splice(s, 5, 0, "X", client_id=2)
    assert b"hello" not in delta
    assert len(delta) < 30
    # Alone, on an empty doc, it cannot show the old text.
    assert read_text(apply_delta(None, delta)) == ""


def test_splice_delta_carries_only_new_deletions() -> None:
    s = state_of("0123456789")
    s = apply_delta(s, delta_for_splice(s, 0, 3, "", client_id=2))
    d1 = delta_for_splice(s, 5, 1, "", client_id=2)
    d2 = delta_for_splice(s, 5, 0, "x", client_id=2)
    # A pure insert carries no delete-set entries; a deletion carries one.
    assert d2.endswith(b"\x00")
    assert len(d1) < 12


@pytest.mark.parametrize(
    ("index", "delete"),
    [(4, 0), (0, 4), (2, 2), (-1, 0), (0, -1), (True, 0), (0, 1.0)],
)
def test_splice_bounds(index: int, delete: int) -> None:
    s = state_of("abc")
    with pytest.raises(ValueError):
        delta_for_splice(s, index, delete, "x")


def test_splice_at_end_bound_ok() -> None:
    s = state_of("abc")
    assert read_text(apply_delta(s, delta_for_splice(s, 3, 0, "d"))) == "abcd"
    assert read_text(apply_delta(s, delta_for_splice(s, 0, 3, ""))) == ""


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", 5, b"x"])
def test_bad_insert_text(bad: object) -> None:
    with pytest.raises(ValueError):
        delta_for_splice(None, 0, 0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        delta_for_replace(None, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("client_id", [-1, 1 << 53, True, "1"])
def test_bad_client_id(client_id: object) -> None:
    with pytest.raises(ValueError):
        delta_for_splice(None, 0, 0, "x", client_id=client_id)  # type: ignore[arg-type]


def test_author_helpers_reject_corrupt_state() -> None:
    with pytest.raises(CrdtError):
        delta_for_splice(b"garbage", 0, 0, "x")
    with pytest.raises(CrdtError):
        delta_for_replace(b"garbage", "x")


def test_oversize_insert_rejected() -> None:
    with pytest.raises(CrdtError):
        delta_for_splice(None, 0, 0, "x" * (MAX_DELTA + 1))


# -- emoji / index units --------------------------------------------------------


def test_emoji_indices_are_code_points() -> None:
    s = state_of(EMOJI_TEXT)
    assert read_text(s) == EMOJI_TEXT
    model = EMOJI_TEXT
    # Insert right after the first emoji, delete the ZWJ family emoji
    # codepoint by codepoint, then a non-BMP insert in the middle.
    for index, delete, insert in [(2, 0, "X"), (4, 5, ""), (1, 0, "🎉"), (0, 1, "Ω")]:
        s = apply_delta(s, delta_for_splice(s, index, delete, insert, client_id=7))
        model = model[:index] + insert + model[index + delete :]
        assert read_text(s) == model


def test_pycrdt_text_is_indexed_by_utf8_bytes() -> None:
    # The quirk the module compensates for: pycrdt lengths/offsets are bytes.
    doc: pycrdt.Doc[pycrdt.Text] = pycrdt.Doc()
    text = doc.get("v", type=pycrdt.Text)
    text.insert(0, "a😀b")
    assert len(text) == len("a😀b".encode())
    text.insert(5, "X")
    assert str(text) == "a😀Xb"


@given(
    texts,
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 5), texts),
        max_size=8,
    ),
)
@settings(max_examples=150, deadline=None)
def test_splices_match_str_model(initial: str, edits: list[tuple[int, int, str]]) -> None:
    s = state_of(initial)
    model = initial
    for raw_index, raw_delete, insert in edits:
        index = raw_index % (len(model) + 1)
        delete = min(raw_delete, len(model) - index)
        s = apply_delta(s, delta_for_splice(s, index, delete, insert, client_id=5))
        model = model[:index] + insert + model[index + delete :]
    assert read_text(s) == model


# -- replace --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("", ""),
        ("", "abc"),
        ("abc", ""),
        ("hello world", "hello there world"),
        ("aaa", "aaaa"),
        ("abcabc", "abc"),
        ("hello 😀 world", "hello 🎉 world"),
        (EMOJI_TEXT, EMOJI_TEXT[::-1]),
    ],
)
def test_replace_produces_expected_text(old: str, new: str) -> None:
    s = state_of(old)
    assert read_text(apply_delta(s, delta_for_replace(s, new, client_id=3))) == new


@given(texts, texts)
@settings(max_examples=150, deadline=None)
def test_replace_property(old: str, new: str) -> None:
    s = state_of(old)
    assert read_text(apply_delta(s, delta_for_replace(s, new, client_id=3))) == new


def test_replace_is_minimal_and_merges_with_concurrent_edit() -> None:
    base_text = "The quick brown fox jumps over the lazy dog"
    s = state_of(base_text)
    d_replace = delta_for_replace(s, base_text.replace("brown", "red"), client_id=2)
    # Only the changed span travels, not the whole text.
    assert b"quick" not in d_replace and b"lazy" not in d_replace
    d_other = delta_for_splice(s, len(base_text), 0, "!", client_id=3)
    for order in ([d_replace, d_other], [d_other, d_replace]):
        assert read_text(apply_all(s, order)) == "The quick red fox jumps over the lazy dog!"


def test_replace_unchanged_is_noop() -> None:
    s = state_of("same")
    delta = delta_for_replace(s, "same")
    assert read_text(apply_delta(s, delta)) == "same"
    assert apply_delta(s, delta) == s


# -- convergence ----------------------------------------------------------------

BASE = state_of("hello 😀 world")
D_A = delta_for_splice(BASE, 6, 0, "dear ", client_id=2)
D_B = delta_for_splice(BASE, 13, 0, " and 🎉", client_id=3)
D_C = delta_for_splice(BASE, 0, 5, "HELLO", client_id=4)


@given(st.permutations([BASE, D_A, D_B, D_C]))
def test_concurrent_splices_converge_any_order(order: list[bytes]) -> None:
    s = apply_all(None, order)
    assert read_text(s) == "HELLO dear 😀 world and 🎉"
    assert s == apply_all(None, [BASE, D_A, D_B, D_C])


def test_concurrent_inserts_at_same_spot_keep_both() -> None:
    d1 = delta_for_splice(BASE, 6, 0, "one ", client_id=10)
    d2 = delta_for_splice(BASE, 6, 0, "two ", client_id=11)
    r1 = read_text(apply_all(BASE, [d1, d2]))
    r2 = read_text(apply_all(BASE, [d2, d1]))
    assert r1 == r2
    assert "one " in r1 and "two " in r1


edit_lists = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 4), st.text("xyz😀é", max_size=3)),
    min_size=1,
    max_size=4,
)


@given(edit_lists, edit_lists, st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_two_replicas_converge_in_any_delivery_order(
    edits_a: list[tuple[int, int, str]],
    edits_b: list[tuple[int, int, str]],
    rnd: random.Random,
) -> None:
    base = state_of("shared base text")
    deltas: list[bytes] = [base]
    replicas: list[bytes] = []
    for client_id, edits in ((21, edits_a), (22, edits_b)):
        s = base
        for raw_index, raw_delete, insert in edits:
            current = read_text(s)
            index = raw_index % (len(current) + 1)
            delete = min(raw_delete, len(current) - index)
            delta = delta_for_splice(s, index, delete, insert, client_id=client_id)
            deltas.append(delta)
            s = apply_delta(s, delta)
        replicas.append(s)
    expected = read_text(merge_states(replicas[0], replicas[1]))
    for _ in range(4):
        order = deltas[:]
        rnd.shuffle(order)
        s = apply_all(None, order)
        assert read_text(s) == expected
        # Redelivering everything changes nothing.
        assert apply_all(s, order) == s


def test_out_of_order_sequential_deltas_are_kept_pending() -> None:
    s: bytes | None = None
    chain: list[bytes] = []
    for ch in "abcde":
        delta = delta_for_splice(s, len(read_text(s)), 0, ch, client_id=9)
        chain.append(delta)
        s = apply_delta(s, delta)
    for order in itertools.permutations(chain):
        assert read_text(apply_all(None, list(order))) == "abcde"


def test_state_bytes_do_not_depend_on_delivery_order() -> None:
    # Deletions released from the pending queue must be garbage-collected
    # just like in-order ones, or the stored bytes would differ per replica.
    s: bytes = empty_state()
    chain: list[bytes] = []
    for index, delete, insert in [(0, 0, "abc"), (1, 0, "x"), (0, 2, "y"), (2, 1, ""), (0, 0, "z")]:
        delta = delta_for_splice(s, index, delete, insert, client_id=9)
        chain.append(delta)
        s = apply_delta(s, delta)
    assert read_text(s) == "zyb"
    for order in itertools.permutations(chain):
        got = apply_all(None, list(order))
        assert got == s
        assert apply_all(got, list(order)) == s
        assert merge_states(got, None) == s


def test_pending_delete_of_unknown_item_is_kept() -> None:
    base = state_of("hello", client_id=1)
    delete = delta_for_splice(base, 0, 2, "", client_id=2)
    s = apply_delta(None, delete)
    assert read_text(s) == ""
    assert read_text(apply_delta(s, base)) == "llo"


@pytest.mark.parametrize("delta", [BASE, D_A, D_B, D_C])
def test_reapplication_is_idempotent(delta: bytes) -> None:
    s = apply_all(None, [BASE, D_A, D_B, D_C])
    assert apply_delta(s, delta) == s
    assert read_text(apply_delta(s, delta)) == read_text(s)


def test_deltas_interoperate_with_plain_pycrdt_doc() -> None:
    doc: pycrdt.Doc[pycrdt.Text] = pycrdt.Doc()
    text = doc.get("v", type=pycrdt.Text)
    for delta in [D_C, BASE, D_B, D_A]:
        doc.apply_update(delta)
    assert str(text) == read_text(apply_all(None, [BASE, D_A, D_B, D_C]))


# -- merge_states ---------------------------------------------------------------


def test_merge_states_commutative_and_union() -> None:
    a = apply_delta(BASE, D_A)
    b = apply_all(BASE, [D_B, D_C])
    ab, ba = merge_states(a, b), merge_states(b, a)
    assert ab == ba
    assert read_text(ab) == read_text(apply_all(BASE, [D_A, D_B, D_C]))
    assert merge_states(ab, a) == ab
    assert read_text(merge_states(a, a)) == read_text(a)


def test_merge_states_with_empty() -> None:
    assert read_text(merge_states(None, None)) == ""
    assert read_text(merge_states(BASE, None)) == read_text(BASE)
    assert read_text(merge_states(empty_state(), BASE)) == read_text(BASE)


def test_merge_of_unrelated_docs_keeps_both_texts() -> None:
    # Entity absorption: two independently created fields.
    a = state_of("alpha", client_id=31)
    b = state_of("beta", client_id=32)
    merged = read_text(merge_states(a, b))
    assert merged == read_text(merge_states(b, a))
    assert merged in ("alphabeta", "betaalpha")


@given(edit_lists, edit_lists)
@settings(max_examples=50, deadline=None)
def test_merge_states_commutative_property(
    edits_a: list[tuple[int, int, str]], edits_b: list[tuple[int, int, str]]
) -> None:
    states = []
    for client_id, edits in ((41, edits_a), (42, edits_b)):
        s = BASE
        for raw_index, raw_delete, insert in edits:
            current = read_text(s)
            index = raw_index % (len(current) + 1)
            delete = min(raw_delete, len(current) - index)
            s = apply_delta(s, delta_for_splice(s, index, delete, insert, client_id=client_id))
        states.append(s)
    assert read_text(merge_states(states[0], states[1])) == read_text(
        merge_states(states[1], states[0])
    )


def test_corrupt_state_raises_crdt_error() -> None:
    with pytest.raises(CrdtError):
        read_text(b"hello world")
    with pytest.raises(CrdtError):
        merge_states(BASE, b"hello world")
    with pytest.raises(CrdtError):
        apply_delta(b"hello world", D_A)


# -- bad deltas -----------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\xff\xff\xff", b"hello world", b"\x01\x01"])
def test_garbage_delta_rejected_state_untouched(garbage: bytes) -> None:
    s = apply_delta(BASE, D_A)
    snapshot = bytes(s)
    assert not is_valid_delta(garbage)
    with pytest.raises(CrdtError):
        apply_delta(s, garbage)
    assert s == snapshot
    assert read_text(apply_delta(s, D_B)) == read_text(apply_all(BASE, [D_A, D_B]))


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_never_crash(garbage: bytes) -> None:
    s = apply_delta(BASE, D_A)
    expected = read_text(s)
    assert isinstance(is_valid_delta(garbage), bool)
    try:
        out = apply_delta(s, garbage)
    except CrdtError:
        out = s
    assert isinstance(read_text(out), str)
    assert read_text(s) == expected


@given(st.data())
@settings(max_examples=500, deadline=None)
def test_mutated_real_deltas_never_crash(data: st.DataObject) -> None:
    delta = bytearray(data.draw(st.sampled_from([BASE, D_A, D_B, D_C])))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(delta) - 1))
        delta[pos] = data.draw(st.integers(0, 255))
    s = apply_delta(BASE, D_A)
    try:
        out = apply_delta(s, bytes(delta))
    except CrdtError:
        out = s
    read_text(out)
    merge_states(out, s)


# A string item of client 2 whose parent is client 1's first *string* item:
# structurally decodable, but invalid once that parent is known.
BAD_PARENT = b"\x01\x01\x02\x00\x04\x00\x01\x00\x01X\x00"


def test_context_invalid_delta_is_rejected_without_partial_effects() -> None:
    s = state_of("hello", client_id=1)
    assert is_valid_delta(BAD_PARENT)  # fine against an empty doc
    with pytest.raises(CrdtError):
        apply_delta(s, BAD_PARENT)
    # pycrdt itself integrates the valid part before raising; the module
    # must not let that half-applied doc escape.
    good = delta_for_splice(s, 5, 0, "!", client_id=3)
    combined = pycrdt.merge_updates(good, BAD_PARENT)
    doc: pycrdt.Doc[pycrdt.Text] = pycrdt.Doc()
    text = doc.get("v", type=pycrdt.Text)
    doc.apply_update(s)
    with pytest.raises(RuntimeError):
        doc.apply_update(combined)
    assert str(text) == "hello!"
    with pytest.raises(CrdtError):
        apply_delta(s, combined)
    assert read_text(s) == "hello"


def test_forged_reuse_of_known_ids_keeps_stored_content() -> None:
    s = apply_delta(BASE, D_C)
    forged = D_C.replace(b"HELLO", b"WORLD")
    assert apply_delta(s, forged) == s
    assert read_text(apply_delta(s, forged)) == "HELLO 😀 world"


def _varuint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@pytest.mark.parametrize("clients", [2, 1 << 20, 1 << 28, (1 << 32) - 1, 1 << 60])
def test_inflated_client_count_rejected_before_decoding(clients: int) -> None:
    # Without the pre-check, yrs would reserve memory for this many clients.
    delta = _varuint(clients) + bytes(range(1, 4))
    with pytest.raises(CrdtError, match="client sections"):
        apply_delta(BASE, delta)
    assert not is_valid_delta(delta)


def test_oversize_delta_rejected() -> None:
    with pytest.raises(CrdtError, match="limit"):
        apply_delta(BASE, b"\x00" * (MAX_DELTA + 1))
    assert not is_valid_delta(b"\x00" * (MAX_DELTA + 1))


@pytest.mark.parametrize("bad", ["text", None, bytearray(b"\x00\x00"), 3])
def test_non_bytes_delta_rejected(bad: object) -> None:
    with pytest.raises(CrdtError):
        apply_delta(BASE, bad)  # type: ignore[arg-type]
    assert not is_valid_delta(bad)  # type: ignore[arg-type]


class _FakePanic(BaseException):
    pass


_FakePanic.__name__ = "PanicException"
_FakePanic.__qualname__ = "PanicException"
_FakePanic.__module__ = "pyo3_runtime"


@pytest.fixture
def patched_apply(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException]]:
    raised: list[BaseException] = []
    original = pycrdt.Doc.apply_update

    def apply_update(self: pycrdt.Doc[pycrdt.Text], update: bytes) -> None:
        if raised:
            raise raised[0]
        original(self, update)

    monkeypatch.setattr(pycrdt.Doc, "apply_update", apply_update)
    yield raised


def test_rust_panic_becomes_crdt_error(patched_apply: list[BaseException]) -> None:
    patched_apply.append(_FakePanic("boom"))
    with pytest.raises(CrdtError, match="panicked"):
        apply_delta(BASE, D_A)


def test_keyboard_interrupt_propagates(patched_apply: list[BaseException]) -> None:
    patched_apply.append(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        apply_delta(BASE, D_A)
