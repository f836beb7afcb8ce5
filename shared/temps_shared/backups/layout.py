"""Where a backup lives in the bucket, and what its manifest says."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from temps_shared.crypto import KeyRing
from temps_shared.store.services import ServiceRecord

MANIFEST = "manifest.json"
SUFFIX = ".zst.age"  # zstd inside, age outside
FORMAT_VERSION = 1


def backup_folder(engine: str, service_name: str, requested_at: datetime, backup_id: UUID) -> str:
    """`external_services/<engine>/<service name>/<YYYY>/<MM>/<DD>/<backup id>/`, dated when
    the backup was asked for (a retried backup lands in the same folder)."""
    day = requested_at.strftime("%Y/%m/%d")
    return f"external_services/{engine}/{service_name}/{day}/{backup_id}/"


def credentials_aad(backup_id: UUID) -> bytes:
    """The manifest's credentials are bound to their backup (not to a service id, which a
    restore onto a fresh installation does not keep)."""
    return f"backup-credentials:{backup_id}".encode()


def service_section(service: ServiceRecord, keyring: KeyRing, backup_id: UUID) -> dict[str, Any]:
    """What recreates the service with no control plane: its settings, and its admin
    credentials encrypted with the master key (AES-GCM, `temps_shared.crypto`)."""
    credentials = json.dumps(service.credentials(keyring)).encode()
    return {
        "id": str(service.id),
        "name": service.name,
        "engine": service.service_type,
        "version": service.version,
        "parameters": service.parameters,
        "resources": service.resources,
        "credentials_encrypted": keyring.encrypt(credentials, credentials_aad(backup_id)),
    }


def manifest(
    *,
    backup_id: UUID,
    service: ServiceRecord,
    keyring: KeyRing,
    kind: str,
    started_at: datetime,
    finished_at: datetime,
    recipient: str,
    artifacts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The manifest written last: its presence marks a complete backup."""
    return {
        "format_version": FORMAT_VERSION,
        "backup_id": str(backup_id),
        "service_id": str(service.id),
        "service_name": service.name,
        "engine": service.service_type,
        "version": service.version,
        "service": service_section(service, keyring, backup_id),
        "kind": kind,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "compression": "zstd",
        "encryption": {"format": "age", "recipient": recipient},
        "size_bytes": sum(int(a["size"]) for a in artifacts),
        "artifacts": artifacts,
    }
