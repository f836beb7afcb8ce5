"""Where a backup lives in the bucket, and what its manifest says."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any
from uuid import UUID

from temps_shared.crypto import DecryptionError, KeyRing
from temps_shared.store.services import ServiceRecord

MANIFEST = "manifest.json"
SEAL = "seal"  # the manifest's field holding its seal (outside what it seals)
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
    figures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest written last: its presence marks a complete backup. Its `figures` (what a
    verification compares) are encrypted, and the whole document is sealed (`check_seal`)."""
    document: dict[str, Any] = {
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
        "figures_encrypted": seal_figures(figures or {}, keyring, backup_id),
    }
    return seal(document, keyring)


def figures_aad(backup_id: UUID) -> bytes:
    return f"backup-figures:{backup_id}".encode()


def seal_figures(figures: dict[str, Any], keyring: KeyRing, backup_id: UUID) -> str:
    """The figures taken at backup time, encrypted (AES-GCM, bound to the backup): table names,
    row counts and hashes of key names say too much about the data to sit in the bucket."""
    return keyring.encrypt(json.dumps(figures).encode(), figures_aad(backup_id))


def open_figures(document: dict[str, Any], keyring: KeyRing) -> dict[str, Any]:
    """The figures of a (sealed) manifest; raises `DecryptionError` for another key."""
    token = document.get("figures_encrypted")
    if not token:
        return {}
    opened: dict[str, Any] = json.loads(
        keyring.decrypt(str(token), figures_aad(UUID(str(document["backup_id"]))))
    )
    return opened


class ManifestNotSealed(Exception):
    """The manifest is not sealed by this key: tampered with, another installation's, or
    written before manifests were sealed."""


def seal_aad(backup_id: UUID | str, digest: bytes) -> bytes:
    return f"backup-manifest-seal:{backup_id}:".encode() + digest.hex().encode()


def _canonical_digest(document: dict[str, Any]) -> bytes:
    """SHA-256 of the manifest without its seal, as canonical JSON (sorted keys, no spaces)."""
    body = {k: v for k, v in document.items() if k != SEAL}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).digest()


def seal(document: dict[str, Any], keyring: KeyRing) -> dict[str, Any]:
    """`document` with a seal over everything else in it (artifact names, sizes, SHA-256s,
    figures, the service section): an AES-GCM tag under the master key whose associated data
    is the backup id and the digest of the canonical JSON. Anyone may read the bucket's age
    recipient and encrypt to it; only the master key's holder can seal a manifest, so a
    forged artifact cannot be given a matching SHA-256."""
    digest = _canonical_digest(document)
    token = keyring.encrypt(b"", seal_aad(str(document["backup_id"]), digest))
    return {**{k: v for k, v in document.items() if k != SEAL}, SEAL: token}


def check_seal(document: dict[str, Any], keyring: KeyRing, backup_id: UUID) -> None:
    """Raises `ManifestNotSealed` unless `document` is backup `backup_id`'s manifest, unchanged
    since this installation (`keyring`) sealed it. Check it before anything in it is used."""
    problem = (
        f"the manifest of backup {backup_id} is not sealed by this installation's key "
        "(tampered, or another installation's)"
    )
    token = document.get(SEAL)
    if not isinstance(token, str):
        raise ManifestNotSealed(
            f"the manifest of backup {backup_id} has no seal (tampered, or written before "
            "backups were sealed: such backups cannot be restored)"
        )
    if str(document.get("backup_id")) != str(backup_id):
        raise ManifestNotSealed(problem)
    try:
        keyring.decrypt(token, seal_aad(backup_id, _canonical_digest(document)))
    except DecryptionError as exc:
        raise ManifestNotSealed(problem) from exc
