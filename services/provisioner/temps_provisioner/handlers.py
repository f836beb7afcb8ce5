"""One handler per command type, registered explicitly."""

from __future__ import annotations

import logging

from temps_shared.bus.consume import Handler, OnTerminal
from temps_shared.bus.publish import publish_event
from temps_shared.messages import Command, ReconcileService, Role, ServiceFailed
from temps_shared.worker import CommandHandler, dispatcher, terminal_announcer

from temps_provisioner.context import Provisioner
from temps_provisioner.reconcile import reconcile

log = logging.getLogger(__name__)


async def handle_reconcile(p: Provisioner, command: ReconcileService) -> None:
    log.info(
        "reconciling service %s (generation %s, %s)",
        command.service_id,
        command.generation,
        command.reason,
        extra={"service_id": str(command.service_id), "message_id": str(command.message_id)},
    )
    await reconcile(p, command.service_id, cause=str(command.message_id))


async def announce_failure(p: Provisioner, command: ReconcileService, reason: str) -> None:
    await publish_event(
        p.js,
        ServiceFailed(service_id=command.service_id, generation=command.generation, reason=reason),
        origin=Role.PROVISIONER,
        dedupe_id=f"{command.message_id}:ServiceFailed",
    )


HANDLERS: dict[type[Command], CommandHandler[Provisioner]] = {
    ReconcileService: handle_reconcile,
}


def make_handler(p: Provisioner) -> Handler:
    return dispatcher("provisioner", p, HANDLERS)


def make_on_terminal(p: Provisioner) -> OnTerminal:
    return terminal_announcer(p, {ReconcileService: announce_failure})
