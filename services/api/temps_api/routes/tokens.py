"""/api/tokens: admins create (shown once, optionally expiring), list and revoke API tokens."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response

from temps_api.audit import record_audit
from temps_api.auth import ADMIN, PERMISSIONS, Principal, create_token
from temps_api.deps import State, described, require
from temps_api.errors import ApiError, not_found
from temps_api.schemas import TokenCreate, TokenCreated, TokenPublic

router = APIRouter(prefix="/api/tokens", tags=["tokens"])
Admin = Annotated[Principal, Depends(require(ADMIN))]
_COLUMNS = "id, name, permissions, created_at, last_used_at, expires_at"


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "invalid_input", f"{field}: {message}", [{"field": field, "message": message}]
    )


def token_expiry(body: TokenCreate, now: datetime) -> datetime | None:
    """The expiry asked for (`expires_at` or `expires_in_s` from `now`), or None (never)."""
    if body.expires_at is not None and body.expires_in_s is not None:
        raise _invalid("expires_at", "give expires_at or expires_in_s, not both")
    if body.expires_in_s is not None:
        return now + timedelta(seconds=body.expires_in_s)
    if body.expires_at is None:
        return None
    if body.expires_at.tzinfo is None:
        raise _invalid("expires_at", "add a UTC offset, e.g. 2030-01-01T00:00:00Z")
    if body.expires_at <= now:
        raise _invalid("expires_at", f"must be in the future (now is {now.isoformat()})")
    return body.expires_at


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    responses=described(422, "Unknown permission, or an expiry in the past or given twice"),
)
async def create(
    body: TokenCreate, request: Request, state: State, principal: Admin
) -> TokenCreated:
    unknown = sorted(set(body.permissions) - set(PERMISSIONS))
    if unknown:
        raise ApiError(
            422,
            "invalid_input",
            f"permissions: unknown {', '.join(unknown)}; use any of {', '.join(PERMISSIONS)}",
            [{"field": "permissions", "message": f"unknown: {', '.join(unknown)}"}],
        )
    async with state.pool.acquire() as conn, conn.transaction():
        # The database's clock: the one that decides expiry when the token is used.
        expires_at = token_expiry(body, await conn.fetchval("SELECT now()"))
        token_id, token = await create_token(
            conn, body.name, sorted(set(body.permissions)), expires_at
        )
        await record_audit(
            conn,
            principal,
            "token.created",
            str(token_id),
            request,
            {
                "name": body.name,
                "permissions": body.permissions,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = $1", token_id)
    assert row is not None
    return TokenCreated(**dict(row), token=token)


@router.get("", response_model=list[TokenPublic])
async def list_tokens(state: State, _: Admin) -> list[TokenPublic]:
    rows = await state.pool.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at")
    return [TokenPublic(**dict(r)) for r in rows]


@router.delete(
    "/{token_id}",
    status_code=204,
    response_class=Response,
    responses=described(404, "Unknown token"),
)
async def revoke(token_id: UUID, request: Request, state: State, principal: Admin) -> Response:
    """Revoke: requests with the token are refused at once, its SSE streams end within ~1 s."""
    async with state.pool.acquire() as conn, conn.transaction():
        deleted = await conn.fetchval("DELETE FROM api_tokens WHERE id = $1 RETURNING id", token_id)
        if deleted is None:
            raise not_found("token", token_id)
        await record_audit(conn, principal, "token.revoked", str(token_id), request)
    return Response(status_code=204)
