"""The service a command is about: its record, its engine's backup, a handle on its running
container, and the store its backup lives in."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from uuid import UUID

from temps_shared.backups.destination import load_destination
from temps_shared.backups.engines import ENGINE_BACKUPS
from temps_shared.backups.protocol import EngineBackup, ServiceHandle
from temps_shared.backups.store import BackupStore
from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.engines import ENGINES
from temps_shared.engines.base import dial_endpoints
from temps_shared.ids import container_name
from temps_shared.store import ports
from temps_shared.store.backups import BackupRow, get_backup
from temps_shared.store.services import ServiceRecord, get_service

from temps_backup.context import BackupWorker

# A restore into a service still being provisioned (restored as a new service, or onto a fresh
# installation) waits for it: up to PROVISIONING_WAIT_S in the handler (heartbeating, so the
# restore starts as soon as the service is up), then redelivered PROVISIONING_RETRY_S later, up
# to the consumer's max_deliver (5) — about twelve minutes in all.
PROVISIONING_WAIT_S = 120.0
PROVISIONING_POLL_S = 2.0
PROVISIONING_RETRY_S = 30.0


@dataclass(frozen=True)
class Target:
    service: ServiceRecord
    backup: BackupRow
    engine: EngineBackup
    handle: ServiceHandle
    store: BackupStore  # where this backup lives (its destination)

    @property
    def container(self) -> str:
        return self.handle.container


@dataclass(frozen=True)
class Catalogued:
    """A backup as the catalogue knows it, with its service, engine and store."""

    service: ServiceRecord
    backup: BackupRow
    engine: EngineBackup
    store: BackupStore  # where this backup lives (its destination)


async def catalogued(
    w: BackupWorker, service_id: UUID, backup_id: UUID, *, foreign: bool = False
) -> Catalogued:
    """`TerminalError` for what no retry can fix: no such backup (of this service, unless
    `foreign`), no such service, an engine without backups."""
    async with w.pool.acquire() as conn:
        backup = await get_backup(conn, backup_id)
        service = await get_service(conn, service_id)
        destination = (
            await load_destination(conn, w.keyring, backup.destination_id, w.store.destination)
            if backup is not None
            else None
        )
    if backup is None or destination is None or (backup.service_id != service_id and not foreign):
        raise TerminalError(f"no backup {backup_id} of service {service_id} in the catalogue")
    if service is None or service.purged:
        raise TerminalError(f"service {service_id} no longer exists")
    engine = ENGINE_BACKUPS.get(service.service_type)
    if engine is None:
        raise TerminalError(f"backups of {service.service_type} services are not supported yet")
    store = w.store if destination.id is None else BackupStore(destination)
    return Catalogued(service, backup, engine, store)


async def resolve(
    w: BackupWorker, service_id: UUID, backup_id: UUID, *, restoring: bool = False
) -> Target:
    """As `catalogued`, and `RetryableError` while the container is not running.

    `restoring`: the backup may be another service's (a restore as a new service; the caller
    checks the engines match), and a service still provisioning is waited for."""
    if restoring:
        await wait_while_provisioning(w, service_id)
    found = await catalogued(w, service_id, backup_id, foreign=restoring)
    service = found.service
    async with w.pool.acquire() as conn:
        status: str | None = await conn.fetchval(
            "SELECT status FROM service_status WHERE service_id = $1", service_id
        )
        local_ports = await ports.local_ports(conn, service_id)
    if restoring and status in (None, "provisioning"):
        raise RetryableError(
            f"service {service.name} is still being provisioned", delay_s=PROVISIONING_RETRY_S
        )
    if restoring and status == "failed":
        raise TerminalError(f"service {service.name} failed to start; nothing was restored")
    container = container_name(service.service_type, service.name)
    state = await w.runtime.inspect(container)
    if state is None or not state.running:
        status = "missing" if state is None else state.status
        raise RetryableError(f"container {container} is {status}", delay_s=5.0)
    handle = service_handle(w, service, container, local_ports)
    return Target(service, found.backup, found.engine, handle, found.store)


def service_handle(
    w: BackupWorker, service: ServiceRecord, container: str, local_ports: dict[str, int]
) -> ServiceHandle:
    """How the worker reaches `container` of the service: Docker, its endpoints, its secrets."""
    return ServiceHandle(
        client=w.docker,
        container=container,
        credentials=service.credentials(w.keyring),
        endpoints=dial_endpoints(
            w.settings.service_addressing,
            ENGINES[service.service_type].ports,
            container,
            local_ports,
        ),
        ca_pem=w.ca_pem,
        identity=w.identity,
        timeout_s=w.settings.backup_exec_timeout_s,
    )


async def wait_while_provisioning(w: BackupWorker, service_id: UUID) -> None:
    """Return once the service is no longer provisioning, or after PROVISIONING_WAIT_S (the
    caller then sees the status and asks for a redelivery)."""
    deadline = time.monotonic() + PROVISIONING_WAIT_S
    while time.monotonic() < deadline:
        status = await w.pool.fetchval(
            "SELECT status FROM service_status WHERE service_id = $1", service_id
        )
        if status not in (None, "provisioning"):
            return
        await asyncio.sleep(PROVISIONING_POLL_S)
