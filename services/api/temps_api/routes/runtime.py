"""Per-container resource limits and what the containers do: /runtime, /stats, /logs and
PATCH /resources (the spec's "Per-Container Resource Limits")."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Query, Request
from temps_shared.messages import ReconcileService, ServiceOperationRequested
from temps_shared.resources import ResourceLimits
from temps_shared.store import outbox
from temps_shared.store.services import get_service, update_resources
from temps_shared.store.types import Connection

from temps_api.agent_client import ask_agent
from temps_api.audit import record_audit
from temps_api.auth import EXTERNAL_SERVICES_READ, EXTERNAL_SERVICES_WRITE, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_responses, not_found
from temps_api.resource_limits import check_limits
from temps_api.schemas import ResourcesApplied, ServiceLogs, ServiceRuntime, ServiceStats

router = APIRouter(prefix="/api/external-services", tags=["resources"])
Reader = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_READ))]
Writer = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_WRITE))]
# Every route here asks the service's Docker host agent.
AGENT_ERRORS = error_responses(502, 503)


async def _existing(state: State, service_id: UUID) -> None:
    service = await get_service(state.pool, service_id)
    if service is None or service.purged:
        raise not_found("service", service_id)


@router.get("/{service_id}/runtime", response_model=ServiceRuntime, responses=AGENT_ERRORS)
async def runtime(service_id: UUID, state: State, _: Reader) -> Any:
    """Per member: Docker status, restarts, OOM kills, exit code, image, live caps, drift."""
    await _existing(state, service_id)
    return await ask_agent(state, "runtime", service_id)


@router.get("/{service_id}/stats", response_model=ServiceStats, responses=AGENT_ERRORS)
async def stats(service_id: UUID, state: State, _: Reader) -> Any:
    """One CPU/memory sample per member (CPU measured over half a second)."""
    await _existing(state, service_id)
    return await ask_agent(state, "stats", service_id)


@router.get("/{service_id}/logs", response_model=ServiceLogs, responses=AGENT_ERRORS)
async def logs(
    service_id: UUID,
    state: State,
    _: Reader,
    member: Annotated[str, Query(max_length=64, description="primary | replica-<n>")] = "primary",
    tail: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> Any:
    """The member container's recent log lines."""
    await _existing(state, service_id)
    return await ask_agent(state, "logs", service_id, member=member, tail=tail)


ResourcesBody = Annotated[
    dict[str, Any],
    Body(json_schema_extra=ResourceLimits.model_json_schema()),
]


@router.patch(
    "/{service_id}/resources",
    response_model=ResourcesApplied,
    responses={
        **error_responses(409, 502, 503),
        422: {
            "description": "Invalid caps, caps this host cannot give, or caps Docker refused on"
            " every member (then the previous caps are restored; `details.applied` says what"
            " each member answered)"
        },
    },
)
async def set_resources(
    service_id: UUID, body: ResourcesBody, request: Request, state: State, principal: Writer
) -> dict[str, Any]:
    """Store the caps (a reconcile converges to them even if this answer is lost), then apply
    them live on every member through the host's agent and say what each member did. Caps
    that Docker refuses on every member are not kept: the previous ones are stored again."""
    limits = await check_limits(state, body)
    async with state.pool.acquire() as conn, conn.transaction():
        service = await get_service(conn, service_id, for_update=True)
        if service is None or service.purged:
            raise not_found("service", service_id)
        if service.desired_state == "deleted":
            raise ApiError(409, "service_deleting", "the service is being deleted")
        previous = dict(service.resources or {})
        generation = await _store_caps(conn, service_id, limits.model_dump())
        await record_audit(
            conn,
            principal,
            "service.resources",
            str(service_id),
            request,
            {"resources": limits.model_dump()},
        )
    result = await ask_agent(
        state, "apply-resources", service_id, timeout_s=120, generation=generation
    )
    applied: list[dict[str, Any]] = result["applied"]
    refused = [a for a in applied if a.get("outcome") == "failed"]
    if refused and not any(a.get("outcome") in ("applied", "stopped") for a in applied):
        await _roll_back(state, principal, request, service_id, generation, previous)
        reason = refused[0].get("error") or "no reason given"
        raise ApiError(
            422,
            "caps_refused",
            f"resources: Docker refused these caps on every member ({reason}); the previous"
            " caps stay",
            {"applied": applied, "previous": previous},
        )
    return {"limits": limits.model_dump(), "applied": applied}


async def _store_caps(conn: Connection, service_id: UUID, caps: dict[str, Any]) -> int:
    """New desired caps, their announcement and the reconcile that converges to them."""
    generation = await update_resources(conn, service_id, caps)
    await outbox.enqueue(
        conn,
        ServiceOperationRequested(
            service_id=service_id, operation="resources", generation=generation
        ),
    )
    await outbox.enqueue(
        conn, ReconcileService(service_id=service_id, generation=generation, reason="resources")
    )
    return generation


async def _roll_back(
    state: State,
    principal: Principal,
    request: Request,
    service_id: UUID,
    generation: int,
    previous: dict[str, Any],
) -> None:
    """Store the caps from before `generation` again (a new generation, so a reconcile
    converges back) — unless another change came after it, which then stands."""
    async with state.pool.acquire() as conn, conn.transaction():
        service = await get_service(conn, service_id, for_update=True)
        if service is None or service.purged or service.generation != generation:
            return
        await _store_caps(conn, service_id, previous)
        await record_audit(
            conn,
            principal,
            "service.resources_rolled_back",
            str(service_id),
            request,
            {"resources": previous},
        )
