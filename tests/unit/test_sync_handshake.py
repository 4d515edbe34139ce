"""Tests for openprod.sync.handshake: the per-link handshake of spec 03 §5."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprod.core.identity import Identity
from openprod.sync import messages as m
from openprod.sync.handshake import OTHER_ROLE, Handshake, auth_payload

WS = b"\x11" * 16
GENESIS = b"\x22" * 32
H1 = b"\x00" * 11 + b"\x05"
H2 = b"\x00" * 11 + b"\x09"


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32, f"user{n}", f"dev{n}")


def nonces(seed: int) -> Callable[[], bytes]:
    rng = random.Random(seed)
    return lambda: rng.randbytes(32)


def make(role: Any, who: int, *, seed: int = 0, **kw: Any) -> Handshake:
    kw.setdefault("ws", WS)
    kw.setdefault("genesis_hash", GENESIS)
    kw.setdefault("nonce", nonces(seed * 100 + who))
    kw.setdefault("clock_vc", {ident(who).actor: H1})
    ws = kw.pop("ws")
    genesis = kw.pop("genesis_hash")
    return Handshake(role, ident(who), ws, genesis, **kw)


def wire(msg: m.Message, *, before_auth: bool = True) -> m.Message:
    """Send a message through the real encoder and strict decoder."""
    return m.decode(m.encode(msg), before_auth=before_auth)


def run(a: Handshake, b: Handshake) -> tuple[list[m.Message], list[m.Message]]:
    """Wire a and b to each other until both are quiet; returns what each one received."""
    to_b = list(a.start())
    to_a = list(b.start())
    got_a: list[m.Message] = []
    got_b: list[m.Message] = []
    while to_a or to_b:
        if to_b:
            msg = wire(to_b.pop(0), before_auth=not b.authenticated)
            got_b.append(msg)
            if not b.authenticated:  # after that, messages belong to the link, not the handshake
                to_a += b.receive(msg)
        if to_a:
            msg = wire(to_a.pop(0), before_auth=not a.authenticated)
            got_a.append(msg)
            if not a.authenticated:
                to_b += a.receive(msg)
    return got_a, got_b


def refused(hs: Handshake, msg: m.Message) -> int:
    with pytest.raises(m.ProtocolError) as info:
        hs.receive(msg)
    assert not hs.authenticated
    return info.value.close_code


# --- the happy path ----------------------------------------------------------------------------

def test_dialer_and_acceptor_authenticate_and_exchange_clocks() -> None:
    a = make("dialer", 1, clock_vc={ident(1).actor: H1})
    b = make("acceptor", 2, clock_vc=lambda: {ident(2).actor: H2, ident(1).actor: H1})
    got_a, got_b = run(a, b)
    assert a.authenticated and b.authenticated
    assert a.peer_actor == ident(2).actor and b.peer_actor == ident(1).actor
    assert a.version == b.version == m.PROTO_VERSION
    assert [x.T for x in got_a] == ["hello", "auth", "clock"]
    assert [x.T for x in got_b] == ["hello", "auth", "clock"]
    clock_a, clock_b = got_a[-1], got_b[-1]
    assert isinstance(clock_a, m.ClockMsg) and isinstance(clock_b, m.ClockMsg)
    assert clock_a.vc == {ident(2).actor: H2, ident(1).actor: H1}
    assert clock_b.vc == {ident(1).actor: H1}
    hello_a = got_b[0]
    assert isinstance(hello_a, m.Hello)
    assert hello_a.name == "user1" and hello_a.device == "dev1" and hello_a.genesis == GENESIS


@given(
    lo_a=st.integers(1, 5), span_a=st.integers(0, 4),
    lo_b=st.integers(1, 5), span_b=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_version_negotiation(lo_a: int, span_a: int, lo_b: int, span_b: int, seed: int) -> None:
    hi_a, hi_b = lo_a + span_a, lo_b + span_b
    a = make("dialer", 1, seed=seed, proto_min=lo_a, proto_max=hi_a)
    b = make("acceptor", 2, seed=seed, proto_min=lo_b, proto_max=hi_b)
    common = set(range(lo_a, hi_a + 1)) & set(range(lo_b, hi_b + 1))
    if common:
        run(a, b)
        assert a.authenticated and b.authenticated
        assert a.version == b.version == max(common)
    else:
        b.start()
        (hello_a,) = a.start()
        assert refused(b, hello_a) == m.CLOSE_NO_COMMON_VERSION


def test_unknown_genesis_on_either_side_is_fine() -> None:
    for ga, gb in [(None, GENESIS), (GENESIS, None), (None, None)]:
        a = make("dialer", 1, genesis_hash=ga)
        b = make("acceptor", 2, genesis_hash=gb)
        run(a, b)
        assert a.authenticated and b.authenticated


def test_clock_defaults_to_empty_and_receive_before_start_starts() -> None:
    a = make("dialer", 1, clock_vc=None)
    b = make("acceptor", 2)
    (hello_b,) = b.start()
    out = a.receive(hello_b)  # a never called start(): its hello goes out first
    assert [x.T for x in out] == ["hello", "auth"]
    (auth_b,) = b.receive(out[0])
    assert [x.T for x in b.receive(out[1])] == ["clock"]
    (clock_a,) = a.receive(auth_b)
    assert clock_a == m.ClockMsg(vc={}, full=False)
    assert a.authenticated and b.authenticated


def test_join_proof_is_carried() -> None:
    proof = b"\x33" * 32
    seen: list[bytes] = []

    def join(peer: m.Hello) -> bytes:
        seen.append(peer.nonce)
        return proof

    a = make("dialer", 1, join=join)
    b = make("acceptor", 2)
    run(a, b)
    assert b.peer_join == proof and a.peer_join is None
    assert seen == [b.nonce]  # the joiner's proof binds the acceptor's nonce


# --- refusals ----------------------------------------------------------------------------------

def test_foreign_workspace_is_4001() -> None:
    a = make("dialer", 1)
    b = make("acceptor", 2, ws=b"\x12" * 16)
    (hello_a,) = a.start()
    b.start()
    assert refused(b, hello_a) == m.CLOSE_WRONG_WORKSPACE


def test_unequal_genesis_is_4001_collision() -> None:
    a = make("dialer", 1)
    b = make("acceptor", 2, genesis_hash=b"\x23" * 32)
    (hello_a,) = a.start()
    b.start()
    with pytest.raises(m.ProtocolError) as info:
        b.receive(hello_a)
    assert info.value.close_code == m.CLOSE_WRONG_WORKSPACE
    assert info.value.details["collision"] is True


def test_self_is_4006() -> None:
    a = make("dialer", 1, seed=1)
    a2 = make("acceptor", 1, seed=2)  # same identity, another link
    (hello_a,) = a.start()
    a2.start()
    assert refused(a2, hello_a) == m.CLOSE_SELF


def test_message_before_hello_is_4007() -> None:
    b = make("acceptor", 2)
    b.start()
    assert refused(b, m.Auth(sig=b"\x00" * 64)) == m.CLOSE_PROTOCOL
    b = make("acceptor", 2)
    b.start()
    assert refused(b, m.ClockMsg(vc={})) == m.CLOSE_PROTOCOL
    b = make("acceptor", 2)
    b.start()
    assert refused(b, m.ListWorkspaces()) == m.CLOSE_PROTOCOL


def test_anything_but_auth_after_hello_is_4007() -> None:
    a = make("dialer", 1)
    b = make("acceptor", 2)
    (hello_a,) = a.start()
    b.start()
    b.receive(hello_a)
    assert refused(b, m.Ping(n=1, wall_ms=1)) == m.CLOSE_PROTOCOL


def test_second_hello_is_4007() -> None:
    a = make("dialer", 1)
    b = make("acceptor", 2)
    (hello_a,) = a.start()
    b.start()
    b.receive(hello_a)
    assert refused(b, hello_a) == m.CLOSE_PROTOCOL


def test_a_failed_handshake_stays_failed() -> None:
    a = make("dialer", 1)
    b = make("acceptor", 2)
    (hello_a,) = a.start()
    b.start()
    assert refused(b, m.ClockMsg(vc={})) == m.CLOSE_PROTOCOL
    assert refused(b, hello_a) == m.CLOSE_PROTOCOL


def test_hello_and_auth_after_authentication_are_4007() -> None:
    a = make("dialer", 1)
    b = make("acceptor", 2)
    got_a, got_b = run(a, b)
    with pytest.raises(m.ProtocolError) as info:
        b.receive(got_b[0])
    assert info.value.close_code == m.CLOSE_PROTOCOL
    with pytest.raises(m.ProtocolError) as info:
        a.receive(got_a[1])
    assert info.value.close_code == m.CLOSE_PROTOCOL


def handshake_to_auth(seed: int = 0) -> tuple[Handshake, Handshake, m.Auth, m.Auth]:
    """a (dialer) and b (acceptor) after the hellos; returns the auths each sent."""
    a = make("dialer", 1, seed=seed)
    b = make("acceptor", 2, seed=seed)
    (hello_a,) = a.start()
    (hello_b,) = b.start()
    (auth_a,) = a.receive(hello_b)
    (auth_b,) = b.receive(hello_a)
    assert isinstance(auth_a, m.Auth) and isinstance(auth_b, m.Auth)
    return a, b, auth_a, auth_b


@pytest.mark.parametrize("flip", [0, 1, 31, 63])
def test_tampered_auth_signature_is_4002(flip: int) -> None:
    _a, b, auth_a, _ = handshake_to_auth()
    sig = bytearray(auth_a.sig)
    sig[flip] ^= 0x01
    assert refused(b, m.Auth(sig=bytes(sig))) == m.CLOSE_BAD_AUTH


def test_auth_signed_by_someone_else_is_4002() -> None:
    a, b, auth_a, _ = handshake_to_auth()
    payload = auth_payload(WS, "dialer", a.ident.actor, b.ident.actor, a.nonce, b.nonce)
    forged = ident(3).sign(payload)
    assert refused(b, m.Auth(sig=forged)) == m.CLOSE_BAD_AUTH
    # the genuine statement is exactly what a signed
    assert ident(1).sign(payload) == auth_a.sig


def test_replayed_auth_from_an_earlier_session_is_4002() -> None:
    _a1, _b1, old_auth_a, _ = handshake_to_auth(seed=1)
    _a2, b2, new_auth_a, _ = handshake_to_auth(seed=2)
    assert old_auth_a.sig != new_auth_a.sig
    assert refused(b2, old_auth_a) == m.CLOSE_BAD_AUTH


def test_reflected_auth_is_4002() -> None:
    # b's own auth sent back to it
    _a, b, _auth_a, auth_b = handshake_to_auth()
    assert refused(b, auth_b) == m.CLOSE_BAD_AUTH


@pytest.mark.parametrize("variant", ["role", "nonce_order", "actor_order"])
def test_auth_over_a_mirrored_statement_is_4002(variant: str) -> None:
    """A valid signature by the peer over the statement with role, nonces or actors swapped
    (what a reflection or a cross-session splice would give) does not verify."""
    a, b, auth_a, _ = handshake_to_auth()
    role = "dialer"
    own, peer = a.ident.actor, b.ident.actor
    n_own, n_peer = a.nonce, b.nonce
    if variant == "role":
        role = OTHER_ROLE[role]
    elif variant == "nonce_order":
        n_own, n_peer = n_peer, n_own
    else:
        own, peer = peer, own
    sig = a.ident.sign(auth_payload(WS, role, own, peer, n_own, n_peer))
    assert sig != auth_a.sig
    assert refused(b, m.Auth(sig=sig)) == m.CLOSE_BAD_AUTH


def test_cross_session_splice_is_4002() -> None:
    """An attacker relays a's hello into two links with b, swapping nonces: a's auth from one
    link never verifies on the other, since roles and nonce order differ."""
    # link 1: a dials b; link 2: b dials a
    a1 = make("dialer", 1, seed=1)
    b1 = make("acceptor", 2, seed=1)
    b2 = make("dialer", 2, seed=2)
    a2 = make("acceptor", 1, seed=2)
    (h_a1,) = a1.start()
    (h_b1,) = b1.start()
    (h_b2,) = b2.start()
    (h_a2,) = a2.start()
    (auth_a1,) = a1.receive(h_b1)
    b1.receive(h_a1)
    b2.receive(h_a2)
    assert refused(b2, auth_a1) == m.CLOSE_BAD_AUTH
    assert [x.T for x in a2.receive(h_b2)] == ["auth"]


@given(seed=st.integers(0, 2**32))
def test_many_sessions_authenticate(seed: int) -> None:
    a = make("dialer", 1, seed=seed)
    b = make("acceptor", 2, seed=seed)
    run(a, b)
    assert a.authenticated and b.authenticated


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        make("relay", 1)
    with pytest.raises(ValueError):
        make("dialer", 1, nonce=lambda: b"\x00" * 31)
    with pytest.raises(ValueError):
        make("dialer", 1, proto_min=2, proto_max=1)
    a = make("dialer", 1)
    a.start()
    with pytest.raises(RuntimeError):
        a.start()
