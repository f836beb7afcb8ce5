"""The per-installation CA, created once. It lives in the data directory (`ca.pem`, `ca.key`,
0600), where the bus's set-up step finds it before any database runs, and in the control-plane
database (key encrypted), where every service reads it."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from temps_shared.crypto import KeyRing, write_private_file
from temps_shared.tls import CertificateAuthority, create_ca

_AAD = b"installation-ca-key"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"


def load_or_create_ca_files(data_dir: Path) -> CertificateAuthority:
    """The installation CA from the data directory, created there on first call."""
    cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
    if not key_path.exists():
        fresh = create_ca()
        # The key first: a reader that finds the certificate finds its key.
        if write_private_file(key_path, fresh.key_pem, exclusive=True):
            write_private_file(cert_path, fresh.cert_pem)
    return CertificateAuthority(cert_pem=cert_path.read_text(), key_pem=key_path.read_text())


async def ensure_installation_ca(
    pool: asyncpg.Pool, keyring: KeyRing, data_dir: Path
) -> CertificateAuthority:
    """The installation CA, stored on first call (concurrent callers get the same one).

    A new installation stores the CA of its data directory. An installation whose database
    already had a CA before the data directory held one keeps the database's for its services
    (their certificates and the CA handed to apps stay valid); only the bus uses the file's."""
    row = await pool.fetchrow("SELECT cert_pem, key_ciphertext FROM certificate_authority")
    if row is None:
        fresh = load_or_create_ca_files(data_dir)
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
