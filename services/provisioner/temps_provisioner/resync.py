"""Resync: what Docker runs is checked against what should run, without waiting for a request.

Every service whose desired state is `running` is checked on a period (jittered), and at once
when the monitor has reported it `down` because a container is missing or exited. A member that
is missing or not running gets a full reconcile, which recreates it from its volume with the
same name, port and credentials. Work is shared between provisioner replicas by claiming rows
(`FOR UPDATE SKIP LOCKED`), as the monitor shares its probes. A repair that fails backs off
(doubling up to `resync_max_backoff_s`), and after a few failures in a row the service shows
`down` with the reason, so a crash-looping engine is neither hammered nor silent.

Once a period it also collects the platform's own leftovers: containers and volumes of this
installation (label `io.temps.installation`) whose service is gone or purged, and the loopback
ports still reserved for purged services. Objects without this installation's label (another
installation's, or made before the label existed) are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from uuid import UUID, uuid4

from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.bus.publish import publish_event
from temps_shared.engines import ENGINES, pgbouncer
from temps_shared.engines.postgres import PostgresEngine
from temps_shared.ids import LABEL_INSTALLATION, LABEL_SERVICE_ID, container_name
from temps_shared.messages import Role, ServiceFailed, ServiceStatus, ServiceStatusChanged
from temps_shared.store.services import ServiceRecord, get_service

from temps_provisioner.context import Provisioner
from temps_provisioner.reconcile import reconcile

log = logging.getLogger(__name__)
CRASH_LOOP_AFTER = 3  # failed repairs in a row before the service shows the reason

_ENROL = """
INSERT INTO resync_schedule (service_id, next_at)
SELECT id, now() + (0.5 + random() * 0.5) * $1 * interval '1 second' FROM services
 WHERE desired_state = 'running' AND NOT purged
ON CONFLICT (service_id) DO NOTHING
"""

# Due on the period, or at once when the monitor saw a container missing or exited (its
# verdict's reason, `verdict.py`); never before the backoff allows.
_CLAIM = """
UPDATE resync_schedule r
   SET next_at = now() + $2 * (0.8 + random() * 0.4) * interval '1 second'
 WHERE r.service_id IN (
       SELECT d.service_id FROM resync_schedule d
         JOIN services s ON s.id = d.service_id
         LEFT JOIN service_status st ON st.service_id = d.service_id
        WHERE s.desired_state = 'running' AND NOT s.purged AND d.not_before <= now()
          AND st.status IS DISTINCT FROM 'failed'  -- a failure waits for the user's retry
          AND (d.next_at <= now()
               OR ($3 AND st.status = 'down' AND st.status_reason LIKE 'the container is %'))
        ORDER BY d.next_at
        LIMIT $1
          FOR UPDATE OF d SKIP LOCKED)
