"""Where a backup lives in the bucket, and what its manifest says."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

MANIFEST = "manifest.json"
SUFFIX = ".zst.age"  # zstd inside, age outside
FORMAT_VERSION = 1


def backup_folder(engine: str, service_name: str, requested_at: datetime, backup_id: UUID) -> str:
    """`external_services/<engine>/<service name>/<YYYY>/<MM>/<DD>/<backup id>/`, dated when
    the backup was asked for (a retried backup lands in the same folder)."""
    day = requested_at.strftime("%Y/%m/%d")
    return f"external_services/{engine}/{service_name}/{day}/{backup_id}/"


def manifest(
    *,
    backup_id: UUID,
    service_id: UUID,
    service_name: str,
    engine: str,
    version: str,
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
        "service_id": str(service_id),
        "service_name": service_name,
        "engine": engine,
        "version": version,
        "kind": kind,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "compression": "zstd",
        "encryption": {"format": "age", "recipient": recipient},
        "size_bytes": sum(int(a["size"]) for a in artifacts),
        "artifacts": artifacts,
    }
