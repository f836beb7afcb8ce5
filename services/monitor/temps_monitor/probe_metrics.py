"""The monitor's Prometheus metrics: probe results by verdict and duration, and per service
(labelled by id, name and type) its status, uptime, connections, storage and WAL size as of its
latest probe by this replica. A service no longer probed (deleted, stopped) loses its series."""

from __future__ import annotations

import contextlib
import logging
from uuid import UUID

from prometheus_client import Counter, Gauge, Histogram
from temps_shared.messages import HealthChecked, ServiceStatus
from temps_shared.metrics import LATENCY_BUCKETS, REGISTRY

from temps_monitor.context import Monitor

log = logging.getLogger(__name__)
SERVICE_LABELS = ["service_id", "service_name", "service_type"]
UP = (ServiceStatus.OPERATIONAL, ServiceStatus.DEGRADED)
VERDICTS = (ServiceStatus.OPERATIONAL, ServiceStatus.DEGRADED, ServiceStatus.DOWN)

PROBES = Counter(
    "temps_probes",
    "Service probes made, by service type and verdict (operational, degraded, down; error: the "
    "probe itself failed).",
    ["service_type", "verdict"],
    registry=REGISTRY,
)
PROBE_DURATION = Histogram(
    "temps_probe_duration_seconds",
    "Duration of one service probe, by service type.",
    ["service_type"],
    buckets=(*LATENCY_BUCKETS, 30),
    registry=REGISTRY,
)
SERVICE_UP = Gauge(
    "temps_service_up",
    "1 when the latest probe found the service up (operational or degraded), else 0.",
    SERVICE_LABELS,
    registry=REGISTRY,
)
SERVICE_STATUS = Gauge(
    "temps_service_status",
    "1 for the verdict of the service's latest probe, 0 for the others.",
    [*SERVICE_LABELS, "status"],
    registry=REGISTRY,
)
SERVICE_UPTIME = Gauge(
    "temps_service_uptime_ratio",
    "Checks that found the service up ÷ all its checks, over the last 24 h (0..1).",
    SERVICE_LABELS,
    registry=REGISTRY,
)
SERVICE_CONNECTIONS = Gauge(
    "temps_service_connections",
    "Client connections at the latest probe.",
    SERVICE_LABELS,
    registry=REGISTRY,
)
SERVICE_STORAGE_USED = Gauge(
    "temps_service_storage_used_bytes",
    "Storage in use at the latest probe.",
    SERVICE_LABELS,
    registry=REGISTRY,
)
SERVICE_STORAGE_ALLOCATED = Gauge(
    "temps_service_storage_allocated_bytes",
    "Storage allocated to the service (storage_gb / size_gb).",
    SERVICE_LABELS,
    registry=REGISTRY,
)
SERVICE_WAL = Gauge(
    "temps_service_wal_bytes",
    "PostgreSQL: size of pg_wal in the latest recorded WAL snapshot.",
    SERVICE_LABELS,
    registry=REGISTRY,
)
SERVICE_RESPONSE = Gauge(
    "temps_service_probe_response_seconds",
    "Time the service took to answer the latest liveness probe.",
    SERVICE_LABELS,
    registry=REGISTRY,
)
PER_SERVICE = (
    SERVICE_UP,
    SERVICE_UPTIME,
    SERVICE_CONNECTIONS,
    SERVICE_STORAGE_USED,
    SERVICE_STORAGE_ALLOCATED,
    SERVICE_WAL,
    SERVICE_RESPONSE,
)

_FACTS = """
SELECT s.name, s.service_type,
       (SELECT count(*) FILTER (WHERE h.status = ANY($2::text[]))::float8 / nullif(count(*), 0)
          FROM service_health_history h
         WHERE h.service_id = s.id AND h.checked_at > now() - interval '24 hours') AS uptime,
       (SELECT (w.snapshot ->> 'pg_wal_bytes')::bigint
          FROM postgres_wal_health w WHERE w.service_id = s.id) AS wal_bytes
FROM services s WHERE s.id = $1
"""

# The label values this replica exports per service, to drop them when the service goes.
_exported: dict[UUID, tuple[str, str, str]] = {}


def _forget(service_id: UUID) -> None:
    labels = _exported.pop(service_id, None)
    if labels is None:
        return
    for gauge in PER_SERVICE:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    for status in VERDICTS:
        with contextlib.suppress(KeyError):
            SERVICE_STATUS.remove(*labels, status.value)


def _set(gauge: Gauge, labels: tuple[str, str, str], value: float | None) -> None:
    if value is not None:
        gauge.labels(*labels).set(value)
    else:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)


async def record_probe(
    m: Monitor, service_id: UUID, checked: HealthChecked | None, elapsed_s: float, *, failed: bool
) -> None:
    """After a probe: `checked` is what it announced; None with `failed` false: the service
    was not probed (gone, or no longer meant to run)."""
    if checked is None and not failed:
        _forget(service_id)
        return
    facts = await m.pool.fetchrow(_FACTS, service_id, [s.value for s in UP])
    if facts is None:
        _forget(service_id)
        return
    service_type = facts["service_type"]
    PROBE_DURATION.labels(service_type).observe(elapsed_s)
    if checked is None:
        PROBES.labels(service_type, "error").inc()
        return
    PROBES.labels(service_type, checked.status.value).inc()
    labels = (str(service_id), facts["name"], service_type)
    if _exported.get(service_id, labels) != labels:
        _forget(service_id)  # renamed: the old series go
    _exported[service_id] = labels
    SERVICE_UP.labels(*labels).set(1 if checked.status in UP else 0)
    for status in VERDICTS:
        SERVICE_STATUS.labels(*labels, status.value).set(1 if checked.status == status else 0)
    metrics = checked.metrics
    _set(SERVICE_UPTIME, labels, facts["uptime"])
    _set(SERVICE_CONNECTIONS, labels, metrics.connections)
    _set(SERVICE_STORAGE_USED, labels, metrics.storage_used_bytes)
    _set(SERVICE_STORAGE_ALLOCATED, labels, metrics.storage_allocated_bytes)
    _set(SERVICE_WAL, labels, facts["wal_bytes"])
    response = checked.response_time_ms
    _set(SERVICE_RESPONSE, labels, response / 1000 if response is not None else None)
