"""The engines the backup worker knows, by service type."""

from __future__ import annotations

from temps_backup.engine_backups import EngineBackup
from temps_backup.postgres_backup import PostgresBackup
from temps_backup.redis_backup import RedisBackup

ENGINE_BACKUPS: dict[str, EngineBackup] = {"postgres": PostgresBackup(), "redis": RedisBackup()}
