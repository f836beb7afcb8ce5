"""The status projector: the only writer of the `service_status` read model.

It applies events one at a time in stream order and records the stream sequence it applied in
the same transaction, so a redelivered event is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
from nats.js import JetStreamContext
from opentelemetry import trace
from temps_shared.bus.consume import Delivery, consume, contract_message
from temps_shared.bus.topology import HEALTH_PROJECTOR_CONSUMER, PROJECTOR_CONSUMER
from temps_shared.messages import (
    MONITOR_OWNED,
    MONITOR_SOURCE,
    BackupDeleted,
    BackupEvent,
    BackupVerificationFailed,
    BackupVerified,
    Event,
    LinkRequested,
    LinkRevokeRequested,
    LinksConverged,
    PointInTimeRestoreEvent,
    RestoreCompleted,
    ServiceDeleted,
    ServiceFailed,
    ServiceOperationRequested,
    ServiceProvisioned,
    ServiceRequested,
    ServiceStatus,
    ServiceStatusChanged,
    WalArchivingEvent,
)
from temps_shared.store.backups import apply_backup_event
from temps_shared.store.types import Connection
from temps_shared.store.wal_archiving import apply_pitr_event, apply_wal_archiving_event

from temps_api.health_projection import (
    HEALTH_PROJECTION,
    apply_health_event,
    apply_monitor_status,
    apply_restore_or_deletion,
    apply_verification,
    forget_health,
    with_verification,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer("temps.projector")
PROJECTION = "service_status"

# What the status becomes when the user asks for an operation (stop waits for the worker).
REQUESTED_STATUS = {
    "start": ServiceStatus.PROVISIONING,
    "retry": ServiceStatus.PROVISIONING,
    "delete": ServiceStatus.DELETING,
}
# A parameters change to a running service: `updating`, with this reason, until the provisioner
# reports every member ready (`ServiceProvisioned`); it may restart members. The monitor cannot
# move a service out of `updating` (MONITOR_OWNED); the provisioner names the restart when it
# begins (`ServiceStatusChanged`, status `updating`). Resource caps are not here: they apply live
# and are answered member by member; a member the agent must recreate is announced `updating`
# by the agent itself before it stops.
UPDATING_REASONS = {"update": "applying a parameters change"}


def requested_status(operation: str, current: str | None) -> tuple[str, str | None] | None:
    """The status and reason an operation requested on a service with status `current` shows
    at once (None: the status stays until a worker reports). The one place of that rule: the
    projector applies it, and the PATCH answer shows what it will apply."""
    if operation in UPDATING_REASONS:
        running = current in MONITOR_OWNED
        return (ServiceStatus.UPDATING, UPDATING_REASONS[operation]) if running else None
    status = REQUESTED_STATUS.get(operation)
    return (status, None) if status is not None else None


async def _set(
    conn: Connection,
    event: Event,
    status: str,
    reason: str | None,
    generation: int | None,
    connection_info: object = None,
    replication: object = None,
) -> None:
    """Apply a worker's verdict unless the user asked for something newer meanwhile."""
    row = await conn.fetchrow(
        "SELECT status, requested_generation FROM service_status WHERE service_id = $1 FOR UPDATE",
        event.service_id,
    )
    if row is None:
        return
    if generation is not None and generation < row["requested_generation"]:
        log.info(
            "ignoring %s for generation %s: generation %s was requested since",
            event.type_name(),
            generation,
            row["requested_generation"],
        )
        return
    status, reason = await with_verification(conn, event.service_id, status, reason)
    await conn.execute(
        "UPDATE service_status SET status = $2, status_reason = $3,"
        " connection_info = coalesce($4, connection_info),"
        " replication = coalesce($6, replication),"
        " observed_generation = greatest(observed_generation, coalesce($5, 0)),"
        " updated_at = now() WHERE service_id = $1",
        event.service_id,
        status,
        reason,
        connection_info,
        generation,
        replication,
    )


