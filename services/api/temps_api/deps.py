"""FastAPI dependencies: the app state and the authenticated principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from temps_api.auth import Principal, find_principal
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
    principal = await find_principal(state.pool, token.strip())
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
