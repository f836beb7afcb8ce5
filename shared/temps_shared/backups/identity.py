"""The installation's backup identity (age X25519), derived from the master key alone, so the
one key users keep decrypts every backup with the standard `age` tool:
`age -d -i identity.txt artifact.age`."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"temps backup age identity v1"
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_HRP = "age-secret-key-"


def _polymod(values: list[int]) -> int:
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            checksum ^= generator[i] if (top >> i) & 1 else 0
    return checksum


def _bech32(hrp: str, data: bytes) -> str:
    """BIP 173 bech32 (what age uses for its keys) of `data` under `hrp`."""
    words, accumulator, bits = [], 0, 0
    for byte in data:
        accumulator = accumulator << 8 | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            words.append(accumulator >> bits & 31)
    if bits:
        words.append(accumulator << (5 - bits) & 31)
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    polymod = _polymod(expanded + words + [0] * 6) ^ 1
    checksum = [polymod >> 5 * (5 - i) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[w] for w in words + checksum)


def backup_identity(master_key: bytes) -> str:
    """The `AGE-SECRET-KEY-1…` line for this master key: the same key always gives the same
    identity (HKDF-SHA256 with a fixed purpose label)."""
    secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master_key)
    return _bech32(_HRP, secret).upper()
