"""The workspace lifecycle view (spec 03 §2): owner, recovery key, join mode, access keys, admits.

Derived on read from the `lifecycle_ops` set (CreateWorkspace, RecoverOwnership, and PutConfig /
DeleteConfig in the `workspace`, `access_key` and `admit` namespaces), interpreted in canonical
order `(hlc, op_id)`, so every peer derives the same view whatever order the ops arrived in:

- the first CreateWorkspace names the owner and the recovery key;
- a RecoverOwnership counts only if its `recovery_sig` verifies against the recovery key current
  at its position; it then names the new owner and key, so a reused (stale) secret is inert and
  of two concurrent recoveries signed with one key only the first in canonical order counts;
- `workspace` and `access_key` entries count only when authored by the owner at their position;
- `admit` entries (written by the member that accepted a joiner) all count: uses of a key are
  the number of `admit` entries naming it (a partition may overshoot `max_uses`, accepted).

Also: the access-key proof (`join_proof`), the recovery key derivation and the Crockford base32
codes shown to people.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import apsw
import attrs
from blake3 import blake3

from openprod.core import codec
from openprod.core import identity as idmod
from openprod.core.identity import Identity

RECOVER_CONTEXT = b"openprod-recover-v1"
RECOVERY_KDF = "openprod recovery v1"
ACCESS_KEY_KDF = "openprod access key v1"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LEN = 6


@attrs.define
class Lifecycle:
    owner: bytes | None = None
    recovery_pub: bytes | None = None
    name: str = ""
    join_mode: str = "open"
    keys: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # live access keys by key_id
    revoked: set[str] = attrs.field(factory=set)
    admitted: dict[bytes, str] = attrs.field(factory=dict)  # actor → key_id
    uses: dict[str, int] = attrs.field(factory=dict)
    recoveries: list[dict[str, Any]] = attrs.field(factory=list)  # valid ones, in order

    def live_keys(self, now_ms: int) -> dict[str, dict[str, Any]]:
        """Keys not revoked, not expired on this clock, with uses left."""
        out = {}
        for kid, k in self.keys.items():
            if kid in self.revoked:
                continue
            exp = k.get("expires_ms")
            if isinstance(exp, int) and exp <= now_ms:
                continue
            mx = k.get("max_uses")
            if isinstance(mx, int) and self.uses.get(kid, 0) >= mx:
                continue
            out[kid] = k
        return out


def derive(rows: Iterable[tuple[bytes, bytes, str, bytes]], ws: bytes) -> Lifecycle:
    """rows: (stamp, actor, t, canonical payload bytes), any order."""
    lc = Lifecycle()
    for _stamp, actor, t, pb in sorted(rows, key=lambda r: r[0]):
        p = codec.decode(pb)
        if t == "CreateWorkspace":
            if lc.owner is None:
                lc.owner, lc.recovery_pub, lc.name = p["owner"], p["recovery_pub"], p["name"]
        elif t == "RecoverOwnership":
            if lc.recovery_pub is not None and idmod.verify(
                    lc.recovery_pub, recovery_message(ws, p["new_owner"], p["new_recovery_pub"]),
                    p["recovery_sig"]):
                lc.owner, lc.recovery_pub = p["new_owner"], p["new_recovery_pub"]
                lc.recoveries.append({"new_owner": p["new_owner"].hex(), "by": actor.hex()})
        elif p["ns"] == "admit":
            if t == "PutConfig" and len(p["key"]) == 64:
                try:
                    joiner = bytes.fromhex(p["key"])
                except ValueError:
                    continue
                kid = p["value"].get("key_id") if isinstance(p["value"], dict) else None
                if isinstance(kid, str) and joiner not in lc.admitted:
                    lc.admitted[joiner] = kid
                    lc.uses[kid] = lc.uses.get(kid, 0) + 1
        elif actor != lc.owner:
            continue  # workspace / access_key entries by anyone else are inert
        elif p["ns"] == "workspace" and p["key"] == "join_mode":
            if t == "PutConfig" and p["value"] in ("open", "key"):
                lc.join_mode = p["value"]
        elif p["ns"] == "access_key":
            if t == "PutConfig" and isinstance(p["value"], dict):
                lc.keys[p["key"]] = dict(p["value"])
                lc.revoked.discard(p["key"])
            elif t == "DeleteConfig":
                lc.revoked.add(p["key"])
    return lc


def read(conn: apsw.Connection, ws: bytes) -> Lifecycle:
    rows = [(bytes(s), bytes(a), t, bytes(p)) for s, a, t, p in conn.execute(
        "SELECT stamp, actor, t, p FROM lifecycle_ops")]
    return derive(rows, ws)


# --- recovery ----------------------------------------------------------------------------------

def recovery_message(ws: bytes, new_owner: bytes, new_recovery_pub: bytes) -> bytes:
    return RECOVER_CONTEXT + ws + new_owner + new_recovery_pub


def recovery_identity(secret: bytes) -> Identity:
    """The recovery key pair: Ed25519 of seed blake3(secret, derive_key_context=…)."""
    seed = blake3(secret, derive_key_context=RECOVERY_KDF).digest()
    return Identity.from_seed(seed)


def new_recovery_secret() -> bytes:
    return secrets.token_bytes(32)


def b32(data: bytes) -> str:
    """Crockford base32, in groups of 4 for reading aloud or writing down."""
    n = int.from_bytes(data, "big")
    chars = []
    for _ in range((len(data) * 8 + 4) // 5):
        chars.append(CROCKFORD[n & 31])
        n >>= 5
    text = "".join(reversed(chars))
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4))


def unb32(text: str, nbytes: int) -> bytes:
    """Parse Crockford base32 (case-insensitive; dashes, spaces, I/L→1, O→0 tolerated)."""
    clean = text.upper().replace("-", "").replace(" ", "")
    clean = clean.translate(str.maketrans("ILO", "110"))
    n = 0
    for ch in clean:
        i = CROCKFORD.find(ch)
        if i < 0:
            raise ValueError(f"{ch!r} is not a base32 character")
        n = (n << 5) | i
    if n >> (nbytes * 8):
        raise ValueError("too many characters")
    if len(clean) != (nbytes * 8 + 4) // 5:
        raise ValueError("wrong length")
    return n.to_bytes(nbytes, "big")


# --- access keys -------------------------------------------------------------------------------

def new_code() -> str:
    return "".join(secrets.choice(CROCKFORD) for _ in range(CODE_LEN))


def normalize_code(code: str) -> str:
    c = code.strip().upper().replace("-", "").replace(" ", "").translate(
        str.maketrans("ILO", "110"))
    if len(c) != CODE_LEN or any(ch not in CROCKFORD for ch in c):
        raise ValueError(f"an access code is {CODE_LEN} letters and digits")
    return c


def join_proof(ws: bytes, joiner: bytes, acceptor_nonce: bytes, code: str) -> bytes:
    """blake3(ws‖joiner‖acceptor_nonce, key=K), K = blake3(ws‖CODE, derive_key_context=…)."""
    key = blake3(ws + normalize_code(code).encode(), derive_key_context=ACCESS_KEY_KDF).digest()
    return blake3(ws + joiner + acceptor_nonce, key=key).digest()


def match_key(lc: Lifecycle, ws: bytes, joiner: bytes, our_nonce: bytes, proof: bytes,
              now_ms: int) -> str | None:
    """The key_id of the live access key the joiner's proof was made with, if any."""
    for kid, k in sorted(lc.live_keys(now_ms).items()):
        code = k.get("code")
        if not isinstance(code, str):
            continue
        try:
            want = join_proof(ws, joiner, our_nonce, code)
        except ValueError:
            continue
        if secrets.compare_digest(want, proof):
            return kid
    return None
