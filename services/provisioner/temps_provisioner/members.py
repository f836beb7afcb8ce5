"""Converging one member container (primary or replica) to its spec, and waiting for it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.engines import ServiceNotReadyError
from temps_shared.ids import LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE_ID
from temps_shared.runtime import ContainerSpec, ContainerState, ImageMissingError, PortInUseError
from temps_shared.runtime.container_limits import LimitUpdateError
from temps_shared.store import ports
from temps_shared.store.services import ServiceRecord

from temps_provisioner.context import Provisioner
from temps_provisioner.steps import PRIMARY, Steps

log = logging.getLogger(__name__)
READY_POLL_S = 0.05


async def owned_container(
    p: Provisioner, service: ServiceRecord, name: str
) -> ContainerState | None:
    """The container under `name` if it is this service's; refuses a stranger's."""
    container = await p.runtime.inspect(name)
    if container is None or container.labels.get(LABEL_SERVICE_ID) == str(service.id):
        return container
    if container.labels.get(LABEL_MANAGED) == "true":
        raise RetryableError(f"container {name} still belongs to a service being deleted", 3.0)
    raise TerminalError(
        f"a container named {name} exists and is not managed by Temps; remove or rename it"
    )


async def drift_of(p: Provisioner, service: ServiceRecord, spec: ContainerSpec) -> list[str]:
    """How the existing container differs from `spec` (empty when it matches or is missing)."""
    container = await owned_container(p, service, spec.name)
    return spec.drift(container) if container is not None else []


async def converge(
    p: Provisioner,
    service: ServiceRecord,
    spec: ContainerSpec,
    *,
    start: bool = True,
    steps: Steps | None = None,
) -> list[str]:
    """Make the member match `spec` and (by default) run; returns the drift that forced a
    recreate (the data stays on the volume), empty if none. `steps` hears of what changed."""
    member = spec.labels.get(LABEL_ROLE, PRIMARY)
    container = await owned_container(p, service, spec.name)
    drift = spec.drift(container) if container is not None else []
    if container is not None and drift:
        log.info("recreating %s (%s); its data stays on its volume", spec.name, ", ".join(drift))
        await p.runtime.stop(spec.name, p.settings.stop_timeout_s)
        await p.runtime.remove(spec.name)
        container = None
    try:
        if container is None:
            if member == PRIMARY:
                await _guard_data_volume(p, service, spec)
            await p.runtime.ensure_network()
            container = await p.runtime.create(spec)
            if steps:
                await steps.completed(
                    f"container recreated ({', '.join(drift)})" if drift else "container created",
                    member,
                )
        elif container.status == "created":
            # A crash between create and start may have left it without its files.
            await p.runtime.put_files(spec.name, spec.files)
        if container.limits != spec.limits:
            await _update_limits(p, spec)
        if start and not container.running:
            await p.runtime.start(spec.name)
            if steps:
                await steps.completed("started", member)
    except ImageMissingError as exc:
        raise TerminalError(str(exc)) from exc
    except PortInUseError as exc:
        # Something outside the platform holds the port: take another; recreate next delivery.
        taken = await ports.local_ports(p.pool, service.id)
        await ports.reserve_local_ports(
            p.pool,
            service.id,
            p.settings.node_id,
            list(taken),
            p.settings.port_range,
            exclude=frozenset({exc.port}),
        )
        raise RetryableError(str(exc), delay_s=0.2) from exc
    return drift


async def _guard_data_volume(p: Provisioner, service: ServiceRecord, spec: ContainerSpec) -> None:
    """A primary's volume that was created once and is gone now held the service's data:
    refuse to start it again on a new, empty one (a replica's is re-cloned, not guarded)."""
    if await p.runtime.volume_exists(spec.volume):
        return
    created = await p.pool.fetchval(
        "SELECT 1 FROM service_volumes WHERE service_id = $1 AND volume = $2",
        service.id,
        spec.volume,
    )
    if created:
        raise TerminalError(
            f"the data volume {spec.volume} is gone: its data is lost; restore the service from"
            " a backup, or delete it (a new, empty volume would hide the loss)"
        )
    await p.pool.execute(
        "INSERT INTO service_volumes (service_id, volume) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        service.id,
        spec.volume,
    )


async def _update_limits(p: Provisioner, spec: ContainerSpec) -> None:
    try:
        await p.runtime.update_limits(spec.name, spec.limits)
    except LimitUpdateError as exc:
        # The container keeps its old caps; /runtime shows the drift. Not worth failing for.
        log.warning("could not apply the resource caps of %s: %s", spec.name, exc)


async def wait_ready(p: Provisioner, name: str, probe: Callable[[], Awaitable[None]]) -> None:
    """Poll `probe` until it passes; a container that exits while starting is a terminal error
    carrying its last log lines."""
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
            await probe()
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
