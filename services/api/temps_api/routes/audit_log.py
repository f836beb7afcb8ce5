"""/api/audit-log: who did what, to which target, from where (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from temps_api.auth import ADMIN, Principal
from temps_api.deps import State, require
from temps_api.schemas import AuditEntry

router = APIRouter(prefix="/api", tags=["audit"])


@router.get("/audit-log", response_model=list[AuditEntry])
async def audit_log(
    state: State,
    _: Annotated[Principal, Depends(require(ADMIN))],
    service_id: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    rows = await state.pool.fetch(
        "SELECT at, actor, action, target, ip, details FROM audit_log"
        " WHERE ($1::text IS NULL OR target = $1)"
        " AND ($2::text IS NULL OR actor LIKE '%' || $2 || '%')"
        " AND ($3::timestamptz IS NULL OR at >= $3) ORDER BY at DESC LIMIT $4",
        service_id,
        actor,
        since,
        limit,
    )
    return [{**dict(r), "at": r["at"].isoformat()} for r in rows]
