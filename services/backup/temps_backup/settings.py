"""Backup worker settings (`TEMPS_BACKUP_*`, plus the shared `TEMPS_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from temps_shared.settings import TempsSettings


class BackupSettings(TempsSettings):
    backup_concurrency: int = Field(2, ge=1, description="Backups and restores run at once.")
    backup_work_dir: Path | None = Field(
        None,
        description="Where a restore spools a downloaded artifact while it is checked "
        "(system temp dir by default); needs room for the largest artifact.",
    )
    backup_lock_wait_s: float = Field(
        10.0, ge=0, description="How long a backup waits for another operation on its service."
    )
    backup_progress_s: float = Field(
        2.0, gt=0, description="How often a running backup announces its bytes so far."
    )
    backup_exec_timeout_s: float = Field(
        3600.0, gt=0, description="Bound of one restore command inside a service container."
    )
    backup_scheduler_period_s: float = Field(
        30.0,
        gt=0,
        description="How often the scheduler starts due scheduled backups, deletes expired "
        "ones (and those of deleted services) and fails overdue ones; its first round comes "
        "one period after start.",
    )
    backup_deadline_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="A backup still requested or running this long after it was asked for "
        "is failed.",
    )
    backup_scheduler_batch: int = Field(
        100, ge=1, description="At most this many schedules, deletions or deadlines per round."
    )
    backup_deleted_service_grace_s: float = Field(
        3600.0,
        ge=0,
        description="The backups of a deleted service are deleted this long after it (time "
        "to fetch the last one from the bucket, e.g. with `temps backup restore-service`).",
    )
