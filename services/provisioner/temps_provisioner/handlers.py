"""One handler per command type, registered explicitly."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from temps_shared.bus.consume import Delivery, TerminalError, contract_message
from temps_shared.bus.publish import publish_event
from temps_shared.messages import Command, ReconcileService, Role, ServiceFailed
from temps_shared.metrics import instrumented

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


HANDLERS: dict[str, Callable[[Provisioner, Command], Awaitable[None]]] = {
    ReconcileService.type_name(): handle_reconcile,  # type: ignore[dict-item]
}


def make_handler(p: Provisioner) -> Callable[[Delivery], Awaitable[None]]:
    async def handle(delivery: Delivery) -> None:
        command = contract_message(delivery, Command)
        handler = HANDLERS.get(command.type_name())
        if handler is None:
            raise TerminalError(f"the provisioner has no handler for {command.type_name()}")
        await handler(p, command)

    return instrumented("provisioner", handle)


def make_on_terminal(p: Provisioner) -> Callable[[Delivery, str], Awaitable[None]]:
    async def on_terminal(delivery: Delivery, reason: str) -> None:
        command = delivery.message
        if isinstance(command, ReconcileService):
            await publish_event(
                p.js,
                ServiceFailed(
                    service_id=command.service_id, generation=command.generation, reason=reason
                ),
                origin=Role.PROVISIONER,
                dedupe_id=f"{command.message_id}:ServiceFailed",
            )

    return on_terminal
