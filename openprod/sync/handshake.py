"""The per-link handshake state machine (spec 03 §5 Handshake), sans I/O.

Both sides call `start()` and send the returned `hello`; every received message goes through
`receive`, which returns the messages to send or raises `ProtocolError` with the close code:

1. `hello`: highest common protocol version (none → 4003); foreign `ws`, or both genesis hashes
   known and unequal → 4001 (`details["collision"]` is true for the latter, the runtime raises
   `sync_workspace_collision`); the peer claims our own actor → 4006. Then we send `auth`.
2. `auth`: `sig` = Ed25519 over `"openprod-sync-auth-v1"‖ws‖role‖own_actor‖peer_actor‖
   own_nonce‖peer_nonce` from the signer's point of view (role 0 dialer, 1 acceptor). We check
   the peer's with its role and the actor and nonce order swapped, so neither a reflected
   `auth` (our own, sent back) nor one replayed from an earlier session (other nonces)
   verifies → 4002. Once it verifies the link is `authenticated` and we send our `clock`.

Anything but `hello`/`auth` before authentication, or either of them out of order, → 4007.
The join gate (4004) and duplicate links (4005) are the runtime's: it reads `peer_join` and
`peer_actor` once `authenticated`. A `list` request never reaches this machine.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Literal

from openprod.core import identity as idmod
from openprod.core.identity import Identity
from openprod.sync import messages as m

AUTH_CONTEXT = b"openprod-sync-auth-v1"
ROLE_BYTE = {"dialer": b"\x00", "acceptor": b"\x01"}
OTHER_ROLE = {"dialer": "acceptor", "acceptor": "dialer"}

Role = Literal["dialer", "acceptor"]
VcSource = Mapping[bytes, bytes] | Callable[[], Mapping[bytes, bytes]]


def auth_payload(
    ws: bytes,
    role: str,
    own_actor: bytes,
    peer_actor: bytes,
    own_nonce: bytes,
    peer_nonce: bytes,
) -> bytes:
    """The bytes the side playing `role` signs in its `auth`."""
    return AUTH_CONTEXT + ws + ROLE_BYTE[role] + own_actor + peer_actor + own_nonce + peer_nonce


def _random_nonce() -> bytes:
    return secrets.token_bytes(m.NONCE_SIZE)


class Handshake:
    """One link's handshake: `start()`, then `receive(msg)` until `authenticated`."""

    def __init__(
        self,
        role: Role,
        ident: Identity,
        ws: bytes,
        genesis_hash: bytes | None,
        *,
        name: str = "",
        device: str = "",
        sw: str = "openprod",
        proto_min: int = m.PROTO_VERSION,
        proto_max: int = m.PROTO_VERSION,
        nonce: Callable[[], bytes] = _random_nonce,
        clock_vc: VcSource | None = None,
        join: Callable[[m.Hello], bytes | None] | None = None,
    ) -> None:
        if role not in ROLE_BYTE:
            raise ValueError(f"role must be dialer or acceptor, not {role!r}")
        if not 1 <= proto_min <= proto_max:
            raise ValueError("need 1 <= proto_min <= proto_max")
        self.role: Role = role
        self.ident = ident
        self.ws = ws
        self.genesis_hash = genesis_hash
        self.name = name or ident.display_name
        self.device = device or ident.device_name
        self.sw = sw
        self.proto_min = proto_min
        self.proto_max = proto_max
        self.nonce = nonce()
        if type(self.nonce) is not bytes or len(self.nonce) != m.NONCE_SIZE:
            raise ValueError("the nonce source must give 32 bytes")
        self._clock_vc = clock_vc
        self._join = join
        self.state = "new"  # new → hello_sent → auth_sent → authenticated | failed
        self.peer_hello: m.Hello | None = None
        self.peer_join: bytes | None = None
        self.version: int | None = None

    # --- public view ---------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self.state == "authenticated"

    @property
    def peer_actor(self) -> bytes | None:
        return self.peer_hello.actor if self.peer_hello is not None else None

    # --- driving -------------------------------------------------------------------------------

    def hello(self) -> m.Hello:
        return m.Hello(
            proto_min=self.proto_min,
            proto_max=self.proto_max,
            ws=self.ws,
            genesis=self.genesis_hash,
            actor=self.ident.actor,
            nonce=self.nonce,
            name=self.name[: m.MAX_TEXT],
            device=self.device[: m.MAX_TEXT],
            sw=self.sw[: m.MAX_TEXT],
        )

    def start(self) -> list[m.Message]:
        """Our opening `hello` (once)."""
        if self.state != "new":
            raise RuntimeError("the handshake has already started")
        self.state = "hello_sent"
        return [self.hello()]

    def receive(self, msg: m.Message) -> list[m.Message]:
        """Feed one received message; returns what to send, or raises ProtocolError."""
        if self.state == "failed":
            raise m.ProtocolError(m.CLOSE_PROTOCOL, "the handshake already failed")
        try:
            return self._receive(msg)
        except m.ProtocolError:
            self.state = "failed"
            raise

    def _receive(self, msg: m.Message) -> list[m.Message]:
        out: list[m.Message] = []
        if self.state == "new":
            out += self.start()
        if isinstance(msg, m.Hello):
            if self.peer_hello is not None:
                raise m.ProtocolError(m.CLOSE_PROTOCOL, "a second hello")
            self._check_hello(msg)
            self.peer_hello = msg
            self.state = "auth_sent"
            join = self._join(msg) if self._join is not None else None
            out.append(m.Auth(sig=self.ident.sign(self._own_payload()), join=join))
            return out
        if isinstance(msg, m.Auth):
            if self.state != "auth_sent":
                raise m.ProtocolError(m.CLOSE_PROTOCOL, f"auth while {self.state}")
            assert self.peer_hello is not None
            if not idmod.verify(self.peer_hello.actor, self._peer_payload(), msg.sig):
                raise m.ProtocolError(m.CLOSE_BAD_AUTH, "bad auth signature")
            self.peer_join = msg.join
            self.state = "authenticated"
            out.append(m.ClockMsg(vc=self._vc(), full=False))
            return out
        raise m.ProtocolError(
            m.CLOSE_PROTOCOL, f"{msg.T} during the handshake", t=msg.T, state=self.state
        )

    # --- checks --------------------------------------------------------------------------------

    def _check_hello(self, h: m.Hello) -> None:
        low = max(self.proto_min, h.proto_min)
        high = min(self.proto_max, h.proto_max)
        if low > high:
            raise m.ProtocolError(
                m.CLOSE_NO_COMMON_VERSION,
                "no common protocol version",
                ours=[self.proto_min, self.proto_max],
                theirs=[h.proto_min, h.proto_max],
            )
        if h.ws != self.ws:
            raise m.ProtocolError(m.CLOSE_WRONG_WORKSPACE, "peer is in another workspace")
        if h.genesis is not None and self.genesis_hash is not None and (
            h.genesis != self.genesis_hash
        ):
            raise m.ProtocolError(
                m.CLOSE_WRONG_WORKSPACE, "peer's workspace has another genesis", collision=True
            )
        if h.actor == self.ident.actor:
            raise m.ProtocolError(m.CLOSE_SELF, "peer is ourselves")
        self.version = high

    def _own_payload(self) -> bytes:
        assert self.peer_hello is not None
        return auth_payload(
            self.ws, self.role, self.ident.actor, self.peer_hello.actor,
            self.nonce, self.peer_hello.nonce,
        )

    def _peer_payload(self) -> bytes:
        assert self.peer_hello is not None
        return auth_payload(
            self.ws, OTHER_ROLE[self.role], self.peer_hello.actor, self.ident.actor,
            self.peer_hello.nonce, self.nonce,
        )

    def _vc(self) -> dict[bytes, bytes]:
        src = self._clock_vc
        if src is None:
            return {}
        vc = src() if callable(src) else src
        return dict(vc)
