"""A service's health as the API shows it: the latest check, its history, uptime over 24 h."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from temps_shared.health import HealthMetrics
from temps_shared.messages import ServiceStatus
from temps_shared.store.types import Executor

UP_STATUSES = [ServiceStatus.OPERATIONAL, ServiceStatus.DEGRADED]


class HealthCheckPublic(BaseModel):
    checked_at: datetime
    status: str
    response_time_ms: float | None
    error: str | None = None


class ServiceHealthPublic(BaseModel):
    status: str
    status_reason: str | None
    checked_at: datetime | None
    response_time_ms: float | None
    uptime_24h_percent: float | None
    metrics: HealthMetrics
    history: list[HealthCheckPublic]


def uptime_percent(up: int, total: int) -> float | None:
    """Operational or degraded checks ÷ all checks, in percent (None without checks). Checks
    are only made while the service should run, so every check counts."""
    if total <= 0:
        return None
    return round(100.0 * up / total, 2)


async def service_health(
    conn: Executor, service_id: UUID, status: str, status_reason: str | None, limit: int
) -> ServiceHealthPublic:
    latest = await conn.fetchrow(
        "SELECT checked_at, response_time_ms, metrics FROM service_health WHERE service_id = $1",
        service_id,
    )
    counts = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE status = ANY($2::text[])) AS up, count(*) AS total"
        " FROM service_health_history"
        " WHERE service_id = $1 AND checked_at > now() - interval '24 hours'",
        service_id,
        UP_STATUSES,
    )
    rows = await conn.fetch(
        "SELECT checked_at, status, response_time_ms, error FROM service_health_history"
        " WHERE service_id = $1 ORDER BY checked_at DESC LIMIT $2",
        service_id,
        limit,
    )
    assert counts is not None
    metrics: dict[str, Any] = latest["metrics"] if latest else {}
    return ServiceHealthPublic(
        status=status,
        status_reason=status_reason,
        checked_at=latest["checked_at"] if latest else None,
        response_time_ms=latest["response_time_ms"] if latest else None,
        uptime_24h_percent=uptime_percent(counts["up"], counts["total"]),
        metrics=HealthMetrics.model_validate(metrics),
        history=[HealthCheckPublic(**dict(r)) for r in rows],
    )


async def wal_snapshot(conn: Executor, service_id: UUID) -> dict[str, Any] | None:
    snapshot: dict[str, Any] | None = await conn.fetchval(
        "SELECT snapshot FROM postgres_wal_health WHERE service_id = $1", service_id
    )
    return snapshot
