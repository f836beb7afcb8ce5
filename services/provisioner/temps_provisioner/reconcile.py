"""Reconcile one service: read desired state (PostgreSQL) and actual state (Docker), converge.

Create what is missing, adopt what exists under its deterministic name, recreate what drifted,
remove what was deleted. Every step is idempotent, so a redelivered command converges to the
same result and a crash mid-way is repaired by the next delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from nats.js import JetStreamContext
from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.bus.publish import publish_event
from temps_shared.crypto import KeyRing
from temps_shared.engines import ENGINES, Engine, ServiceNotReadyError, offered_versions
from temps_shared.engines.base import Endpoints
from temps_shared.ids import LABEL_MANAGED, LABEL_SERVICE_ID, container_name, volume_name
from temps_shared.messages import (
    Event,
    ServiceDeleted,
    ServiceProvisioned,
    ServiceStatus,
    ServiceStatusChanged,
)
from temps_shared.runtime import ContainerState, DockerRuntime, ImageMissingError, PortInUseError
from temps_shared.store import ports
from temps_shared.store.services import ServiceRecord, get_service, mark_purged
from temps_shared.tls import CertificateAuthority, issue_server_certificate

from temps_provisioner.service_lock import service_lock
from temps_provisioner.settings import ProvisionerSettings

log = logging.getLogger(__name__)
READY_POLL_S = 0.05


@dataclass(frozen=True)
class Provisioner:
    """Everything a reconcile needs, wired once by the service's startup function."""

    pool: asyncpg.Pool
    js: JetStreamContext
    runtime: DockerRuntime
    keyring: KeyRing
    ca: CertificateAuthority
    settings: ProvisionerSettings


async def reconcile(p: Provisioner, service_id: UUID, cause: str) -> None:
    """Converge `service_id`; `cause` (the command id) de-duplicates re-emitted events."""
    async with service_lock(p.pool, service_id):
        service = await get_service(p.pool, service_id)
        if service is None:
            log.info("service %s does not exist; nothing to do", service_id)
            return
        engine = ENGINES.get(service.service_type)
        if engine is None:
            raise TerminalError(f"no engine for service type {service.service_type!r}")
        if service.desired_state == "deleted":
            await _delete(p, service, cause)
        elif service.desired_state == "stopped":
            await _stop(p, service, cause)
        else:
            await _run(p, service, engine, cause)


async def _emit(p: Provisioner, event: Event, cause: str) -> None:
    await publish_event(p.js, event, dedupe_id=f"{cause}:{event.type_name()}")


async def _owned_container(p: Provisioner, service: ServiceRecord) -> ContainerState | None:
    """The container under the service's name, if it is this service's; refuses a stranger."""
    name = container_name(service.service_type, service.name)
    container = await p.runtime.inspect(name)
    if container is None or container.labels.get(LABEL_SERVICE_ID) == str(service.id):
        return container
    if container.labels.get(LABEL_MANAGED) == "true":
        raise RetryableError(f"container {name} still belongs to a service being deleted", 3.0)
    raise TerminalError(
        f"a container named {name} exists and is not managed by Temps; remove or rename it"
    )


