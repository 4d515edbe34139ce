"""The lifecycle view is a pure function of the op set (any arrival order), spec 03 §2."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from openprod.core import codec
from openprod.core.identity import Identity
from openprod.engine import lifecycle as lcmod

WS = bytes(range(16))


Row = tuple[bytes, bytes, str, bytes]


def _row(stamp: int, actor: bytes, t: str, p: dict[str, object]) -> Row:
    return stamp.to_bytes(8, "big"), actor, t, codec.encode(p)


def _recover(stamp: int, by: Identity, secret: bytes, new_secret: bytes) -> Row:
    new_pub = lcmod.recovery_identity(new_secret).actor
    sig = lcmod.recovery_identity(secret).sign(lcmod.recovery_message(WS, by.actor, new_pub))
    return _row(stamp, by.actor, "RecoverOwnership",
                {"new_owner": by.actor, "new_recovery_pub": new_pub, "recovery_sig": sig})


def _history() -> tuple[list[Row], Identity, Identity, Identity]:
    owner, b, c = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    s0, s1, s2 = b"\x10" * 32, b"\x11" * 32, b"\x12" * 32
    rows = [
        _row(1, owner.actor, "CreateWorkspace", {"name": "W", "owner": owner.actor,
                                                 "recovery_pub": lcmod.recovery_identity(
                                                     s0).actor}),
        _row(2, owner.actor, "PutConfig", {"ns": "workspace", "key": "join_mode",
                                           "value": "key"}),
        _row(3, b.actor, "PutConfig", {"ns": "workspace", "key": "join_mode",
                                       "value": "open"}),  # not the owner: inert
        _row(4, owner.actor, "PutConfig", {"ns": "access_key", "key": "k1",
                                           "value": {"code": "ABC123", "max_uses": 1}}),
        _row(5, c.actor, "PutConfig", {"ns": "admit", "key": b.actor.hex(),
                                       "value": {"key_id": "k1"}}),
        _recover(6, b, s0, s1),  # valid: s0 is current
        _recover(7, c, s0, s2),  # stale: s0 was replaced at stamp 6
        _row(8, owner.actor, "PutConfig", {"ns": "workspace", "key": "join_mode",
                                           "value": "open"}),  # no longer the owner: inert
    ]
    return rows, owner, b, c


@given(st.randoms(use_true_random=False))
def test_view_is_independent_of_arrival_order(rnd: random.Random) -> None:
    rows, _, b, _ = _history()
    ref = lcmod.derive(rows, WS)
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    got = lcmod.derive(shuffled, WS)
    assert got == ref
    assert got.owner == b.actor and got.join_mode == "key" and len(got.recoveries) == 1
    assert got.admitted == {b.actor: "k1"} and got.uses == {"k1": 1}
    assert got.live_keys(0) == {}  # max_uses reached


def test_access_proof_binds_code_joiner_and_nonce() -> None:
    rows, _, b, c = _history()
    lc = lcmod.derive(rows[:4], WS)
    nonce = b"\x07" * 32
    proof = lcmod.join_proof(WS, c.actor, nonce, "abc-123")
    assert lcmod.match_key(lc, WS, c.actor, nonce, proof, 0) == "k1"
    assert lcmod.match_key(lc, WS, b.actor, nonce, proof, 0) is None  # another joiner
    assert lcmod.match_key(lc, WS, c.actor, b"\x08" * 32, proof, 0) is None  # replayed
    assert lcmod.match_key(lc, WS, c.actor, nonce,
                           lcmod.join_proof(WS, c.actor, nonce, "ABC124"), 0) is None


@given(st.binary(min_size=32, max_size=32))
def test_base32_round_trip(secret: bytes) -> None:
    text = lcmod.b32(secret)
    assert lcmod.unb32(text, 32) == secret
    assert lcmod.unb32(text.lower().replace("-", " "), 32) == secret
