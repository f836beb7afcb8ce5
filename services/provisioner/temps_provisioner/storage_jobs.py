"""The S3 jobs SeaweedFS needs the platform to run: quota enforcement (and the `degraded`
status it implies) every `s3_quota_period_s`, lifecycle expiry every `s3_lifecycle_period_s`.

A changed `size_gb` does not wait for the period: between passes the loop looks every
`CHANGE_TICK_S` (one small query) for a running service whose `size_gb` is not the one last
enforced, and enforces that service's quota at once — a raised quota lifts the read-only
block and the `degraded` status within seconds, with no restart (the container is untouched).

One loop per provisioner replica, next to the command consumer. A pass skips services whose
container is not running; a failing pass is logged and retried at the next period. Every
Docker and S3 call is bounded by `JOB_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

from temps_shared.bus.publish import publish_event
from temps_shared.engines.base import dial_endpoints
from temps_shared.engines.s3 import S3Engine, S3Parameters, default_bucket
from temps_shared.engines.s3_buckets import endpoint_url, s3_client
from temps_shared.engines.s3_jobs import (
    QUOTA_REASON,
    QuotaState,
    enforce_quota,
    quota_limit_bytes,
    run_lifecycle,
)
from temps_shared.ids import container_name
from temps_shared.messages import Role, ServiceStatus, ServiceStatusChanged
from temps_shared.store import ports
from temps_shared.store.services import ServiceRecord, get_service

from temps_provisioner.context import Provisioner

log = logging.getLogger(__name__)
T = TypeVar("T")
JOB_TIMEOUT_S = 300.0
CHANGE_TICK_S = 1.0


async def run_s3_jobs(p: Provisioner, stop: asyncio.Event) -> None:
    """Run the S3 jobs until `stop` is set (lifecycle once at start, then on its period)."""
    next_lifecycle = time.monotonic()
    enforced: dict[UUID, int] = {}  # service → the size_gb its quota was last enforced with
    while not stop.is_set():
        services = await _guarded(_running_s3_services(p), "listing S3 services") or []
        for service in services:
            await _guarded(_quota(p, service, enforced), f"quota of {service.name}")
        if time.monotonic() >= next_lifecycle:
            next_lifecycle = time.monotonic() + p.settings.s3_lifecycle_period_s
            for service in services:
                await _guarded(
                    lifecycle_pass(p, service, datetime.now(UTC)), f"lifecycle of {service.name}"
                )
        next_pass = time.monotonic() + p.settings.s3_quota_period_s
        while not stop.is_set() and (left := next_pass - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(left, CHANGE_TICK_S))
            if not stop.is_set():
                await _guarded(_resized_quotas(p, enforced), "quotas of resized services")


async def _quota(p: Provisioner, service: ServiceRecord, enforced: dict[UUID, int]) -> None:
    if await quota_pass(p, service) is not None:
        enforced[service.id] = S3Parameters.model_validate(service.parameters).size_gb


async def _resized_quotas(p: Provisioner, enforced: dict[UUID, int]) -> None:
    """Enforce at once the quota of every running service whose size_gb changed since its
    last pass."""
    rows = await p.pool.fetch(
        "SELECT id, (parameters->>'size_gb')::int AS size_gb FROM services"
        " WHERE service_type = 's3' AND desired_state = 'running' AND NOT purged"
    )
    for row in rows:
        if row["id"] in enforced and enforced[row["id"]] != row["size_gb"]:
            enforced[row["id"]] = row["size_gb"]  # a failing pass waits for the next period
            service = await get_service(p.pool, row["id"])
            if service is not None:
                await _guarded(_quota(p, service, enforced), f"quota of {service.name}")


async def _guarded(work: Awaitable[T], what: str) -> T | None:
    try:
        return await asyncio.wait_for(work, JOB_TIMEOUT_S)
    except Exception as exc:  # one service's failure must not stop the others' jobs
        log.warning("S3 job: %s failed: %s", what, exc)
        return None


async def _running_s3_services(p: Provisioner) -> list[ServiceRecord]:
    ids: list[UUID] = [
        row["id"]
        for row in await p.pool.fetch(
            "SELECT id FROM services WHERE service_type = 's3'"
            " AND desired_state = 'running' AND NOT purged ORDER BY name"
        )
    ]
    found = [await get_service(p.pool, service_id) for service_id in ids]
    return [s for s in found if s is not None]


async def _running_container(p: Provisioner, service: ServiceRecord) -> str | None:
    name = container_name(service.service_type, service.name)
    state = await p.runtime.inspect(name)
    return name if state is not None and state.running else None


async def quota_pass(p: Provisioner, service: ServiceRecord) -> QuotaState | None:
    """Enforce the service's quota, then turn it `degraded` (or back) when that changed."""
    name = await _running_container(p, service)
    if name is None:
        return None
    parameters = S3Parameters.model_validate(service.parameters)
    limit = quota_limit_bytes(parameters.size_gb, p.settings.s3_quota_unit_mb)
    quota = await enforce_quota(p.runtime, name, limit)
    if quota.changed:
        log.info("%s: %s", service.name, quota.reason if quota.over else "back under its quota")
    await _report(p, service, quota)
    return quota


async def _report(p: Provisioner, service: ServiceRecord, quota: QuotaState) -> None:
    # Compared with the read model rather than remembered: a reconcile (e.g. after a PATCH)
    # announces `operational` again, and the next pass must restore `degraded`.
    row = await p.pool.fetchrow(
        "SELECT status, status_reason FROM service_status WHERE service_id = $1", service.id
    )
    if row is None:
        return
    status, reason = row["status"], row["status_reason"] or ""
    ours = status == ServiceStatus.DEGRADED and reason.startswith(QUOTA_REASON)
    if quota.over and status == ServiceStatus.OPERATIONAL:
        event = ServiceStatusChanged(
            service_id=service.id,
            status=ServiceStatus.DEGRADED,
            reason=quota.reason,
            generation=service.generation,
        )
    elif not quota.over and ours:
        event = ServiceStatusChanged(
            service_id=service.id, status=ServiceStatus.OPERATIONAL, generation=service.generation
        )
    else:
        return
    await publish_event(p.js, event, origin=Role.PROVISIONER)


async def lifecycle_pass(p: Provisioner, service: ServiceRecord, as_of: datetime) -> list[str]:
    """Expire the default bucket's objects that its lifecycle rules say are due at `as_of`."""
    parameters = S3Parameters.model_validate(service.parameters)
    name = await _running_container(p, service)
    if name is None or not parameters.lifecycle:
        return []
    endpoints = dial_endpoints(
        p.settings.service_addressing,
        S3Engine.ports,
        name,
        await ports.local_ports(p.pool, service.id),
    )
    client = s3_client(
        endpoint_url(*endpoints["s3"]), service.credentials(p.keyring), p.ca.cert_pem
    )
    deleted = await run_lifecycle(client, default_bucket(service.name), parameters.lifecycle, as_of)
    if deleted:
        log.info("%s: lifecycle expired %d objects", service.name, len(deleted))
    return deleted
