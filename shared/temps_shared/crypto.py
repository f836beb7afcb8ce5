"""Secrets at rest: AES-256-GCM under a master key file, with a key id so keys can rotate.

Ciphertext format: ``v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>``. The associated data
binds a ciphertext to its owner (e.g. a service id), so it cannot be pasted onto another row.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_FILE = "encryption_key"
_VERSION = "v1"


class DecryptionError(Exception):
    """The ciphertext is malformed, was made with an unknown key, or was tampered with."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _parse_hex_key(text: str, path: Path) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise ValueError(f"{path} must hold 64 hex characters") from exc
    if len(key) != 32:
        raise ValueError(f"{path} must hold 64 hex characters (a 256-bit key)")
    return key


def load_or_create_master_key(data_dir: Path) -> bytes:
    """Read `<data_dir>/encryption_key`, creating it (0600, 64 hex chars) on first use.

    Safe when several processes start at once: the file is created with O_EXCL.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / MASTER_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _parse_hex_key(path.read_text(), path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return _parse_hex_key(path.read_text(), path)


def write_private_file(path: Path, text: str, *, exclusive: bool = False) -> bool:
    """Write `text` (mode 0600) atomically; False when `exclusive` and the file exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    try:
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails if another process got there first
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


class KeyRing:
    """Encrypts with the primary key; decrypts with any key it holds (old keys after rotation)."""

    def __init__(self, primary: bytes, others: tuple[bytes, ...] = ()) -> None:
        self._primary_id = key_id(primary)
        self._keys = {key_id(k): AESGCM(k) for k in (primary, *others)}

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> KeyRing:
        return cls(load_or_create_master_key(data_dir))

    def encrypt(self, plaintext: bytes, associated_data: bytes = b"") -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self._primary_id].encrypt(nonce, plaintext, associated_data)
        payload = base64.b64encode(nonce + sealed).decode()
        return f"{_VERSION}:{self._primary_id}:{payload}"

    def decrypt(self, token: str, associated_data: bytes = b"") -> bytes:
        try:
            version, kid, payload = token.split(":", 2)
            raw = base64.b64decode(payload, validate=True)
        except ValueError as exc:
            raise DecryptionError("malformed ciphertext") from exc
        if version != _VERSION:
            raise DecryptionError(f"unsupported ciphertext version {version!r}")
        aead = self._keys.get(kid)
        if aead is None:
            raise DecryptionError(f"no key with id {kid!r} in the key ring")
        try:
            return aead.decrypt(raw[:12], raw[12:], associated_data)
        except Exception as exc:  # InvalidTag: wrong key or tampered data
            raise DecryptionError("ciphertext failed authentication") from exc


def generate_password(length: int = 32) -> str:
    """Alphanumeric only: safe in URLs, shells and command lines without quoting."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))
