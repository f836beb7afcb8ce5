"""The host agent: answers what needs this Docker host and an answer now, over NATS
request/reply (`temps.rpc.<node>.<verb>`), so the gateway never touches Docker itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.bus.permissions import inbox_prefix
from temps_shared.engines.base import dial_endpoints
from temps_shared.engines.postgres import PORT_NAME, PostgresEngine
from temps_shared.ids import LABEL_GENERATION, LABEL_ROLE
from temps_shared.messages import AgentReply, AgentRequest, Role, agent_subject
from temps_shared.resources import ResourceLimits
from temps_shared.runtime import ContainerSpec, ContainerState
from temps_shared.runtime.container_limits import LimitUpdateError
from temps_shared.service_lock import service_lock
from temps_shared.store.services import ServiceRecord, get_service

from temps_provisioner.context import Provisioner
from temps_provisioner.members import converge, wait_ready
from temps_provisioner.oom_watch import oom_kill_counts
from temps_provisioner.reconcile import Desired, desired_state, pooler_pause
from temps_provisioner.steps import PRIMARY, Steps, announce_updating

log = logging.getLogger(__name__)
LOCK_WAIT_S = 60.0  # a caps change waits for a running reconcile of the same service
# A recreated member's wait for connections before the answer says `applied` (the gateway
# waits 120 s for the whole answer, the lock included).
READY_WAIT_S = 45.0


class AgentError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


async def _service(p: Provisioner, request: AgentRequest) -> ServiceRecord:
    service = await get_service(p.pool, request.service_id) if request.service_id else None
    if service is None or service.purged:
        raise AgentError("not_found", f"no service with id {request.service_id}")
    return service


def _role(container: ContainerState) -> str:
    return container.labels.get(LABEL_ROLE, "primary")


async def _members(p: Provisioner, service_id: UUID) -> list[ContainerState]:
    """The service's containers, primary first, then replicas in order, the pooler last."""
    found = await p.runtime.containers_of(str(service_id))
    return sorted(found, key=lambda c: (_role(c) != "primary", _role(c) == "pooler", _role(c)))


async def runtime(p: Provisioner, request: AgentRequest) -> dict[str, Any]:
    service = await _service(p, request)
    configured = ResourceLimits.from_stored(service.resources).docker()
    members = await _members(p, service.id)
    kills = await oom_kill_counts(p.pool, [c.name for c in members])
    return {
        "service_id": str(service.id),
        "members": [
            {
                "role": _role(c),
                "container_name": c.name,
                "container_id": c.id,
                "status": c.status,
                "restart_count": c.restart_count,
                "oom_killed": c.oom_killed,
                "oom_kills": kills.get(c.name, 0),
                "exit_code": c.exit_code,
                "image": c.image,
                "started_at": c.started_at,
                "resource_limits": c.limits.to_api().model_dump(),
                # What Docker really holds (a lifted memory cap reads 2**62 there).
                "docker_limits": c.limits.docker_view(),
                "drift": c.limits.drift(configured),
            }
            for c in members
        ],
    }


async def stats(p: Provisioner, request: AgentRequest) -> dict[str, Any]:
    service = await _service(p, request)
    members = await _members(p, service.id)

    async def sample(c: ContainerState) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "cpu_percent": 0.0,
            "memory_usage_bytes": 0,
            "memory_limit_bytes": 0,
            "memory_percent": 0.0,
            "online_cpus": 0,
        }
        if c.running:
            usage = await p.runtime.usage_sample(c.name)
        return {"role": _role(c), "container_name": c.name, "status": c.status, **usage}

    # Concurrently: each sample takes about a second (Docker measures over an interval).
    return {
        "service_id": str(service.id),
        "members": list(await asyncio.gather(*map(sample, members))),
    }


async def logs(p: Provisioner, request: AgentRequest) -> dict[str, Any]:
    service = await _service(p, request)
    member = request.member or "primary"
    match = [c for c in await _members(p, service.id) if _role(c) == member]
    if not match:
        raise AgentError("not_found", f"no member {member!r} (members are primary, replica-<n>)")
    tail = max(1, min(request.tail, 5000))
    return {"member": member, "lines": await p.runtime.logs_tail(match[0].name, tail)}


def _created_for(container: ContainerState, generation: int | None) -> bool:
    return generation is not None and container.labels.get(LABEL_GENERATION) == str(generation)


async def _until_ready(p: Provisioner, desired: Desired, spec: ContainerSpec) -> None:
    """Wait (READY_WAIT_S at most) until the member accepts connections as it should: the
    primary as the engine's readiness check says, a replica as a standby."""
    engine, role = desired.engine, spec.labels.get(LABEL_ROLE, PRIMARY)
    addressing = p.settings.service_addressing
    if role == PRIMARY:
        endpoints = dial_endpoints(addressing, engine.ports, spec.name, desired.local_ports)

        async def probe() -> None:
            await engine.check_ready(endpoints, desired.credentials, p.ca.cert_pem)

    else:
        assert isinstance(engine, PostgresEngine)
        local = {PORT_NAME: spec.ports[5432]}
        endpoint = dial_endpoints(addressing, engine.ports, spec.name, local)[PORT_NAME]

        async def probe() -> None:
            await engine.check_replica_ready(endpoint, desired.credentials, p.ca.cert_pem)

    async with asyncio.timeout(READY_WAIT_S):
        await wait_ready(p, spec.name, probe)