async def _run(p: Provisioner, service: ServiceRecord, engine: Engine, cause: str) -> None:
    image = offered_versions(p.settings, service.service_type).get(service.version)
    if image is None:
        raise TerminalError(f"{service.service_type} {service.version} is not offered here")
    credentials = service.credentials(p.keyring)
    name = container_name(service.service_type, service.name)
    container = await _owned_container(p, service)
    local_ports = await ports.reserve_local_ports(
        p.pool, service.id, p.settings.node_id, list(engine.ports), p.settings.port_range
    )
    certificate = issue_server_certificate(p.ca, [name, "localhost"], ["127.0.0.1"])
    spec = engine.container_spec(service, credentials, local_ports, certificate, image)

    if container is not None and container.spec_hash != spec.spec_hash():
        log.info("recreating %s: its spec drifted (data stays on its volume)", name)
        await p.runtime.stop(name, p.settings.stop_timeout_s)
        await p.runtime.remove(name)
        container = None
    try:
        if container is None:
            await p.runtime.ensure_network()
            container = await p.runtime.create(spec)
        elif container.status == "created":
            # A crash between create and start may have left it without its files.
            await p.runtime.put_files(name, spec.files)
        if not container.running:
            container = await p.runtime.start(name)
    except ImageMissingError as exc:
        raise TerminalError(str(exc)) from exc
    except PortInUseError as exc:
        # Something outside the platform holds the port: take another, recreate next delivery.
        await ports.reserve_local_ports(
            p.pool,
            service.id,
            p.settings.node_id,
            list(engine.ports),
            p.settings.port_range,
            exclude=frozenset({exc.port}),
        )
        raise RetryableError(str(exc), delay_s=0.2) from exc

    endpoints = _endpoints(p, engine, name, local_ports)
    await _wait_ready(p, engine, name, endpoints, credentials)
    await engine.after_ready(endpoints, service, credentials, p.ca.cert_pem)
    await _emit(
        p,
        ServiceProvisioned(
            service_id=service.id,
            generation=service.generation,
            connection_info=engine.connection_info(service, credentials, local_ports),
        ),
        cause,
    )


def _endpoints(p: Provisioner, engine: Engine, name: str, local_ports: dict[str, int]) -> Endpoints:
    """Where this worker dials each port: one setting decides, here only."""
    if p.settings.service_addressing == "private":
        return {port_name: (name, port) for port_name, port in engine.ports.items()}
    return {port_name: ("127.0.0.1", local_ports[port_name]) for port_name in engine.ports}


async def _wait_ready(
    p: Provisioner, engine: Engine, name: str, endpoints: Endpoints, credentials: dict[str, str]
) -> None:
    deadline = time.monotonic() + p.settings.readiness_timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        state = await p.runtime.inspect(name)
        if state is None:
            raise RetryableError(f"container {name} disappeared while starting")
        if state.status in ("exited", "dead"):
            tail = "\n".join(await p.runtime.logs_tail(name, 15))
            raise TerminalError(
                f"container {name} exited with code {state.exit_code} while starting:\n{tail}"
            )
        try:
            await engine.check_ready(endpoints, credentials, p.ca.cert_pem)
            return
        except ServiceNotReadyError as exc:
            last_error = str(exc)
        # A refused connection costs next to nothing: poll tightly, readiness is what users wait on.
        await asyncio.sleep(READY_POLL_S)
    raise RetryableError(
        f"{name} did not accept connections within {p.settings.readiness_timeout_s:.0f}s "
        f"({last_error})",
        delay_s=5.0,
    )


async def _stop(p: Provisioner, service: ServiceRecord, cause: str) -> None:
    if await _owned_container(p, service) is not None:
        await p.runtime.stop(
            container_name(service.service_type, service.name), p.settings.stop_timeout_s
        )
    await _emit(
        p,
        ServiceStatusChanged(
            service_id=service.id,
            status=ServiceStatus.STOPPED,
            reason="stopped by the user",
            generation=service.generation,
        ),
        cause,
    )


async def _delete(p: Provisioner, service: ServiceRecord, cause: str) -> None:
    if not service.purged:
        if await _owned_container(p, service) is not None:
            await p.runtime.remove(container_name(service.service_type, service.name))
        await p.runtime.remove_volume(volume_name(service.service_type, service.name))
        async with p.pool.acquire() as conn, conn.transaction():
            await ports.release_ports(conn, service.id)
            await mark_purged(conn, service.id)
    # Re-emitted on redelivery too: the projector may not have seen it before a crash.
    await _emit(p, ServiceDeleted(service_id=service.id, generation=service.generation), cause)
