"""The one bootstrap step: database migrations and the bus topology (idempotent)."""

from __future__ import annotations

import asyncpg
from nats.js import JetStreamContext

from temps_shared.bus.topology import (
    BACKUP_CONSUMER,
    HEALTH_PROJECTOR_CONSUMER,
    MONITOR_CONSUMER,
    PROJECTOR_CONSUMER,
    ensure_topology,
    provisioner_consumer,
)
from temps_shared.settings import TempsSettings
from temps_shared.store.migrations import apply_migrations


async def bootstrap(pool: asyncpg.Pool, js: JetStreamContext, settings: TempsSettings) -> None:
    await apply_migrations(pool)
    await ensure_topology(
        js,
        [
            provisioner_consumer(settings.command_ack_wait_s, settings.command_max_deliver),
            PROJECTOR_CONSUMER,
            HEALTH_PROJECTOR_CONSUMER,
            MONITOR_CONSUMER,
            BACKUP_CONSUMER,
        ],
    )
