"""The audit trail: who did what to which target, from where."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from temps_shared.store.types import Connection

from temps_api.auth import Principal


async def record_audit(
    conn: Connection,
    principal: Principal,
    action: str,
    target: str | None,
    request: Request,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one audit row; raises if it cannot (reveal endpoints then fail closed)."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, ip, details) VALUES ($1, $2, $3, $4, $5)",
        f"token:{principal.name}:{principal.token_id}",
        action,
        target,
        request.client.host if request.client else None,
        details or {},
    )
