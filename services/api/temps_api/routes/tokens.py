"""/api/tokens: admins create (shown once), list and revoke API tokens."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response

from temps_api.audit import record_audit
from temps_api.auth import ADMIN, PERMISSIONS, Principal, create_token
from temps_api.deps import State, require
from temps_api.errors import ApiError, not_found
from temps_api.schemas import TokenCreate, TokenCreated, TokenPublic

router = APIRouter(prefix="/api/tokens", tags=["tokens"])
Admin = Annotated[Principal, Depends(require(ADMIN))]
_COLUMNS = "id, name, permissions, created_at, last_used_at"


@router.post("", status_code=201, response_model=TokenCreated)
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
        token_id, token = await create_token(conn, body.name, sorted(set(body.permissions)))
        await record_audit(
            conn,
            principal,
            "token.created",
            str(token_id),
            request,
            {"name": body.name, "permissions": body.permissions},
        )
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = $1", token_id)
    assert row is not None
    return TokenCreated(**dict(row), token=token)


@router.get("", response_model=list[TokenPublic])
async def list_tokens(state: State, _: Admin) -> list[TokenPublic]:
    rows = await state.pool.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at")
    return [TokenPublic(**dict(r)) for r in rows]


@router.delete("/{token_id}", status_code=204)
async def revoke(token_id: UUID, request: Request, state: State, principal: Admin) -> Response:
    async with state.pool.acquire() as conn, conn.transaction():
        deleted = await conn.fetchval("DELETE FROM api_tokens WHERE id = $1 RETURNING id", token_id)
        if deleted is None:
            raise not_found("token", token_id)
        await record_audit(conn, principal, "token.revoked", str(token_id), request)
    return Response(status_code=204)
