"""The engines the backup worker knows, by service type."""

from __future__ import annotations

from temps_shared.backups.postgres import PostgresBackup
from temps_shared.backups.protocol import EngineBackup
from temps_shared.backups.redis import RedisBackup

ENGINE_BACKUPS: dict[str, EngineBackup] = {"postgres": PostgresBackup(), "redis": RedisBackup()}
