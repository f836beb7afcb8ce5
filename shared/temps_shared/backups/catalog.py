"""The backups a bucket holds, found from their manifests alone (no control plane): what
`temps backup list` shows and what `temps backup restore-service` looks a backup up in.
Blocking (boto3): call from a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from botocore.exceptions import BotoCoreError

from temps_shared.backups import layout
from temps_shared.backups.store import BackupStore, StoreError

ROOT = "external_services/"


@dataclass(frozen=True)
class StoredBackup:
    """One complete backup in the bucket (its manifest was written, so it is whole)."""

    folder: str  # `external_services/<engine>/<service>/<YYYY>/<MM>/<DD>/<backup id>/`
    manifest: dict[str, Any]

    @property
    def backup_id(self) -> UUID:
        return UUID(str(self.manifest["backup_id"]))

    @property
    def engine(self) -> str:
        return str(self.manifest["engine"])

    @property
    def service_name(self) -> str:
        return str(self.manifest["service_name"])

    def summary(self) -> dict[str, Any]:
        """What a listing shows (no secret: the credentials stay out)."""
        return {
            "id": str(self.backup_id),
            "engine": self.engine,
            "version": self.manifest.get("version"),
            "service": self.service_name,
            "kind": self.manifest.get("kind"),
            "finished_at": self.manifest.get("finished_at"),
            "size_bytes": self.manifest.get("size_bytes"),
            "artifacts": [a["name"] for a in self.manifest.get("artifacts", [])],
            "location": self.folder,
        }


def manifest_keys(store: BackupStore) -> list[str]:
    try:
        keys = store.keys(ROOT)
    except BotoCoreError as exc:  # no answer at all: endpoint, DNS, TLS
        raise StoreError(f"cannot reach {store.destination.endpoint}: {exc}") from exc
    return [k for k in keys if k.endswith("/" + layout.MANIFEST)]


def _read(store: BackupStore, key: str) -> StoredBackup:
    try:
        stored = StoredBackup(key.removesuffix(layout.MANIFEST), store.get_json(key))
    except BotoCoreError as exc:
        raise StoreError(f"cannot read {key}: {exc}") from exc
    stored.summary()  # raises if a field a listing shows is missing or malformed
    return stored


# Told of a manifest that cannot be read (its key, why); the listing goes on without it.
Unreadable = Callable[[str, Exception], None]


def list_stored(store: BackupStore, unreadable: Unreadable | None = None) -> list[StoredBackup]:
    """Every complete backup in the bucket, newest first. A manifest that cannot be read or
    makes no sense is skipped (and passed to `unreadable`): one damaged backup must not hide
    the others."""
    found = []
    for key in manifest_keys(store):
        try:
            found.append(_read(store, key))
        except (StoreError, ValueError, KeyError, TypeError) as exc:
            if unreadable is not None:
                unreadable(key, exc)
    return sorted(found, key=lambda b: str(b.manifest.get("finished_at", "")), reverse=True)


def find_stored(store: BackupStore, backup_id: UUID) -> StoredBackup:
    """The backup `backup_id`; LookupError when the bucket has no complete one."""
    suffix = f"/{backup_id}/{layout.MANIFEST}"
    keys = [k for k in manifest_keys(store) if k.endswith(suffix)]
    if not keys:
        raise LookupError(f"bucket {store.bucket} holds no complete backup {backup_id}")
    try:
        stored = _read(store, keys[0])
    except (StoreError, ValueError, KeyError, TypeError) as exc:
        raise LookupError(f"the manifest of backup {backup_id} is unreadable: {exc}") from exc
    if stored.backup_id != backup_id:
        raise LookupError(f"{keys[0]} names backup {stored.backup_id}, not {backup_id}")
    return stored
