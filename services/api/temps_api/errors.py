"""Every 4xx answers `{"error": {"code", "message", "details"}}` with a message saying what to
change; validation errors name the field."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def not_found(kind: str, ident: object) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} with id {ident}")


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


# A validation answer never echoes a large input back: at most this many problems, each
# field name and message cut to this many characters.
MAX_PROBLEMS = 20
MAX_TEXT = 200


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _field(loc: tuple[Any, ...] | list[Any], prefix: str) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return _cut(".".join(parts) or "body")


def validation_error(exc: ValidationError | RequestValidationError, prefix: str = "") -> ApiError:
    """A 422 listing each problem with its field (`prefix` names the enclosing object); at most
    MAX_PROBLEMS of them, none longer than MAX_TEXT."""
    errors = list(exc.errors())
    problems = [
        {"field": _field(err["loc"], prefix), "message": _cut(str(err["msg"]))}
        for err in errors[:MAX_PROBLEMS]
    ]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    if len(errors) > MAX_PROBLEMS:
        summary += f"; and {len(errors) - MAX_PROBLEMS} more"
    return ApiError(422, "invalid_input", summary, problems)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(exc)
        return JSONResponse(error_body(err.code, err.message, err.details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )


class ErrorDetail(BaseModel):
    code: str = Field(description="snake_case, stable: what went wrong")
    message: str = Field(description="What to change, naming the field where there is one.")
    details: Any = Field(None, description="For invalid input: [{field, message}].")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    error: ErrorDetail


_WHY = {
    400: "A malformed request (e.g. a Content-Length that is not a number)",
    401: "No token, or an unknown or revoked one",
    403: "The token lacks the permission this needs",
    404: "No such resource",
    409: "The resource's state forbids this now (a duplicate name, a delete in progress, …)",
    413: "The request body is larger than the limit (TEMPS_MAX_BODY_BYTES)",
    415: "A request body that is not application/json",
    422: "Invalid input; `details` names each field",
    502: "The Docker host agent failed",
    503: "A dependency (the database, the bus, the Docker host agent) does not answer",
}
ERROR_SCHEMA_REF = "#/components/schemas/ErrorBody"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, each with the ErrorBody schema."""
    return {
        status: {
            "description": _WHY[status],
            "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}},
        }
        for status in statuses
    }


def _needs_token(dependant: Dependant) -> bool:
    from temps_api.deps import authenticate  # deps imports this module

    return any(d.call is authenticate or _needs_token(d) for d in dependant.dependencies)


def document_errors(app: FastAPI, router: APIRouter) -> None:
    """List on every route of `router` the errors any route of its kind can answer — 401/403
    where a token is needed, 404 where a path names a resource, 422 where there is input,
    413/415/422 where a body may be sent — in addition to the route's own `responses=` (409,
    502, 503 …); and serve ErrorBody in `app`'s document."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        dependant = route.dependant
        codes: set[int] = set()
        if _needs_token(dependant):
            codes |= {401, 403}
        if dependant.path_params:
            codes |= {404, 422}
        if dependant.query_params or dependant.header_params or dependant.body_params:
            codes.add(422)
        if (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}:
            codes |= {413, 415, 422}
        for status, entry in error_responses(*sorted(codes)).items():
            route.responses.setdefault(status, entry)
            route.responses[status].setdefault("content", entry["content"])
        # FastAPI's own 422 schema would stand beside ours otherwise.
        if 422 in route.responses:
            route.responses[422]["content"] = error_responses(422)[422]["content"]

    if getattr(app.openapi, "serves_error_body", False):
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            error = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(error.pop("$defs", {}))
            schemas["ErrorBody"] = error
            for unused in ("HTTPValidationError", "ValidationError"):
                if f'/schemas/{unused}"' not in json.dumps(document):
                    schemas.pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    openapi.serves_error_body = True  # type: ignore[attr-defined]
    app.openapi = openapi  # type: ignore[method-assign]