RETURNING r.service_id
"""


def member_names(service: ServiceRecord) -> list[str]:
    """The containers a running service has: its primary, and PostgreSQL's read replicas and
    pooler."""
    engine = ENGINES[service.service_type]
    if not isinstance(engine, PostgresEngine):
        return [container_name(service.service_type, service.name)]
    members = [
        container_name(service.service_type, service.name, n or None)
        for n in range(0, engine.replica_count(service) + 1)
    ]
    return [*members, pgbouncer.container(service)]


async def diverged_members(p: Provisioner, service: ServiceRecord) -> list[str]:
    """Members that are missing or not running (cheap: one Docker listing)."""
    running = {c.name for c in await p.runtime.containers_of(str(service.id)) if c.running}
    return [name for name in member_names(service) if name not in running]


async def resync_service(p: Provisioner, service_id: UUID) -> bool:
    """Check one service and repair it if it diverged; True when a reconcile ran."""
    service = await get_service(p.pool, service_id)
    if service is None or service.desired_state != "running":
        return False
    diverged = await diverged_members(p, service)
    if not diverged:
        await _record(p, service_id, failed=False)
        return False
    log.info(
        "resync: %s not running; reconciling",
        ", ".join(diverged),
        extra={"service_id": str(service_id)},
    )
    try:
        await reconcile(p, service_id, cause=f"resync:{uuid4()}")
    except RetryableError:
        return False  # another operation holds the service: it converges there
    except TerminalError as exc:
        # As a command's terminal failure: `failed` with the reason, left for the user.
        await publish_event(
            p.js,
            ServiceFailed(service_id=service.id, generation=service.generation, reason=exc.reason),
            origin=Role.PROVISIONER,
        )
        return True
    except Exception as exc:
        failures = await _record(p, service_id, failed=True)
        log.warning("resync of %s failed (%d in a row): %s", service_id, failures, exc)
        if failures >= CRASH_LOOP_AFTER:
            await _announce_crash_loop(p, service, failures, str(exc))
        return True
    await _record(p, service_id, failed=False)
    return True


async def _record(p: Provisioner, service_id: UUID, *, failed: bool) -> int:
    """Reset or extend the backoff; the number of failed repairs in a row."""
    if not failed:
        await p.pool.execute(
            "UPDATE resync_schedule SET failures = 0, not_before = now() WHERE service_id = $1",
            service_id,
        )
        return 0
    failures: int = await p.pool.fetchval(
        "UPDATE resync_schedule SET failures = failures + 1,"
        " not_before = now() + least($2, 2 ^ failures) * interval '1 second'"
        " WHERE service_id = $1 RETURNING failures",
        service_id,
        p.settings.resync_max_backoff_s,
    )
    return failures


async def _announce_crash_loop(
    p: Provisioner, service: ServiceRecord, failures: int, reason: str
) -> None:
    await publish_event(
        p.js,
        ServiceStatusChanged(
            service_id=service.id,
            status=ServiceStatus.DOWN,
            reason=f"crash loop: {failures} repairs failed in a row; last: {reason}"[:500],
            generation=service.generation,
        ),
        origin=Role.PROVISIONER,
    )


async def collect_orphans(p: Provisioner) -> list[str]:
    """Remove this installation's containers and volumes whose service is gone or purged, and
    release the ports of purged services; the names of what was removed."""
    containers, volumes = await p.runtime.labelled(f"{LABEL_INSTALLATION}={p.installation}")
    owners = {c.labels.get(LABEL_SERVICE_ID, "") for c in containers}
    owners |= {labels.get(LABEL_SERVICE_ID, "") for labels in volumes.values()}
    ids = [UUID(o) for o in owners if _is_uuid(o)]
    live = {
        str(r["id"])
        for r in await p.pool.fetch(
            "SELECT id FROM services WHERE id = ANY($1::uuid[]) AND NOT purged", ids
        )
    }
    removed = []
    for container in containers:
        if container.labels.get(LABEL_SERVICE_ID) not in live:
            await p.runtime.remove(container.name)
            removed.append(container.name)
    for volume, labels in volumes.items():
        if labels.get(LABEL_SERVICE_ID) not in live:
            await p.runtime.remove_volume(volume)
            removed.append(volume)
    await p.pool.execute(
        "DELETE FROM service_ports WHERE service_id IN (SELECT id FROM services WHERE purged)"
    )
    if removed:
        log.warning("collected orphans of deleted services: %s", ", ".join(removed))
    return removed


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


async def run_resync(p: Provisioner, stop: asyncio.Event) -> None:
    """Claim due services and check them, and collect orphans once a period, until `stop`."""
    settings = p.settings
    next_collection = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() >= next_collection:
                await collect_orphans(p)
                next_collection = time.monotonic() + settings.resync_period_s
            await p.pool.execute(_ENROL, settings.resync_period_s)
            due = await p.pool.fetch(
                _CLAIM, settings.resync_batch, settings.resync_period_s, settings.resync_on_down
            )
            for row in due:
                if stop.is_set():
                    break
                await resync_service(p, row["service_id"])
        except Exception:
            log.exception("resync pass failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.resync_poll_s)
