"""Reconcile one service: read desired state (PostgreSQL) and actual state (Docker), converge.

Create what is missing, adopt what exists under its deterministic name, recreate what drifted,
remove what was deleted. Every step is idempotent, so a redelivered command converges to the
same result and a crash mid-way is repaired by the next delivery.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from uuid import UUID

from opentelemetry import trace
from temps_shared.bus.consume import TerminalError
from temps_shared.bus.publish import publish_command, publish_event
from temps_shared.engines import ENGINES, Engine, ServiceNotReadyError, offered_versions, pgbouncer
from temps_shared.engines.base import Endpoints, dial_endpoints
from temps_shared.engines.postgres import (
    ARCHIVE_CONFIG,
    MAX_CONNECTIONS,
    PostgresEngine,
    replica_member,
)
from temps_shared.ids import LABEL_GENERATION, LABEL_INSTALLATION, LABEL_ROLE, container_name
from temps_shared.messages import (
    CredentialsRotated,
    Event,
    LinksConverged,
    ProbeNow,
    Role,
    ServiceDeleted,
    ServiceProvisioned,
    ServiceStatus,
    ServiceStatusChanged,
)
from temps_shared.metrics import RECONCILES
from temps_shared.resources import ResourceLimits
from temps_shared.runtime import ContainerSpec
from temps_shared.service_lock import service_lock
from temps_shared.store import ports
from temps_shared.store.links import links_of_service
from temps_shared.store.services import (
    ServiceRecord,
    finish_rotation,
    get_service,
    mark_purged,
)
from temps_shared.tls import ServerCertificate, issue_server_certificate

from temps_provisioner.context import Provisioner
from temps_provisioner.members import converge, drift_of, wait_ready
from temps_provisioner.steps import PRIMARY, Steps, announce_updating

log = logging.getLogger(__name__)
tracer = trace.get_tracer("temps.provisioner")


async def reconcile(p: Provisioner, service_id: UUID, cause: str) -> None:
    """Converge `service_id`; `cause` (the command id, or `resync:<id>`) de-duplicates
    re-emitted events. Traced and timed whoever asked (a command, the resync)."""
    started, outcome = time.perf_counter(), "error"
    with tracer.start_as_current_span(
        "reconcile", attributes={"temps.service_id": str(service_id), "temps.cause": cause}
    ):
        try:
            await _reconcile(p, service_id, cause)
            outcome = "ok"
        finally:
            RECONCILES.labels(outcome).observe(time.perf_counter() - started)


async def _reconcile(p: Provisioner, service_id: UUID, cause: str) -> None:
    async with service_lock(p.pool, service_id):
        service = await get_service(p.pool, service_id)
        if service is None:
            log.info("service %s does not exist; nothing to do", service_id)
            return
        engine = ENGINES.get(service.service_type)
        if engine is None:
            raise TerminalError(f"no engine for service type {service.service_type!r}")
        steps = Steps(p, service, cause)
        if service.desired_state == "deleted":
            await _delete(p, service, cause, steps)
        elif service.desired_state == "stopped":
            await _stop(p, service, cause, steps)
        else:
            await _run(p, service, engine, cause, steps)


async def _emit(p: Provisioner, event: Event, cause: str) -> None:
    await publish_event(
        p.js, event, origin=Role.PROVISIONER, dedupe_id=f"{cause}:{event.type_name()}"
    )


def _endpoints(p: Provisioner, engine: Engine, name: str, local_ports: dict[str, int]) -> Endpoints:
    return dial_endpoints(p.settings.service_addressing, engine.ports, name, local_ports)


def _certificate_for(p: Provisioner, name: str) -> ServerCertificate:
    return issue_server_certificate(p.ca, [name, "localhost"], ["127.0.0.1"])


@dataclass(frozen=True)
class Desired:
    """The containers a running service should have, as specs (primary first)."""

    engine: Engine
    credentials: dict[str, str]
    local_ports: dict[str, int]
    primary: ContainerSpec
    replicas: list[ContainerSpec]
    pooler: ContainerSpec | None = None  # PostgreSQL's PgBouncer (not a member the caps size)

    @property
    def members(self) -> list[ContainerSpec]:
        return [self.primary, *self.replicas]


async def desired_state(p: Provisioner, service: ServiceRecord) -> Desired:
    """Specs of every member, with the service's resource caps; reserves their ports."""
    engine = ENGINES[service.service_type]
    image = offered_versions(p.settings, service.service_type).get(service.version)
    if image is None:
        raise TerminalError(f"{service.service_type} {service.version} is not offered here")
    credentials = service.credentials(p.keyring)
    postgres = engine if isinstance(engine, PostgresEngine) else None
    replicas = postgres.replica_count(service) if postgres else 0
    local_ports = await ports.reserve_local_ports(
        p.pool,
        service.id,
        p.settings.node_id,
        list(engine.ports)
        + [replica_member(n) for n in range(1, replicas + 1)]
        + ([pgbouncer.PORT_NAME] if postgres else []),
        p.settings.port_range,
    )
    limits = ResourceLimits.from_stored(service.resources).docker()
    name = container_name(service.service_type, service.name)
    certificate = _certificate_for(p, name)
    if postgres:
        # archive_mode as the volume says: archiving is intended exactly when the archive
        # configuration exists there (a missing container has no volume to look at yet).
        archiving = await p.runtime.file_exists(name, ARCHIVE_CONFIG)
        primary = postgres.container_spec(
            service, credentials, local_ports, certificate, image, archiving=archiving
        )
    else:
        primary = engine.container_spec(service, credentials, local_ports, certificate, image)
    replica_specs = [
        postgres.replica_spec(
            service,
            n,
            credentials,
            local_ports,
            _certificate_for(p, container_name(service.service_type, service.name, n)),
            image,
        )
        for n in range(1, replicas + 1)
        if postgres
    ]

    def finish(spec: ContainerSpec) -> ContainerSpec:
        labels = {
            **spec.labels,
            LABEL_GENERATION: str(service.generation),
            LABEL_INSTALLATION: p.installation,
        }
        return replace(spec, limits=limits, labels=labels)

    pooler = None
    if postgres:
        pooler_name = pgbouncer.container(service)
        pooler = pgbouncer.spec(
            service,
            credentials,
            local_ports[pgbouncer.PORT_NAME],
            _certificate_for(p, pooler_name),
            name,
            MAX_CONNECTIONS,
            image=p.settings.pooler_image,
        )
        pooler = replace(
            pooler,
            labels={
                **pooler.labels,
                LABEL_GENERATION: str(service.generation),
                LABEL_INSTALLATION: p.installation,
            },
        )
    return Desired(
        engine=engine,
        credentials=credentials,
        local_ports=local_ports,
        primary=finish(primary),
        replicas=[finish(r) for r in replica_specs],
        pooler=pooler,
    )


