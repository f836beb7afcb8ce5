"""Where backups go: an S3 bucket. The built-in store (SeaweedFS started with the platform) is
described by settings; another destination is a row of `backup_destinations` (its secret key
encrypted with the master key). A backup's catalogue row names its destination (NULL: the
built-in store), so a backup stays readable after the installation points somewhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from temps_shared.crypto import KeyRing
from temps_shared.settings import TempsSettings
from temps_shared.store.types import Executor


@dataclass(frozen=True)
class Destination:
    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"
    path_style: bool = True
    ca_pem: str | None = field(default=None, repr=False)  # trust this CA (PEM) for https
    id: UUID | None = None  # None: the built-in store


def builtin_destination(settings: TempsSettings) -> Destination:
    """The built-in store, as the settings describe it."""
    return Destination(
        endpoint=settings.backup_store_endpoint,
        bucket=settings.backup_bucket,
        access_key_id=settings.backup_store_access_key,
        secret_access_key=settings.store_secret_key(),
        region=settings.backup_store_region,
        path_style=True,
        ca_pem=_read(settings.backup_store_ca_file),
    )


def _read(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


def destination_secret_aad(destination_id: UUID) -> bytes:
    return f"backup-destination:{destination_id}".encode()


async def load_destination(
    conn: Executor, keyring: KeyRing, destination_id: UUID | None, builtin: Destination
) -> Destination:
    """The destination a backup row names (`builtin` for NULL)."""
    if destination_id is None:
        return builtin
    row = await conn.fetchrow("SELECT * FROM backup_destinations WHERE id = $1", destination_id)
    if row is None:
        raise LookupError(f"backup destination {destination_id} is not in the catalogue")
    return Destination(
        id=row["id"],
        endpoint=row["endpoint"],
        bucket=row["bucket"],
        access_key_id=row["access_key_id"],
        secret_access_key=keyring.decrypt(
            row["secret_ciphertext"], destination_secret_aad(row["id"])
        ).decode(),
        region=row["region"],
        path_style=row["path_style"],
        ca_pem=row["ca_pem"],
    )


async def active_destination_id(conn: Executor) -> UUID | None:
    """The destination new backups go to (None: the built-in store)."""
    value: UUID | None = await conn.fetchval("SELECT id FROM backup_destinations WHERE active")
    return value
