"""Per-container resource limits and what the containers do: /runtime, /stats, /logs and
PATCH /resources (the spec's "Per-Container Resource Limits")."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from temps_shared.messages import ReconcileService, ServiceOperationRequested
from temps_shared.store import outbox
from temps_shared.store.services import get_service, update_resources

from temps_api.agent_client import ask_agent
from temps_api.audit import record_audit
from temps_api.auth import EXTERNAL_SERVICES_READ, EXTERNAL_SERVICES_WRITE, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, not_found
from temps_api.resource_limits import check_limits

router = APIRouter(prefix="/api/external-services", tags=["resources"])
Reader = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_READ))]
Writer = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_WRITE))]


async def _existing(state: State, service_id: UUID) -> None:
    service = await get_service(state.pool, service_id)
    if service is None or service.purged:
        raise not_found("service", service_id)


@router.get("/{service_id}/runtime")
async def runtime(service_id: UUID, state: State, _: Reader) -> Any:
    """Per member: Docker status, restarts, OOM kills, exit code, image, live caps, drift."""
    await _existing(state, service_id)
    return await ask_agent(state, "runtime", service_id)


@router.get("/{service_id}/stats")
async def stats(service_id: UUID, state: State, _: Reader) -> Any:
    """One CPU/memory sample per member (CPU measured over half a second)."""
    await _existing(state, service_id)
    return await ask_agent(state, "stats", service_id)


@router.get("/{service_id}/logs")
async def logs(
    service_id: UUID,
    state: State,
    _: Reader,
    member: str = "primary",
    tail: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> Any:
    """The member container's recent log lines."""
    await _existing(state, service_id)
    return await ask_agent(state, "logs", service_id, member=member, tail=tail)


@router.patch("/{service_id}/resources")
async def set_resources(
    service_id: UUID, body: dict[str, Any], request: Request, state: State, principal: Writer
) -> dict[str, Any]:
    """Store the caps (a reconcile converges to them even if this answer is lost), then apply
    them live on every member through the host's agent and say what each member did."""
    limits = await check_limits(state, body)
    async with state.pool.acquire() as conn, conn.transaction():
        service = await get_service(conn, service_id, for_update=True)
        if service is None or service.purged:
            raise not_found("service", service_id)
        if service.desired_state == "deleted":
            raise ApiError(409, "service_deleting", "the service is being deleted")
        generation = await update_resources(conn, service_id, limits.model_dump())
        await outbox.enqueue(
            conn,
            ServiceOperationRequested(
                service_id=service_id, operation="resources", generation=generation
            ),
        )
        await outbox.enqueue(
            conn, ReconcileService(service_id=service_id, generation=generation, reason="resources")
        )
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
    return {"limits": limits.model_dump(), "applied": result["applied"]}