def _console(p: Provisioner, desired: Desired) -> pgbouncer.Console | None:
    if desired.pooler is None:
        return None
    endpoint = dial_endpoints(
        p.settings.service_addressing,
        {pgbouncer.PORT_NAME: pgbouncer.PORT},
        desired.pooler.name,
        desired.local_ports,
    )[pgbouncer.PORT_NAME]
    return pgbouncer.Console(endpoint, desired.credentials, p.ca.cert_pem)


async def pooler_pause(p: Provisioner, desired: Desired) -> pgbouncer.Pause | None:
    """A hold on the service's pooler for a restart of its primary (None: no pooler running).
    Use: `async with pause: <restart the primary, wait until it is ready>` (or enter and exit
    it by hand); the `Hold` it yields says how long clients were held."""
    console = _console(p, desired)
    if console is None or desired.pooler is None:
        return None
    state = await p.runtime.inspect(desired.pooler.name)
    if state is None or not state.running:
        return None
    return pgbouncer.Pause(console, p.settings.pooler_pause_timeout_s)


async def _run(
    p: Provisioner, service: ServiceRecord, engine: Engine, cause: str, steps: Steps
) -> None:
    postgres = engine if isinstance(engine, PostgresEngine) else None
    if postgres:
        await _remove_replicas_beyond(p, service, postgres.replica_count(service))
    desired = await desired_state(p, service)
    if postgres and await p.runtime.inspect(desired.primary.name) is None:
        # A new primary: create it (not started) to look at its volume, then decide.
        await converge(p, service, desired.primary, start=False, steps=steps)
        desired = await desired_state(p, service)
    credentials, spec = desired.credentials, desired.primary

    drift = await drift_of(p, service, spec)
    console = _console(p, desired)
    if drift:
        await _announce_restart(p, service, drift, cause)
        # Gracefully: the replicas stop first, then the primary (SIGINT: a fast shutdown).
        for replica in desired.replicas:
            await p.runtime.stop(replica.name, p.settings.stop_timeout_s)
    # A restart the platform decides: the pooler holds its clients (PAUSE) until the primary
    # accepts connections again (RESUME); bounded by TEMPS_POOLER_PAUSE_TIMEOUT_S.
    pause = await pooler_pause(p, desired) if drift else None
    async with pause or contextlib.nullcontext() as hold:
        await converge(p, service, spec, steps=steps)
        endpoints = _endpoints(p, engine, spec.name, desired.local_ports)
        previous = service.previous_credentials(p.keyring)
        if previous is not None:
            await _rotate_admin(p, service, engine, spec.name, endpoints, previous, credentials)
            await steps.completed("administrator credentials rotated")
        await wait_ready(
            p, spec.name, lambda: engine.check_ready(endpoints, credentials, p.ca.cert_pem)
        )
    if PRIMARY in steps.touched:
        await steps.completed("accepting connections", PRIMARY)
    if hold is not None:
        await steps.completed(_hold_summary(hold, p.settings.pooler_pause_timeout_s))
    await engine.after_ready(endpoints, service, credentials, p.ca.cert_pem)
    service_links = await links_of_service(p.pool, service.id)
    grants = [link.grant(p.keyring) for link in service_links]
    if grants:
        await engine.apply_links(endpoints, service, credentials, grants, p.ca.cert_pem, p.runtime)
    if steps.touched or previous is not None:
        await steps.completed(
            f"users configured (links: {len(grants)})" if grants else "users configured"
        )
    if desired.pooler is not None and console is not None:
        await _run_pooler(p, service, desired.pooler, console, steps)

    replication = None
    if postgres:
        for replica in desired.replicas:
            await _run_replica(p, postgres, service, replica, credentials, steps)
        replication = await postgres.replication_status(endpoints, credentials, p.ca.cert_pem)
    await _emit(
        p,
        ServiceProvisioned(
            service_id=service.id,
            generation=service.generation,
            connection_info=engine.connection_info(service, credentials, desired.local_ports),
            replication=replication,
        ),
        cause,
    )
    if postgres and drift:
        # The primary was recreated (e.g. archive_mode repaired): a fresh WAL health snapshot
        # now, not at the next health cycle.
        await publish_command(
            p.js,
            ProbeNow(service_id=service.id, reason=f"recreated ({', '.join(drift)})"),
            origin=Role.PROVISIONER,
        )
    if grants:
        await _emit(
            p,
            LinksConverged(
                service_id=service.id,
                generation=service.generation,
                active=[g.link_id for g in grants if g.active],
                revoked=[g.link_id for g in grants if not g.active],
            ),
            cause,
        )
    rotated = service.previous_secrets_ciphertext
    if rotated is not None and await finish_rotation(p.pool, service.id, rotated):
        await _emit(
            p,
            CredentialsRotated(
                service_id=service.id,
                generation=service.generation,
                links=sum(g.active for g in grants),
            ),
            cause,
        )


