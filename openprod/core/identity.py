"""Ed25519 device identity: one keypair per device and OS user, kept in `identity.json` (0600).

The actor id is the 32-byte public key. The file is written atomically, refused when owned by
another user or unparsable (never silently replaced), and tightened to 0600 when too open.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import nacl.exceptions
import nacl.signing

from openprod.core.errors import IdentityError

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
IDENTITY_VERSION = 1


class Identity:
    def __init__(
        self,
        signing_key: nacl.signing.SigningKey,
        display_name: str = "",
        device_name: str = "",
    ) -> None:
        self._key = signing_key
        self.actor: bytes = bytes(signing_key.verify_key)
        self.display_name = display_name or self.actor.hex()[:8]
        self.device_name = device_name

    @classmethod
    def generate(cls, display_name: str = "", device_name: str = "") -> Identity:
        return cls(nacl.signing.SigningKey.generate(), display_name, device_name)

    @classmethod
    def from_seed(cls, seed: bytes, display_name: str = "", device_name: str = "") -> Identity:
        return cls(nacl.signing.SigningKey(seed), display_name, device_name)

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)

    def to_json(self) -> dict[str, object]:
        return {
            "version": IDENTITY_VERSION,
            "actor_id": self.actor.hex(),
            "secret_seed": self.seed.hex(),
            "display_name": self.display_name,
            "device_name": self.device_name,
            "created_at": int(time.time() * 1000),
        }


def verify(actor: bytes, message: bytes, signature: bytes) -> bool:
    """True iff signature is actor's valid Ed25519 signature of message."""
    if len(actor) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(actor).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_or_create(home: Path, display_name: str = "", device_name: str = "") -> Identity:
    """Load `<home>/identity.json`, creating home (0700) and a new identity if absent."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    path = home / IDENTITY_FILE
    if not path.exists():
        ident = Identity.generate(display_name, device_name or os.uname().nodename)
        _write_atomic(path, json.dumps(ident.to_json(), indent=2).encode())
        return ident
    return load(path)


def save(home: Path, ident: Identity) -> None:
    """Rewrite `<home>/identity.json` atomically (e.g. after a display-name change)."""
    _write_atomic(home / IDENTITY_FILE, json.dumps(ident.to_json(), indent=2).encode())


def load(path: Path) -> Identity:
    st = path.stat()
    if st.st_uid != os.getuid():
        raise IdentityError(f"{path} is owned by another user; refusing to use it", path=str(path))
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("%s was readable by others; tightening to 0600", path)
        os.chmod(path, 0o600)
    try:
        doc = json.loads(path.read_text())
        seed = bytes.fromhex(doc["secret_seed"])
        if len(seed) != 32:
            raise ValueError("seed must be 32 bytes")
        ident = Identity.from_seed(seed, doc.get("display_name", ""), doc.get("device_name", ""))
        if doc.get("actor_id") and doc["actor_id"] != ident.actor.hex():
            raise ValueError("actor_id does not match the secret seed")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError(
            f"{path} is unreadable ({exc}); refusing to start rather than mint a new identity",
            path=str(path),
        ) from exc
    return ident
