"""Tests for openprod.core.identity (spec 03 §1) and openprod.core.ids (spec 01 §1.2)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openprod.core import identity, ids
from openprod.core.errors import IdentityError
from openprod.core.identity import Identity


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# --- ids --------------------------------------------------------------------------------------

def test_new_id_carries_v7_bits() -> None:
    for _ in range(200):
        b = ids.new_id()
        assert type(b) is bytes and len(b) == 16
        assert ids.is_v7(b)
        u = uuid.UUID(bytes=b)
        assert u.version == 7
        assert u.variant == uuid.RFC_4122


def test_new_ids_increase_within_a_process() -> None:
    xs = [ids.new_id() for _ in range(5000)]
    assert all(a < b for a, b in itertools.pairwise(xs))


def test_is_v7_rejects_other_versions_variants_and_types() -> None:
    v4 = uuid.UUID("12345678-1234-4234-8234-123456789abc").bytes
    assert not ids.is_v7(v4)
    good = bytearray(ids.new_id())
    bad_variant = bytearray(good)
    bad_variant[8] = (bad_variant[8] & 0x3F) | 0xC0  # variant 0b11
    assert not ids.is_v7(bytes(bad_variant))
    assert not ids.is_v7(bytes(good) + b"\x00")
    assert not ids.is_v7(bytes(good)[:15])
    assert not ids.is_v7(good)  # bytearray is not bytes
    assert not ids.is_v7(ids.to_text(bytes(good)))
    assert ids.is_id(bytes(16)) and not ids.is_v7(bytes(16))
    assert not ids.is_id(bytes(15))


def test_text_round_trip() -> None:
    b = ids.new_id()
    s = ids.to_text(b)
    assert len(s) == 36 and s.count("-") == 4 and s == s.lower()
    assert ids.from_text(s) == b
    assert ids.from_text(s.replace("-", "")) == b
    assert ids.from_text(s.upper()) == b


@given(st.binary(min_size=16, max_size=16))
def test_text_round_trip_any_16_bytes(b: bytes) -> None:
    assert ids.from_text(ids.to_text(b)) == b


@pytest.mark.parametrize("s", ["", "not-a-uuid", "1234", "g" * 32, "0" * 31])
def test_from_text_rejects_garbage(s: str) -> None:
    with pytest.raises(ValueError):
        ids.from_text(s)


# --- sign / verify ----------------------------------------------------------------------------

def test_sign_and_verify() -> None:
    a = Identity.generate("alice")
    b = Identity.generate("bob")
    msg = b"openprod/bundle/v1\nhello"
    sig = a.sign(msg)
    assert len(a.actor) == 32 and len(sig) == 64
    assert identity.verify(a.actor, msg, sig)
    assert not identity.verify(b.actor, msg, sig)  # wrong key
    assert not identity.verify(a.actor, msg + b"!", sig)  # wrong message
    assert not identity.verify(a.actor, msg, sig[:63])  # short signature
    assert not identity.verify(a.actor, msg, sig + b"\x00")  # long signature
    assert not identity.verify(a.actor, msg, bytes(64))
    assert not identity.verify(a.actor[:31], msg, sig)  # short key
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not identity.verify(a.actor, msg, flipped)


def test_verify_with_an_invalid_curve_point_is_false() -> None:
    a = Identity.generate()
    sig = a.sign(b"m")
    assert not identity.verify(b"\xff" * 32, b"m", sig)


def test_from_seed_is_deterministic() -> None:
    seed = bytes(range(32))
    a, b = Identity.from_seed(seed), Identity.from_seed(seed)
    assert a.actor == b.actor and a.seed == seed
    assert a.sign(b"x") == b.sign(b"x")  # Ed25519 is deterministic
    assert a.display_name == a.actor.hex()[:8]  # fallback name


def test_to_json_has_the_spec_fields() -> None:
    ident = Identity.generate("Ann", "laptop")
    doc = ident.to_json()
    assert set(doc) == {
        "version", "actor_id", "secret_seed", "display_name", "device_name", "created_at",
    }
    assert doc["actor_id"] == ident.actor.hex()
    assert bytes.fromhex(str(doc["secret_seed"])) == ident.seed
    assert doc["display_name"] == "Ann" and doc["device_name"] == "laptop"


# --- the identity file ------------------------------------------------------------------------

def test_create_writes_0600_file_in_0700_dir(tmp_path: Path) -> None:
    home = tmp_path / "home" / "nested"
    ident = identity.load_or_create(home, "Ann")
    path = home / identity.IDENTITY_FILE
    assert mode(home) == 0o700
    assert mode(path) == 0o600
    doc = json.loads(path.read_text())
    assert doc["actor_id"] == ident.actor.hex()
    assert doc["version"] == identity.IDENTITY_VERSION
    assert sorted(p.name for p in home.iterdir()) == [identity.IDENTITY_FILE]  # no temp left


def test_existing_open_home_is_tightened_to_0700(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    identity.load_or_create(home)
    assert mode(home) == 0o700


def test_reload_gives_the_same_actor(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = identity.load_or_create(home, "Ann", "box")
    before = (home / identity.IDENTITY_FILE).read_bytes()
    b = identity.load_or_create(home)
    c = identity.load(home / identity.IDENTITY_FILE)
    assert a.actor == b.actor == c.actor
    assert a.seed == b.seed
    assert b.display_name == "Ann" and b.device_name == "box"
    assert (home / identity.IDENTITY_FILE).read_bytes() == before  # loading never rewrites
    msg = b"payload"
    assert identity.verify(a.actor, msg, b.sign(msg))


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o644, 0o666, 0o660])
def test_group_or_other_readable_file_is_tightened_and_loads(
    tmp_path: Path, loose: int, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    a = identity.load_or_create(home)
    path = home / identity.IDENTITY_FILE
    os.chmod(path, loose)
    with caplog.at_level(logging.WARNING, logger="openprod.core.identity"):
        b = identity.load_or_create(home)
    assert b.actor == a.actor
    assert mode(path) == 0o600
    assert any("tightening" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b"42",
        b'"text"',
        b"{}",
        b'{"secret_seed": "zz"}',
        b'{"secret_seed": 12}',
        b'{"secret_seed": "0011"}',
        b'{"secret_seed": null}',
    ],
    ids=repr,
)
def test_unparsable_file_is_refused_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    home = tmp_path / "home"
    home.mkdir()
    path = home / identity.IDENTITY_FILE
    path.write_bytes(content)
    os.chmod(path, 0o600)
    before = path.stat()
    with pytest.raises(IdentityError) as ei:
        identity.load_or_create(home)
    assert ei.value.code == "identity"
    assert path.read_bytes() == content
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in home.iterdir()) == [identity.IDENTITY_FILE]


def test_mismatching_actor_id_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    identity.load_or_create(home)
    path = home / identity.IDENTITY_FILE
    doc = json.loads(path.read_text())
    doc["actor_id"] = Identity.generate().actor.hex()
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    content = path.read_bytes()
    with pytest.raises(IdentityError):
        identity.load_or_create(home)
    assert path.read_bytes() == content


def test_file_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    identity.load_or_create(home)
    path = home / identity.IDENTITY_FILE
    content = path.read_bytes()
    uid = path.stat().st_uid
    monkeypatch.setattr(identity.os, "getuid", lambda: uid + 1)
    with pytest.raises(IdentityError):
        identity.load(path)
    assert path.read_bytes() == content
