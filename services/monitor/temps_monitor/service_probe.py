"""Probe one service and announce what was found.

Reads the desired state (services), the read models (status, the previous verdict and WAL
snapshot) and Docker; emits `HealthChecked`, `WalHealthRecorded` (PostgreSQL) on the health
stream and, when the verdict should change the service's status, `ServiceStatusChanged`
(source "monitor") on the event stream. Nothing is written to the database here: the
projectors turn the events into the read models.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from uuid import UUID

from temps_shared.bus.publish import publish_event
from temps_shared.engines import ENGINES, pgbouncer
from temps_shared.engines.base import dial_endpoints
from temps_shared.engines.postgres import PostgresParameters
from temps_shared.health import HealthMetrics, PostgresWalHealth
from temps_shared.ids import container_name
from temps_shared.messages import (
    MONITOR_SOURCE,
    HealthChecked,
    Role,
    ServiceStatus,
    ServiceStatusChanged,
    WalHealthRecorded,
    utcnow,
)
from temps_shared.store import ports
from temps_shared.store.services import ServiceRecord, get_service

from temps_monitor import engine_probes
from temps_monitor.context import Monitor
from temps_monitor.engine_probes import Budget, ProbeFailedError, ProbeOutcome
from temps_monitor.verdict import Verdict, judge, status_change
from temps_monitor.wal_health import snapshot

log = logging.getLogger(__name__)
# The parameter that sizes each type's storage allocation (Redis has none: it is a cache).
ALLOCATION_PARAMETER = {"postgres": "storage_gb", "s3": "size_gb"}
DATA_MOUNT = "/data"  # Redis and S3 volumes (PostgreSQL's storage is measured in SQL)

_CONTEXT = """
SELECT st.status, st.status_reason, h.status AS last_status, h.reason AS last_reason,
       (w.snapshot ->> 'archiver_failed_count')::bigint AS last_failed_count
