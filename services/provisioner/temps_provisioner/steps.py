"""The steps of one reconcile, announced as they complete (`ServiceStepCompleted`), so a user
waiting on a change sees it progress. Only what changed is announced: a reconcile that finds
everything in place publishes no step."""

from __future__ import annotations

import time

from temps_shared.bus.publish import publish_event
from temps_shared.messages import Role, ServiceStepCompleted
from temps_shared.store.services import ServiceRecord

from temps_provisioner.context import Provisioner

PRIMARY = "primary"


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
