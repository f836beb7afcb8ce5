"""The engines the backup worker knows, by service type."""

from __future__ import annotations

from temps_shared.backups.postgres import PostgresBackup
from temps_shared.backups.protocol import EngineBackup
from temps_shared.backups.redis import RedisBackup
from temps_shared.backups.s3 import S3Backup

ENGINE_BACKUPS: dict[str, EngineBackup] = {
    "postgres": PostgresBackup(),
    "redis": RedisBackup(),
    "s3": S3Backup(),
}
