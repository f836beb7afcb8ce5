"""Registering a service that a backup is restored into: the gateway's "restore as a new
service" and `temps backup restore-service` (a fresh installation, from the bucket and the
master key alone) share it. Everything is written in the caller's transaction: the service row,
the commands that provision it and restore into it (outbox, relayed by the gateway), and for a
bucket the installation did not know, its destination and the backup's catalogue row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from temps_shared.backups import layout
from temps_shared.backups.catalog import StoredBackup
from temps_shared.backups.destination import Destination
from temps_shared.crypto import KeyRing
from temps_shared.engines import ENGINES
from temps_shared.ids import is_valid_service_name
from temps_shared.messages import RestoreBackup
from temps_shared.store import outbox
from temps_shared.store.backup_destinations import insert_destination
from temps_shared.store.backups import request_restore
from temps_shared.store.service_registration import ServiceNameTaken
from temps_shared.store.service_registration import register_service as register_new_service
from temps_shared.store.types import Connection


class PlanError(Exception):
    """The service cannot be registered; the message says why (`code` for the API)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NameTaken(PlanError):
    def __init__(self, name: str) -> None:
        super().__init__("name_taken", f"name: a service named {name!r} exists; choose another")


@dataclass(frozen=True)
class NewService:
    name: str
    engine: str
    version: str
    parameters: dict[str, Any]
    resources: dict[str, Any]
    credentials: dict[str, str]


def manifest_credentials(manifest: dict[str, Any], keyring: KeyRing) -> dict[str, str]:
    """The service's admin credentials from the manifest (bound to its backup id); raises
    `temps_shared.crypto.DecryptionError` for another key."""
    section = manifest["service"]
    plain = keyring.decrypt(
        section["credentials_encrypted"], layout.credentials_aad(UUID(manifest["backup_id"]))
    )
    credentials: dict[str, str] = json.loads(plain)
    return credentials


def service_from_manifest(manifest: dict[str, Any], keyring: KeyRing, name: str) -> NewService:
    """The service the backup was taken of, under `name`, with its own credentials."""
    section = manifest["service"]
    return NewService(
        name=name,
        engine=str(section["engine"]),
        version=str(section["version"]),
        parameters=dict(section.get("parameters") or {}),
        resources=dict(section.get("resources") or {}),
        credentials=manifest_credentials(manifest, keyring),
    )


async def register_service(conn: Connection, keyring: KeyRing, new: NewService) -> UUID:
    """Insert the service and queue its provisioning, as the gateway's create does."""
    if not is_valid_service_name(new.name):
        raise PlanError(
            "invalid_input",
            f"name: {new.name!r} must be 2-38 lowercase letters, digits or dashes, "
            "starting with a letter",
        )
    if new.engine not in ENGINES:
        raise PlanError("unsupported", f"this installation has no {new.engine} engine")
    try:
        return await register_new_service(
            conn,
            keyring,
            name=new.name,
            service_type=new.engine,
            version=new.version,
            parameters=new.parameters,
            resources=new.resources,
            credentials=new.credentials,
        )
    except ServiceNameTaken as exc:
        raise NameTaken(new.name) from exc


async def queue_restore(conn: Connection, backup_id: UUID, service_id: UUID) -> UUID:
    """Mark the backup's restore requested and queue it into `service_id`; the restore id."""
    restore_id = uuid4()
    await request_restore(conn, backup_id, restore_id)
    await outbox.enqueue(
        conn, RestoreBackup(service_id=service_id, backup_id=backup_id, restore_id=restore_id)
    )
    return restore_id


async def register_destination(
    conn: Connection, keyring: KeyRing, destination: Destination
) -> UUID:
    """The bucket as an (inactive) destination row, reusing one naming the same bucket."""
    existing: UUID | None = await conn.fetchval(
        "SELECT id FROM backup_destinations WHERE endpoint = $1 AND bucket = $2"
        " AND access_key_id = $3 ORDER BY active DESC, created_at LIMIT 1",
        destination.endpoint,
        destination.bucket,
        destination.access_key_id,
    )
    if existing is not None:
        return existing
    return (await insert_destination(conn, keyring, destination, active=False)).id


async def register_stored_backup(
    conn: Connection, stored: StoredBackup, service_id: UUID, destination_id: UUID
) -> None:
    """A completed catalogue row for a backup found in the bucket, naming its destination."""
    manifest = stored.manifest
    taken = await conn.fetchval("SELECT 1 FROM backups WHERE backup_id = $1", stored.backup_id)
    if taken:
        raise PlanError(
            "backup_known",
            f"backup {stored.backup_id} is already in this installation's catalogue; restore "
            "it through the API (temps backup restore)",
        )
    await conn.execute(
        "INSERT INTO backups (backup_id, service_id, kind, state, location, bytes_done,"
        " size_bytes, artifacts, requested_at, started_at, finished_at, destination_id, trigger)"
        " VALUES ($1, $2, $3, 'completed', $4, $5, $5, $6, $7, $7, $8, $9, 'manual')",
        stored.backup_id,
        service_id,
        str(manifest.get("kind") or "logical"),
        stored.folder,
        int(manifest.get("size_bytes") or 0),
        len(manifest.get("artifacts", [])),
        _timestamp(manifest["started_at"]),
        _timestamp(manifest["finished_at"]),
        destination_id,
    )


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class QueuedRestore:
    service_id: UUID
    restore_id: UUID


async def restore_service(
    conn: Connection,
    keyring: KeyRing,
    stored: StoredBackup,
    destination: Destination,
    name: str,
) -> QueuedRestore:
    """A fresh installation gets the backed-up service back under `name` (its engine, version,
    settings and credentials), the bucket as a destination, the backup in its catalogue, and the
    provisioning and restore commands queued. Call inside a transaction. The manifest's seal
    is checked with `keyring` first: nothing is registered for a forged or foreign one."""
    try:
        layout.check_seal(stored.manifest, keyring, stored.backup_id)
    except layout.ManifestNotSealed as exc:
        raise PlanError("not_sealed", f"{exc}; nothing was restored") from exc
    service_id = await register_service(
        conn, keyring, service_from_manifest(stored.manifest, keyring, name)
    )
    destination_id = await register_destination(conn, keyring, destination)
    await register_stored_backup(conn, stored, service_id, destination_id)
    restore_id = await queue_restore(conn, stored.backup_id, service_id)
    return QueuedRestore(service_id, restore_id)
