"""Backup worker settings (`TEMPS_BACKUP_*`, plus the shared `TEMPS_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from temps_shared.settings import TempsSettings


class BackupSettings(TempsSettings):
    backup_concurrency: int = Field(2, ge=1, description="Backups and restores run at once.")
    backup_store_endpoint: str = Field(
        "http://127.0.0.1:8333",
        description="S3 endpoint of the backup store (the built-in SeaweedFS by default).",
    )
    backup_store_region: str = Field("us-east-1", description="Region the store signs for.")
    backup_store_access_key: str = Field("temps-backup", description="S3 access key id.")
    backup_store_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    backup_store_secret_key_file: Path | None = Field(
        None,
        description="A file holding the S3 secret key instead (the compose stack hands the "
        "built-in store's so: `backup_store_secret_key` in the data dir).",
    )
    backup_store_wait_s: float = Field(
        60.0, gt=0, description="How long a starting worker waits for the store to answer."
    )
    backup_bucket: str = Field("temps-backups", description="Bucket every backup goes into.")
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

    def store_secret_key(self) -> str:
        """The S3 secret key, from `backup_store_secret_key_file` when set."""
        if self.backup_store_secret_key_file is not None:
            return self.backup_store_secret_key_file.read_text().strip()
        return self.backup_store_secret_key.get_secret_value()
