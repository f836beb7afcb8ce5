"""/api/health: liveness of the gateway and its clients (no token needed)."""

from __future__ import annotations

import asyncio
from typing import Literal

import asyncpg
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from temps_api.deps import State

router = APIRouter(prefix="/api", tags=["health"])


class GatewayHealth(BaseModel):
    status: Literal["ok", "unavailable"]
    database: bool
    bus: bool


@router.get(
    "/health",
    response_model=GatewayHealth,
    responses={503: {"model": GatewayHealth, "description": "The database or NATS is down"}},
)
async def health(state: State) -> JSONResponse:
    try:
        database = await asyncio.wait_for(state.pool.fetchval("SELECT 1"), 5) == 1
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        database = False  # a 503 that says so, not a 500
    bus = state.nc.is_connected
    ok = database and bus
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "database": database, "bus": bus},
        status_code=200 if ok else 503,
    )