def _hold_summary(hold: pgbouncer.Hold, bound_s: float) -> str:
    if not hold.paused:
        return f"clients not held ({hold.error})"
    text = f"clients held {hold.held_s:.2f} s during the restart (PAUSE … RESUME)"
    if hold.timed_out:
        text += f"; resumed at the {bound_s:.0f} s bound before the server was ready"
    return text + (f"; {hold.error}" if hold.error else "")


async def _run_pooler(
    p: Provisioner,
    service: ServiceRecord,
    spec: ContainerSpec,
    console: pgbouncer.Console,
    steps: Steps,
) -> None:
    """The pooler after the primary (its auth role exists by then): created, adopted or
    recreated like any member, then resumed in case a provisioner died while it held."""
    await converge(p, service, spec, steps=steps)
    await wait_ready(p, spec.name, console.check_ready)
    if await console.resume_quietly():
        log.warning("%s was left paused; resumed", spec.name)
    if pgbouncer.MEMBER in steps.touched:
        await steps.completed("accepting connections (pooled endpoint)", pgbouncer.MEMBER)


async def _rotate_admin(
    p: Provisioner,
    service: ServiceRecord,
    engine: Engine,
    name: str,
    endpoints: Endpoints,
    previous: dict[str, str],
    credentials: dict[str, str],
) -> None:
    """Wait until the service answers with either set of credentials, then move the admin to
    the new ones (nothing if a crashed earlier delivery already did)."""

    async def either() -> None:
        try:
            await engine.check_ready(endpoints, credentials, p.ca.cert_pem)
        except ServiceNotReadyError:
            await engine.check_ready(endpoints, previous, p.ca.cert_pem)

    await wait_ready(p, name, either)
    await engine.rotate_admin(endpoints, service, previous, credentials, p.ca.cert_pem)