async def apply_event(conn: Connection, event: Event) -> None:
    match event:
        case ServiceRequested():
            await conn.execute(
                "INSERT INTO service_status (service_id, status, requested_generation)"
                " VALUES ($1, $2, $3) ON CONFLICT (service_id) DO NOTHING",
                event.service_id,
                ServiceStatus.PROVISIONING,
                event.generation,
            )
        case ServiceOperationRequested():
            current = await conn.fetchval(
                "SELECT status FROM service_status WHERE service_id = $1 FOR UPDATE",
                event.service_id,
            )
            status, reason = requested_status(event.operation, current) or (None, None)
            await conn.execute(
                "UPDATE service_status"
                " SET requested_generation = greatest(requested_generation, $2),"
                " status = coalesce($3, status),"
                " status_reason = CASE WHEN $3::text IS NULL THEN status_reason ELSE $4 END,"
                " updated_at = now() WHERE service_id = $1",
                event.service_id,
                event.generation,
                status,
                reason,
            )
        case ServiceProvisioned():
            await _set(
                conn,
                event,
                ServiceStatus.OPERATIONAL,
                None,
                event.generation,
                event.connection_info,
                event.replication,
            )
        case ServiceStatusChanged() if event.source == MONITOR_SOURCE:
            await apply_monitor_status(conn, event)
        case ServiceStatusChanged():
            await _set(conn, event, event.status, event.reason, event.generation)
        case ServiceFailed():
            await _set(conn, event, ServiceStatus.FAILED, event.reason, event.generation)
        case LinkRequested():
            await conn.execute(
                "INSERT INTO link_status (link_id, status) VALUES ($1, 'pending')"
                " ON CONFLICT (link_id) DO UPDATE SET status = 'pending', updated_at = now()",
                event.link_id,
            )
        case LinkRevokeRequested():
            await conn.execute(
                "UPDATE link_status SET status = 'revoking', updated_at = now() WHERE link_id = $1",
                event.link_id,
            )
        case LinksConverged():
            # A link revoked since that reconcile began stays `revoking` until the next one.
            await conn.execute(
                "UPDATE link_status SET status = 'active', updated_at = now()"
                " WHERE link_id = ANY($1::uuid[]) AND status = 'pending'",
                event.active,
            )
            await conn.execute(
                "UPDATE link_status SET status = 'revoked', updated_at = now()"
                " WHERE link_id = ANY($1::uuid[])",
                event.revoked,
            )
        case BackupVerified() | BackupVerificationFailed():
            await apply_backup_event(conn, event)
            await apply_verification(conn, event)
        case BackupDeleted() | RestoreCompleted():
            # Either may lift a `degraded` left by a failed verification.
            await apply_backup_event(conn, event)
            await apply_restore_or_deletion(conn, event)
        case BackupEvent():
            await apply_backup_event(conn, event)
        case WalArchivingEvent():
            await apply_wal_archiving_event(conn, event)
        case PointInTimeRestoreEvent():
            await apply_pitr_event(conn, event)
        case ServiceDeleted():
            await conn.execute("DELETE FROM service_status WHERE service_id = $1", event.service_id)
            await forget_health(conn, event.service_id)
        case _:
            log.debug("projector ignores %s", event.type_name())


async def project(
    pool: asyncpg.Pool,
    delivery: Delivery,
    projection: str = PROJECTION,
    apply: Callable[[Connection, Event], Awaitable[None]] = apply_event,
) -> None:
    event = contract_message(delivery, Event)
    # Inside the consumer's span, which continues the event's `traceparent`.
    with tracer.start_as_current_span(
        f"project {event.type_name()}",
        attributes={
            "temps.projection": projection,
            "temps.service_id": str(event.service_id),
            "messaging.message.id": str(event.message_id),
        },
    ):
        await _project(pool, delivery, event, projection, apply)


async def _project(
    pool: asyncpg.Pool,
    delivery: Delivery,
    event: Event,
    projection: str,
    apply: Callable[[Connection, Event], Awaitable[None]],
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        last = await conn.fetchval(
            "SELECT last_seq FROM projector_offsets WHERE projection = $1 FOR UPDATE", projection
        )
        if last is not None and delivery.stream_seq <= last:
            return  # applied before a crash lost the ack
        await apply(conn, event)
        await conn.execute(
            "INSERT INTO projector_offsets (projection, last_seq) VALUES ($1, $2)"
            " ON CONFLICT (projection) DO UPDATE SET last_seq = EXCLUDED.last_seq",
            projection,
            delivery.stream_seq,
        )


async def run_projector(pool: asyncpg.Pool, js: JetStreamContext, stop: asyncio.Event) -> None:
    async def handle(delivery: Delivery) -> None:
        await project(pool, delivery)

    await consume(js, PROJECTOR_CONSUMER, handle, stop=stop, concurrency=1)


async def run_health_projector(
    pool: asyncpg.Pool, js: JetStreamContext, stop: asyncio.Event, retention: timedelta
) -> None:
    """The health stream's projector: same rules, its own stream and recorded sequence;
    checks older than `retention` are pruned as new ones arrive."""

    async def apply(conn: Connection, event: Event) -> None:
        await apply_health_event(conn, event, retention)

    async def handle(delivery: Delivery) -> None:
        await project(pool, delivery, HEALTH_PROJECTION, apply)

    await consume(js, HEALTH_PROJECTOR_CONSUMER, handle, stop=stop, concurrency=1)