async def _ready_outcome(
    p: Provisioner,
    desired: Desired,
    spec: ContainerSpec,
    entry: dict[str, Any],
    steps: Steps | None = None,
) -> None:
    """`applied` only once a recreated member accepts connections again; `failed` (with the
    reason) when it does not within READY_WAIT_S."""
    try:
        await _until_ready(p, desired, spec)
    except (TimeoutError, RetryableError, TerminalError) as exc:
        entry["outcome"] = "failed"
        entry["error"] = (
            f"recreated, but not accepting connections after {READY_WAIT_S:.0f}s"
            f" ({str(exc) or type(exc).__name__}); the service stays updating while it starts"
        )
        return
    entry["outcome"] = "applied"
    if steps is not None:  # this answer recreated it: the step is its to announce
        await steps.completed("accepting connections", entry["role"])


async def apply_resources(p: Provisioner, request: AgentRequest) -> dict[str, Any]:
    """Apply the stored caps to every member now; one outcome per member. A member that had
    to be recreated (a cap lifted) is `applied` only once it accepts connections again; while
    it restarts the service shows `updating` (announced before it stops) and each step is an
    event (`ServiceStepCompleted`)."""
    service = await _service(p, request)
    async with service_lock(p.pool, service.id, wait_s=LOCK_WAIT_S):
        service = await _service(p, request)  # re-read under the lock
        desired = await desired_state(p, service)
        existing = {c.name: c for c in await p.runtime.containers_of(str(service.id))}
        steps = Steps(p, service, f"apply-resources:{service.generation}")
        applied = []
        for spec in desired.members:
            role = spec.labels.get(LABEL_ROLE, PRIMARY)
            entry: dict[str, Any] = {
                "role": role,
                "container_name": spec.name,
                "recreated": False,
            }
            container = existing.get(spec.name)
            if container is None:
                entry["outcome"] = "missing"
            elif _created_for(container, request.generation):
                # The reconcile queued with these caps got here first and recreated the member
                # (it waited for it to be ready; checked again, it costs one connection).
                entry["recreated"] = True
                if container.running:
                    await _ready_outcome(p, desired, spec, entry)
                else:
                    entry["outcome"] = "stopped"
            elif container.limits.lifts(spec.limits):
                # Docker 20.10 cannot lift a cap live: recreate with the data on its volume.
                if container.running:
                    await announce_updating(
                        p,
                        service,
                        f"recreating the {role} to lift its resource caps; data is kept",
                        f"apply-resources:{service.generation}:{role}:updating",
                    )
                # The pooler holds the primary's clients meanwhile (PAUSE … RESUME).
                holding = spec is desired.primary and container.running
                pause = await pooler_pause(p, desired) if holding else None
                async with pause or contextlib.nullcontext():
                    await converge(p, service, spec, start=container.running, steps=steps)
                    entry["recreated"] = True
                    if container.running:
                        await _ready_outcome(p, desired, spec, entry, steps)
                if not container.running:
                    entry["outcome"] = "stopped"
            else:
                try:
                    await p.runtime.update_limits(spec.name, spec.limits)
                    entry["outcome"] = "applied" if container.running else "stopped"
                except LimitUpdateError as exc:
                    entry["outcome"], entry["error"] = "failed", str(exc)
            applied.append(entry)
    return {"applied": applied}


async def host(p: Provisioner, request: AgentRequest) -> dict[str, Any]:
    return await p.runtime.host_info()


VERBS: dict[str, Callable[[Provisioner, AgentRequest], Awaitable[dict[str, Any]]]] = {
    "runtime": runtime,
    "stats": stats,
    "logs": logs,
    "apply-resources": apply_resources,
    "host": host,
}


async def serve_agent(p: Provisioner, nc: Client) -> Subscription:
    """Subscribe to this node's requests; replicas on the same node share them (queue group)."""

    async def on_request(msg: Msg) -> None:
        if not msg.reply.startswith(f"{inbox_prefix(Role.API)}."):
            # Only the gateway may ask, and its answers go to its own inbox. A request with any
            # other reply subject was bounced here by someone else (e.g. a worker naming this
            # subject as the reply of its own JetStream fetch): never act on it.
            log.warning("refused an agent request on %s with reply %r", msg.subject, msg.reply)
            return
        verb = msg.subject.rsplit(".", 1)[-1]
        try:
            handler = VERBS.get(verb)
            if handler is None:
                raise AgentError("invalid", f"unknown request {verb!r}")
            reply = AgentReply(
                ok=True, result=await handler(p, AgentRequest.model_validate_json(msg.data))
            )
        except AgentError as exc:
            reply = AgentReply(ok=False, error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            log.exception("agent request %s failed", msg.subject)
            reply = AgentReply(ok=False, error_code="docker_error", error_message=str(exc))
        await msg.respond(reply.model_dump_json().encode())

    in_flight: set[asyncio.Task[None]] = set()

    async def dispatch(msg: Msg) -> None:
        # Each request in its own task: a slow stats sample must not hold up the next request.
        task = asyncio.create_task(on_request(msg))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    return await nc.subscribe(
        agent_subject(p.settings.node_id, "*"), queue=f"agent-{p.settings.node_id}", cb=dispatch
    )
