"""Conflict identity (spec 02 §1.8).

A conflict record is derived, identical on every peer: its id depends only on the entity and the
semantic field (`skey`, the field's slot, or `"$entity"` for a delete conflict), so every episode
of one field's conflicts shares one record and every replica names it the same way.
"""

from __future__ import annotations

from blake3 import blake3

CONFLICT_PREFIX = b"openprod/conflict"


def conflict_id(entity: bytes, skey: str) -> bytes:
    """The 16-byte conflict_id of semantic field `skey` on `entity`."""
    return blake3(CONFLICT_PREFIX + entity + skey.encode()).digest()[:16]
