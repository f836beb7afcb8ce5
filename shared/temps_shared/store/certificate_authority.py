"""The per-installation CA, created once; its private key is stored encrypted."""

from __future__ import annotations

import asyncpg

from temps_shared.crypto import KeyRing
from temps_shared.tls import CertificateAuthority, create_ca

_AAD = b"installation-ca-key"


async def ensure_installation_ca(pool: asyncpg.Pool, keyring: KeyRing) -> CertificateAuthority:
    """The installation CA, creating it on first call (concurrent callers get the same one)."""
    row = await pool.fetchrow("SELECT cert_pem, key_ciphertext FROM certificate_authority")
    if row is None:
        fresh = create_ca()
        await pool.execute(
            "INSERT INTO certificate_authority (id, cert_pem, key_ciphertext) VALUES (1, $1, $2)"
            " ON CONFLICT (id) DO NOTHING",
            fresh.cert_pem,
            keyring.encrypt(fresh.key_pem.encode(), _AAD),
        )
        row = await pool.fetchrow("SELECT cert_pem, key_ciphertext FROM certificate_authority")
    assert row is not None
    key_pem = keyring.decrypt(row["key_ciphertext"], _AAD).decode()
    return CertificateAuthority(cert_pem=row["cert_pem"], key_pem=key_pem)


async def installation_ca_certificate(pool: asyncpg.Pool) -> str | None:
    """The CA certificate (public), or None before any service created it."""
    pem: str | None = await pool.fetchval("SELECT cert_pem FROM certificate_authority")
    return pem
