"""/api/health: liveness of the gateway and its clients (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from temps_api.deps import State

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health")
async def health(state: State) -> JSONResponse:
    database = await state.pool.fetchval("SELECT 1") == 1
    bus = state.nc.is_connected
    ok = database and bus
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "database": database, "bus": bus},
        status_code=200 if ok else 503,
    )
