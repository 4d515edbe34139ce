"""UUIDv7 identifiers: raw 16 bytes inside the engine and on the wire, hyphenated text in JSON."""

from __future__ import annotations

import uuid

import uuid_utils


def new_id() -> bytes:
    """A fresh UUIDv7 (monotonic within this process)."""
    return bytes(uuid_utils.uuid7().bytes)


def is_v7(b: object) -> bool:
    """True if b is 16 bytes carrying the UUID version 7 and RFC 9562 variant bits."""
    return type(b) is bytes and len(b) == 16 and (b[6] >> 4) == 7 and (b[8] >> 6) == 0b10


def is_id(b: object) -> bool:
    return type(b) is bytes and len(b) == 16


def to_text(b: bytes) -> str:
    """Hyphenated lowercase text, as str(uuid.UUID(bytes=b)) but without building the object."""
    if len(b) != 16:
        raise ValueError("an id is 16 bytes")
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def from_text(s: str) -> bytes:
    """Parse hyphenated (or plain hex) UUID text; ValueError on anything else."""
    return uuid.UUID(s).bytes
