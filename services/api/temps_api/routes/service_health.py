"""/api/external-services/{id}/health and /wal-health: what the health monitor found.

(`routes/health.py` is the gateway's own liveness, /api/health.)
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from temps_shared.health import PostgresWalHealth

from temps_api.auth import EXTERNAL_SERVICES_READ, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_body, not_found
from temps_api.health_views import ServiceHealthPublic, service_health, wal_snapshot
from temps_api.service_views import get_public

router = APIRouter(prefix="/api/external-services", tags=["external-services"])
Reader = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_READ))]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "Service not found, not a PostgreSQL service, or no snapshot yet",
        "content": {"application/json": {"example": error_body("not_found", "…")}},
    }
}


@router.get("/{service_id}/health", response_model=ServiceHealthPublic)
async def get_service_health(
    service_id: UUID,
    state: State,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=1000, description="History entries, newest first.")] = 50,
) -> ServiceHealthPublic:
    service = await get_public(state.pool, service_id)
    if service is None:
        raise not_found("service", service_id)
    return await service_health(
        state.pool, service_id, service.status, service.status_reason, limit
    )


@router.get(
    "/{service_id}/wal-health",
    response_model=PostgresWalHealth,
    responses=_NOT_FOUND,
)
async def get_wal_health(service_id: UUID, state: State, _: Reader) -> JSONResponse:
    service = await get_public(state.pool, service_id)
    if service is None:
        raise not_found("service", service_id)
    if service.service_type != "postgres":
        raise ApiError(
            404,
            "not_found",
            f"service {service_id} is a {service.service_type} service: WAL health exists for "
            "PostgreSQL services only",
        )
    snapshot = await wal_snapshot(state.pool, service_id)
    if snapshot is None:
        raise ApiError(
            404,
            "not_found",
            f"no WAL health snapshot of service {service_id} yet: the monitor records one on "
            "every health cycle while the service runs",
        )
    model = PostgresWalHealth.model_validate(snapshot)
    body = model.model_dump(mode="json")
    # A warning shows only the fields of its kind (remediation_sql where there is one).
    body["warnings"] = [w.model_dump(mode="json", exclude_none=True) for w in model.warnings]
    return JSONResponse(body)
