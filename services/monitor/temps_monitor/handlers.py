"""One handler per command type, registered explicitly."""

from __future__ import annotations

import logging

from temps_shared.bus.consume import Handler
from temps_shared.messages import Command, ProbeNow
from temps_shared.worker import CommandHandler, dispatcher

from temps_monitor import schedule
from temps_monitor.context import Monitor
from temps_monitor.service_probe import probe_service

log = logging.getLogger(__name__)


async def handle_probe_now(m: Monitor, command: ProbeNow) -> None:
    """Probe at once, whatever the schedule says; it counts as this period's probe."""
    log.info(
        "probing %s now (%s)",
        command.service_id,
        command.reason or "asked",
        extra={"service_id": str(command.service_id), "message_id": str(command.message_id)},
    )
    settings = m.settings
    await schedule.claim_now(
        m.pool, command.service_id, settings.monitor_period_s, settings.monitor_instance_id
    )
    await probe_service(m, command.service_id)


HANDLERS: dict[type[Command], CommandHandler[Monitor]] = {
    ProbeNow: handle_probe_now,
}


def make_handler(m: Monitor) -> Handler:
    return dispatcher("monitor", m, HANDLERS)
