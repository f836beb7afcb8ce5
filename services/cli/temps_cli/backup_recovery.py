"""Disaster recovery with no API: read the bucket's manifests directly (`temps backup list`) and
register a backed-up service in a control-plane database (`temps backup restore-service`) from
the bucket and the master key alone. The gateway's outbox relay then publishes the commands that
provision the service and restore the backup into it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from botocore.exceptions import BotoCoreError
from temps_shared.backups.catalog import StoredBackup, Unreadable, find_stored, list_stored
from temps_shared.backups.destination import Destination
from temps_shared.backups.restore_plan import (
    PlanError,
    QueuedRestore,
    manifest_credentials,
    restore_service,
)
from temps_shared.backups.store import BackupStore, StoreError
from temps_shared.crypto import DecryptionError, KeyRing
from temps_shared.store.pool import create_pool

from temps_cli.client import CliError, ExitCode

DATABASE_WAIT_S = 10.0


@dataclass(frozen=True)
class Bucket:
    name: str
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    path_style: bool = True
    ca_pem: str | None = None  # trust this CA (PEM) for an https endpoint

    def destination(self) -> Destination:
        return Destination(
            endpoint=self.endpoint,
            bucket=self.name,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            path_style=self.path_style,
            ca_pem=self.ca_pem,
        )

    def store(self) -> BackupStore:
        try:
            return BackupStore(self.destination())
        except ValueError as exc:  # botocore refuses the endpoint URL itself
            raise CliError(f"--endpoint {self.endpoint}: {exc}", ExitCode.INPUT) from exc


def master_key(text: str) -> KeyRing:
    """The keyring of the 64-hex master key (`<data_dir>/encryption_key`)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise CliError(
            "--encryption-key: expected the 64 hex characters of <data_dir>/encryption_key",
            ExitCode.INPUT,
        )
    return KeyRing(key)


def read_ca_file(path: Path | None) -> str | None:
    """The PEM of `--ca-file` (a CA to trust for the endpoint's certificate)."""
    if path is None:
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--ca-file: cannot read {path}: {exc}", ExitCode.INPUT) from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise CliError(f"--ca-file: {path} holds no PEM certificate", ExitCode.INPUT)
    return text


def stored_backups(bucket: Bucket, unreadable: Unreadable | None = None) -> list[StoredBackup]:
    try:
        return list_stored(bucket.store(), unreadable)
    except (StoreError, BotoCoreError) as exc:  # refused, or no answer (endpoint, DNS, TLS)
        raise CliError(str(exc), ExitCode.PLATFORM) from exc


def stored_backup(bucket: Bucket, backup_id: UUID, keyring: KeyRing) -> StoredBackup:
    """The backup, with its credentials checked to open with the key (before anything is
    written)."""
    try:
        stored = find_stored(bucket.store(), backup_id)
    except (StoreError, BotoCoreError) as exc:
        raise CliError(str(exc), ExitCode.PLATFORM) from exc
    except LookupError as exc:
        raise CliError(str(exc), ExitCode.NOT_FOUND) from exc
    try:
        manifest_credentials(stored.manifest, keyring)
    except DecryptionError as exc:
        raise CliError(
            f"--encryption-key does not open backup {backup_id}: it was taken by an "
            "installation with another master key",
            ExitCode.INPUT,
        ) from exc
    return stored


async def _register(
    database_url: str, keyring: KeyRing, stored: StoredBackup, bucket: Bucket, name: str
) -> QueuedRestore:
    try:
        pool = await create_pool(database_url, min_size=1, max_size=1, wait_s=DATABASE_WAIT_S)
    except Exception as exc:
        raise CliError(f"cannot connect to --database-url: {exc}", ExitCode.PLATFORM) from exc
    try:
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('public.backups')") is None:
                raise CliError(
                    "the database at --database-url has no Temps schema: start the freshly "
                    "installed platform once (make up) so it creates it",
                    ExitCode.INPUT,
                )
            async with conn.transaction():
                try:
                    return await restore_service(conn, keyring, stored, bucket.destination(), name)
                except PlanError as exc:
                    conflict = exc.code in ("name_taken", "backup_known")
                    code = ExitCode.CONFLICT if conflict else ExitCode.INPUT
                    raise CliError(exc.message, code) from exc
    finally:
        await pool.close()


def register(
    database_url: str, keyring: KeyRing, stored: StoredBackup, bucket: Bucket, name: str
) -> QueuedRestore:
    """Register the service, the bucket, the backup and the commands, in one transaction."""
    return asyncio.run(_register(database_url, keyring, stored, bucket, name))