FROM services s
LEFT JOIN service_status st ON st.service_id = s.id
LEFT JOIN service_health h ON h.service_id = s.id
LEFT JOIN postgres_wal_health w ON w.service_id = s.id
WHERE s.id = $1
"""


@dataclass(frozen=True)
class Target:
    service: ServiceRecord
    status: str | None
    status_reason: str | None
    previous: Verdict | None  # the monitor's verdict at the previous check
    previous_failed_count: int | None  # pg_stat_archiver.failed_count then
    local_ports: dict[str, int]


async def load_target(m: Monitor, service_id: UUID) -> Target | None:
    """What probing `service_id` needs; None unless it exists and should run."""
    service = await get_service(m.pool, service_id)
    if service is None or service.purged or service.desired_state != "running":
        return None
    row = await m.pool.fetchrow(_CONTEXT, service_id)
    assert row is not None
    previous = None
    if row["last_status"] is not None:
        previous = Verdict(ServiceStatus(row["last_status"]), row["last_reason"])
    return Target(
        service=service,
        status=row["status"],
        status_reason=row["status_reason"],
        previous=previous,
        previous_failed_count=row["last_failed_count"],
        local_ports=await ports.local_ports(m.pool, service_id),
    )


def storage_allocated(m: Monitor, service: ServiceRecord) -> int | None:
    name = ALLOCATION_PARAMETER.get(service.service_type)
    engine = ENGINES.get(service.service_type)
    if name is None or engine is None:
        return None
    units: int = getattr(engine.parameters_model().model_validate(service.parameters), name)
    return units * m.settings.storage_unit_bytes


async def _engine_probe(m: Monitor, target: Target, container: str) -> ProbeOutcome:
    """Raises ProbeFailedError when the service does not answer."""
    service = target.service
    engine = ENGINES[service.service_type]
    endpoints = dial_endpoints(
        m.settings.service_addressing, engine.ports, container, target.local_ports
    )
    credentials = service.credentials(m.keyring)
    budget = Budget(m.settings.monitor_probe_timeout_s)
    if service.service_type == "postgres":
        if pgbouncer.PORT_NAME not in target.local_ports:  # no pooler (yet)
            return await engine_probes.probe_postgres(m, endpoints, credentials, budget)
        pooler_endpoint = dial_endpoints(
            m.settings.service_addressing,
            {pgbouncer.PORT_NAME: pgbouncer.PORT},
            pgbouncer.container(service),
            target.local_ports,
        )[pgbouncer.PORT_NAME]
        # Side by side, each with its own bound: a slow server does not starve the pooler's
        # check, nor the other way round.
        outcome, (figures, pooler_error) = await asyncio.gather(
            engine_probes.probe_postgres(m, endpoints, credentials, budget),
            engine_probes.probe_pooler(
                m, pooler_endpoint, credentials, Budget(m.settings.monitor_probe_timeout_s)
            ),
        )
        outcome.pooler, outcome.pooler_error = figures, pooler_error
        if pooler_error is not None:
            outcome.notes.append(f"pooler not answering: {pooler_error}")
        return outcome
    if service.service_type == "redis":
        return await engine_probes.probe_redis(
            m, endpoints, credentials, container, DATA_MOUNT, budget
        )
    return await engine_probes.probe_s3(m, endpoints, credentials, container, DATA_MOUNT, budget)


async def _replicas_down(m: Monitor, service: ServiceRecord) -> list[str]:
    """PostgreSQL read replicas that should run and do not (e.g. `replica-1`)."""
    if service.service_type != "postgres":
        return []
    wanted = PostgresParameters.model_validate(service.parameters).replicas
    down = []
    for n in range(1, wanted + 1):
        state = await m.runtime.inspect(container_name(service.service_type, service.name, n))
        if state is None or not state.running:
            down.append(f"replica-{n}")
    return down


async def probe_service(m: Monitor, service_id: UUID) -> HealthChecked | None:
    """Probe the service if it should run; the `HealthChecked` announced (None: not probed)."""
    target = await load_target(m, service_id)
    if target is None or target.service.service_type not in ENGINES:
        return None
    service = target.service
    name = container_name(service.service_type, service.name)
    checked_at = utcnow()
    state = await m.runtime.inspect(name)
    container_status = state.status if state is not None else None
    outcome = ProbeOutcome()
    error = None if container_status == "running" else f"{name} is {container_status or 'missing'}"
    if container_status == "running":
        try:
            outcome = await _engine_probe(m, target, name)
        except ProbeFailedError as exc:
            error = str(exc)
    wal: PostgresWalHealth | None = None
    if outcome.wal is not None:
        wal = snapshot(outcome.wal, checked_at, target.previous_failed_count)
    allocated = storage_allocated(m, service)
    replicas_down = await _replicas_down(m, service) if container_status == "running" else []
    verdict = judge(
        container_status=container_status,
        probe_error=error,
        storage_used=outcome.storage_used_bytes,
        storage_allocated=allocated,
        wal_warnings=wal.warnings if wal else (),
        replicas_down=replicas_down,
        pooler_down=outcome.pooler_error is not None,
    )
    checked = HealthChecked(
        service_id=service.id,
        checked_at=checked_at,
        status=verdict.status,
        reason=verdict.reason,
        response_time_ms=outcome.response_time_ms,
        error=error or ("; ".join(outcome.notes) or None),
        metrics=HealthMetrics(
            connections=outcome.connections,
            storage_used_bytes=outcome.storage_used_bytes,
            storage_allocated_bytes=allocated,
            slow_queries=outcome.slow_queries,
            replication=outcome.replication,
            pooler=outcome.pooler,
        ),
        generation=service.generation,
        monitor=m.settings.monitor_instance_id,
    )
    # The snapshot first: the health projector applies the stream in order, so a check that
    # is visible has its WAL snapshot visible too.
    if wal is not None:
        await publish_event(
            m.js, WalHealthRecorded(service_id=service.id, snapshot=wal), origin=Role.MONITOR
        )
    await publish_event(m.js, checked, origin=Role.MONITOR)
    change = status_change(target.status, target.status_reason, target.previous, verdict)
    if change is not None:
        log.info(
            "%s: %s → %s (%s)",
            service.name,
            target.status,
            change.status,
            change.reason or "healthy",
            extra={"service_id": str(service.id)},
        )
        await publish_event(
            m.js,
            ServiceStatusChanged(
                service_id=service.id,
                # When the check was made: the projector ignores it if a newer check exists.
                occurred_at=checked_at,
                status=change.status,
                reason=change.reason,
                generation=service.generation,
                source=MONITOR_SOURCE,
            ),
            origin=Role.MONITOR,
        )
    return checked
