"""FastAPI dependencies: the app state and the authenticated principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from temps_api.auth import Principal, TokenExpired, find_principal
from temps_api.errors import ApiError
from temps_api.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.temps
    return state


State = Annotated[AppState, Depends(get_state)]


async def authenticate(request: Request, state: State) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "send an API token: Authorization: Bearer <token>")
    try:
        principal = await find_principal(state.pool, token.strip())
    except TokenExpired as exc:
        raise ApiError(
            401,
            "token_expired",
            f"the API token expired at {exc.expires_at.isoformat()}; ask an admin for a new one",
            {"expired_at": exc.expires_at.isoformat()},
        ) from exc
    if principal is None:
        raise ApiError(401, "unauthenticated", "the API token is unknown or was revoked")
    return principal


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        principal: Annotated[Principal, Depends(authenticate)],
    ) -> Principal:
        if not principal.can(permission):
            raise ApiError(
                403,
                "forbidden",
                f"this token lacks the {permission!r} permission",
                {"required": permission},
            )
        return principal

    return dependency


ERROR_BODY_REF = "#/components/schemas/ErrorBody"  # served by errors.document_errors


def described(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """A `responses=` entry for one error status of a route, with the route's own description
    (errors.document_errors adds the statuses every route of a kind can answer)."""
    return {
        status: {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}},
        }
    }
