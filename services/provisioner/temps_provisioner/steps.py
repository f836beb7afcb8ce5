"""The steps of one reconcile, announced as they complete (`ServiceStepCompleted`), so a user
waiting on a change sees it progress. Only what changed is announced: a reconcile that finds
everything in place publishes no step.

`announce_updating` is how the provisioner says that running members are about to refuse
connections (a restart, a recreate): the service shows `updating` with that reason until the
reconcile reports every member ready again (`ServiceProvisioned` → `operational`)."""

from __future__ import annotations

import asyncio
import logging
import time

from temps_shared.bus.publish import publish_event
from temps_shared.messages import Role, ServiceStatus, ServiceStatusChanged, ServiceStepCompleted
from temps_shared.store.services import ServiceRecord

from temps_provisioner.context import Provisioner

log = logging.getLogger(__name__)
PRIMARY = "primary"
# How long a member's restart waits for the status read model to show the change (the
# projector applies the event within milliseconds; bounded so a stalled projector never
# blocks the change itself).
PROJECTED_WAIT_S = 5.0
PROJECTED_POLL_S = 0.02
# What a GET may show while a member refuses connections: anything but these.
_CLAIMS_READY = (ServiceStatus.OPERATIONAL, ServiceStatus.DEGRADED)


class Steps:
    """One reconcile's step announcer; it remembers which members it touched."""

    def __init__(self, p: Provisioner, service: ServiceRecord, cause: str) -> None:
        self._p = p
        self._service = service
        self._cause = cause
        self._started = time.monotonic()
        self.touched: set[str] = set()  # members created, recreated or started by this reconcile

    async def completed(self, step: str, member: str | None = None) -> None:
        if member is not None:
            self.touched.add(member)
        event = ServiceStepCompleted(
            service_id=self._service.id,
            generation=self._service.generation,
            step=step,
            member=member,
            elapsed_ms=round((time.monotonic() - self._started) * 1000),
        )
        # Re-announced by a redelivered command under the same id, so JetStream drops it.
        dedupe_id = f"{self._cause}:{event.type_name()}:{member or ''}:{step}"
        await publish_event(self._p.js, event, origin=Role.PROVISIONER, dedupe_id=dedupe_id)


async def announce_updating(
    p: Provisioner, service: ServiceRecord, reason: str, dedupe_id: str
) -> None:
    """The service is `updating` (`reason`: what is being done) before a running member stops
    accepting connections; returns once the status read model no longer claims the service
    ready (bounded by PROJECTED_WAIT_S), so a GET never shows `operational` during the gap."""
    log.info("%s: %s", service.name, reason)
    await publish_event(
        p.js,
        ServiceStatusChanged(
            service_id=service.id,
            status=ServiceStatus.UPDATING,
            reason=reason,
            generation=service.generation,
        ),
        origin=Role.PROVISIONER,
        dedupe_id=dedupe_id,
    )
    deadline = time.monotonic() + PROJECTED_WAIT_S
    while time.monotonic() < deadline:
        status = await p.pool.fetchval(
            "SELECT status FROM service_status WHERE service_id = $1", service.id
        )
        if status not in _CLAIMS_READY:
            return
        await asyncio.sleep(PROJECTED_POLL_S)
    log.warning(
        "%s: the status still read ready %.0fs after announcing %r; going on",
        service.name,
        PROJECTED_WAIT_S,
        reason,
    )
