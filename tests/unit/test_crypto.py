from __future__ import annotations

import stat
from pathlib import Path

import pytest
from temps_shared.crypto import (
    DecryptionError,
    KeyRing,
    generate_password,
    key_id,
    load_or_create_master_key,
)


def test_master_key_is_created_once_with_owner_only_mode(tmp_path: Path) -> None:
    first = load_or_create_master_key(tmp_path / "data")
    again = load_or_create_master_key(tmp_path / "data")
    path = tmp_path / "data" / "encryption_key"
    assert first == again
    assert len(first) == 32
    assert len(path.read_text().strip()) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_malformed_master_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "encryption_key").write_text("not hex")
    with pytest.raises(ValueError, match="64 hex"):
        load_or_create_master_key(tmp_path)


def test_round_trip_carries_the_key_id() -> None:
    ring = KeyRing(b"k" * 32)
    token = ring.encrypt(b"secret", b"owner-1")
    assert token.startswith(f"v1:{key_id(b'k' * 32)}:")
    assert b"secret" not in token.encode()
    assert ring.decrypt(token, b"owner-1") == b"secret"


def test_ciphertext_is_bound_to_its_owner_and_tamper_evident() -> None:
    ring = KeyRing(b"k" * 32)
    token = ring.encrypt(b"secret", b"owner-1")
    with pytest.raises(DecryptionError):
        ring.decrypt(token, b"owner-2")
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(DecryptionError):
        ring.decrypt(tampered, b"owner-1")
    with pytest.raises(DecryptionError, match="malformed"):
        ring.decrypt("garbage", b"owner-1")


def test_old_keys_still_decrypt_after_rotation() -> None:
    old, new = b"o" * 32, b"n" * 32
    token = KeyRing(old).encrypt(b"secret")
    rotated = KeyRing(new, others=(old,))
    assert rotated.decrypt(token) == b"secret"
    assert rotated.encrypt(b"x").split(":")[1] == key_id(new)
    with pytest.raises(DecryptionError, match="no key"):
        KeyRing(new).decrypt(token)


def test_generated_passwords_are_url_safe_and_distinct() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(p.isalnum() and len(p) == 32 for p in passwords)
