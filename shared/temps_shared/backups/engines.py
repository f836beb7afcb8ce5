"""The backups of every engine, by service type: each engine brings its own
(`Engine.backup()`)."""

from __future__ import annotations

from temps_shared.backups.protocol import EngineBackup
from temps_shared.engines import ENGINES

ENGINE_BACKUPS: dict[str, EngineBackup] = {
    service_type: engine.backup() for service_type, engine in ENGINES.items()
}