async def _run_replica(
    p: Provisioner,
    engine: PostgresEngine,
    service: ServiceRecord,
    spec: ContainerSpec,
    credentials: dict[str, str],
    steps: Steps,
) -> None:
    member = spec.labels[LABEL_ROLE]
    await converge(p, service, spec, steps=steps)
    endpoint = _endpoints(p, engine, spec.name, {"postgres": spec.ports[5432]})["postgres"]

    async def probe() -> None:
        await engine.check_replica_ready(endpoint, credentials, p.ca.cert_pem)

    await wait_ready(p, spec.name, probe)
    if member in steps.touched:
        await steps.completed("cloned, streaming from the primary", member)


async def _announce_restart(
    p: Provisioner, service: ServiceRecord, drift: list[str], cause: str
) -> None:
    """`updating`, naming the members restarted and why, before the first one stops; the
    `ServiceProvisioned` that ends the reconcile (every member ready) makes it operational."""
    engine = ENGINES[service.service_type]
    replicas = engine.replica_count(service) if isinstance(engine, PostgresEngine) else 0
    members = f"{replicas} replica(s), then the primary" if replicas else "the primary"
    reason = f"restarting {members} to apply {', '.join(drift)}; data is kept"
    await announce_updating(p, service, reason, f"{cause}:restart")


async def _remove_replicas_beyond(p: Provisioner, service: ServiceRecord, wanted: int) -> None:
    """Scale down: containers, volumes and ports of replicas past `wanted` (their slots are
    dropped by the primary's `after_ready`)."""
    for container in await p.runtime.containers_of(str(service.id)):
        role = container.labels.get(LABEL_ROLE, "")
        if role.startswith("replica-") and int(role.removeprefix("replica-")) > wanted:
            log.info("removing %s (scaled down to %d replicas)", container.name, wanted)
            await p.runtime.remove(container.name)
            await p.runtime.remove_volume(f"{container.name}-data")
            await ports.release_ports(p.pool, service.id, [role])


async def _stop(p: Provisioner, service: ServiceRecord, cause: str, steps: Steps) -> None:
    members = await p.runtime.containers_of(str(service.id))
    # Replicas first, the primary last.
    for container in sorted(members, key=lambda c: c.labels.get(LABEL_ROLE) == PRIMARY):
        await p.runtime.stop(container.name, p.settings.stop_timeout_s)
        if container.running:
            await steps.completed("stopped", container.labels.get(LABEL_ROLE, PRIMARY))
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


async def _delete(p: Provisioner, service: ServiceRecord, cause: str, steps: Steps) -> None:
    if not service.purged:
        for container in await p.runtime.containers_of(str(service.id)):
            await p.runtime.remove(container.name)
            await steps.completed("container removed", container.labels.get(LABEL_ROLE, PRIMARY))
        volumes = await p.runtime.volumes_of(str(service.id))
        for volume in volumes:
            await p.runtime.remove_volume(volume)
        if volumes:
            await steps.completed(f"data removed ({len(volumes)} volumes)")
        async with p.pool.acquire() as conn, conn.transaction():
            await ports.release_ports(conn, service.id)
            await mark_purged(conn, service.id)
    # Re-emitted on redelivery too: the projector may not have seen it before a crash.
    await _emit(p, ServiceDeleted(service_id=service.id, generation=service.generation), cause)
