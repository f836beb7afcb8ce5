"""/api/projects: projects, their environments, and the variables their links inject. A project
or an environment is deleted only while nothing is linked to it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from temps_shared.engines import ENGINES
from temps_shared.links import mask
from temps_shared.store.certificate_authority import installation_ca_certificate
from temps_shared.store.links import active_links_of_environment
from temps_shared.store.types import Executor

from temps_api.audit import record_audit
from temps_api.auth import EXTERNAL_SERVICES_READ, EXTERNAL_SERVICES_WRITE, SECRETS_READ, Principal
from temps_api.deps import State, authenticate, described, require
from temps_api.errors import ApiError, not_found
from temps_api.service_views import get_public

router = APIRouter(prefix="/api/projects", tags=["projects"])
Reader = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_READ))]
Writer = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_WRITE))]
NAME = r"^[a-z][a-z0-9-]{0,62}$"


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="Lowercase letters, digits and '-'.")


class EnvironmentCreate(ProjectCreate):
    pass


class ProjectPublic(BaseModel):
    id: UUID
    name: str
    environments: list[str] = Field(description="Its environments, oldest first.")
    created_at: datetime


class LinkedService(BaseModel):
    service_id: UUID
    service_type: str
    status: str = Field(description="pending, active, revoking, revoked or failed")


class EnvironmentVariables(BaseModel):
    variables: dict[str, str]
    links: list[LinkedService]


_NO_PROJECT = "Unknown project"
_NO_ENVIRONMENT = "Unknown project or environment"


async def _project(conn: Executor, project_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT id, name, created_at FROM projects WHERE id = $1", project_id)
    if row is None:
        raise not_found("project", project_id)
    environments = await conn.fetch(
        "SELECT name FROM project_environments WHERE project_id = $1 ORDER BY created_at",
        project_id,
    )
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "environments": [e["name"] for e in environments],
        "created_at": row["created_at"].isoformat(),
    }


@router.post(
    "",
    status_code=201,
    response_model=ProjectPublic,
    responses=described(409, "A project of that name exists"),
)
async def create_project(
    body: ProjectCreate, request: Request, state: State, principal: Writer
) -> dict[str, Any]:
    project_id = uuid4()
    async with state.pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO projects (id, name) VALUES ($1, $2)", project_id, body.name
            )
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(
                409,
                "name_taken",
                f"name: a project named {body.name!r} exists",
                [{"field": "name"}],
            ) from exc
        await conn.execute(
            "INSERT INTO project_environments (project_id, name) VALUES ($1, 'production')",
            project_id,
        )
        await record_audit(
            conn, principal, "project.created", str(project_id), request, {"name": body.name}
        )
        return await _project(conn, project_id)


@router.get("", response_model=list[ProjectPublic])
async def list_projects(state: State, _: Reader) -> list[dict[str, Any]]:
    ids = await state.pool.fetch("SELECT id FROM projects ORDER BY created_at")
    return [await _project(state.pool, r["id"]) for r in ids]


@router.get("/{project_id}", response_model=ProjectPublic, responses=described(404, _NO_PROJECT))
async def get_project(project_id: UUID, state: State, _: Reader) -> dict[str, Any]:
    return await _project(state.pool, project_id)


@router.post(
    "/{project_id}/environments",
    status_code=201,
    response_model=ProjectPublic,
    responses=described(404, _NO_PROJECT)
    | described(409, "The project has an environment of that name"),
)
async def create_environment(
    project_id: UUID, body: EnvironmentCreate, request: Request, state: State, principal: Writer
) -> dict[str, Any]:
    async with state.pool.acquire() as conn, conn.transaction():
        await _project(conn, project_id)
        try:
            await conn.execute(
                "INSERT INTO project_environments (project_id, name) VALUES ($1, $2)",
                project_id,
                body.name,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(
                409,
                "name_taken",
                f"name: the project already has an environment {body.name!r}",
                [{"field": "name"}],
            ) from exc
        await record_audit(
            conn,
            principal,
            "project.environment_created",
            str(project_id),
            request,
            {"environment": body.name},
        )
        return await _project(conn, project_id)


async def environment_exists(
    conn: Executor, project_id: UUID, environment: str, *, for_delete: bool = False
) -> str:
    """The project's name; 404 for an unknown project or environment.

    In a transaction it also holds both rows until the commit (the environment FOR UPDATE when
    it is about to be deleted): a link created in that transaction and a concurrent delete of
    the project or environment are serialised (the delete waits, then sees the link; or the
    link waits, then sees no project).
    """
    name: str | None = await conn.fetchval(
        "SELECT name FROM projects WHERE id = $1 FOR SHARE", project_id
    )
    if name is None:
        raise not_found("project", project_id)
    lock = "FOR UPDATE" if for_delete else "FOR SHARE"
    if not await conn.fetchval(
        f"SELECT true FROM project_environments WHERE project_id = $1 AND name = $2 {lock}",
        project_id,
        environment,
    ):
        raise ApiError(404, "not_found", f"project {name!r} has no environment {environment!r}")
    return name


async def _active_links(
    conn: Executor, project_id: UUID, environment: str | None = None
) -> list[dict[str, Any]]:
    """The links that keep a project (or one of its environments) from being deleted."""
    rows = await conn.fetch(
        "SELECT l.id, l.service_id, l.service_type, l.environment, s.name AS service_name"
        " FROM service_links l JOIN services s ON s.id = l.service_id"
        " WHERE l.project_id = $1 AND ($2::text IS NULL OR l.environment = $2)"
        " AND l.desired_state = 'active' ORDER BY l.created_at",
        project_id,
        environment,
    )
    return [
        {
            "link_id": str(r["id"]),
            "service_id": str(r["service_id"]),
            "service_name": r["service_name"],
            "service_type": r["service_type"],
            "environment": r["environment"],
        }
        for r in rows
    ]


def _still_linked(what: str, links: list[dict[str, Any]]) -> ApiError:
    named = ", ".join(
        f"{x['service_type']} service {x['service_name']!r} ({x['service_id']})"
        f" in {x['environment']}"
        for x in links
    )
    return ApiError(
        409,
        "still_linked",
        f"{what} is linked to {named}; unlink first"
        " (DELETE /api/external-services/{service_id}/projects/{project_id}?environment=…)",
        {"links": links},
    )


@router.delete(
    "/{project_id}",
    status_code=204,
    response_class=Response,
    responses=described(404, _NO_PROJECT)
    | described(409, "A service is linked to the project (`details.links` names each link)"),
)
async def delete_project(
    project_id: UUID, request: Request, state: State, principal: Writer
) -> Response:
    """Delete a project and its environments; refused (409) while any service is linked."""
    async with state.pool.acquire() as conn, conn.transaction():
        # The lock first: a link being created now commits before we look (or fails after).
        name = await conn.fetchval("SELECT name FROM projects WHERE id = $1 FOR UPDATE", project_id)
        if name is None:
            raise not_found("project", project_id)
        links = await _active_links(conn, project_id)
        if links:
            raise _still_linked(f"project {name!r}", links)
        environments = await conn.fetch(
            "DELETE FROM project_environments WHERE project_id = $1 RETURNING name", project_id
        )
        await conn.execute("DELETE FROM projects WHERE id = $1", project_id)
        await record_audit(
            conn,
            principal,
            "project.deleted",
            str(project_id),
            request,
            {"name": name, "environments": sorted(e["name"] for e in environments)},
        )
    return Response(status_code=204)


@router.delete(
    "/{project_id}/environments/{environment}",
    status_code=204,
    response_class=Response,
    responses=described(404, _NO_ENVIRONMENT)
    | described(409, "A service is linked to the environment (`details.links` names each link)"),
)
async def delete_environment(
    project_id: UUID, environment: str, request: Request, state: State, principal: Writer
) -> Response:
    """Delete one environment of a project; refused (409) while any service is linked to it."""
    async with state.pool.acquire() as conn, conn.transaction():
        name = await environment_exists(conn, project_id, environment, for_delete=True)
        links = await _active_links(conn, project_id, environment)
        if links:
            raise _still_linked(f"environment {environment!r} of project {name!r}", links)
        await conn.execute(
            "DELETE FROM project_environments WHERE project_id = $1 AND name = $2",
            project_id,
            environment,
        )
        await record_audit(
            conn,
            principal,
            "project.environment_deleted",
            str(project_id),
            request,
            {"environment": environment},
        )
    return Response(status_code=204)


@router.get(
    "/{project_id}/environments/{environment}/variables",
    response_model=EnvironmentVariables,
    responses=described(404, _NO_ENVIRONMENT),
)
async def variables(
    project_id: UUID,
    environment: str,
    request: Request,
    response: Response,
    state: State,
    principal: Annotated[Principal, Depends(authenticate)],
    reveal: bool = False,
) -> dict[str, Any]:
    """What linked services inject; secrets masked unless `reveal` (secrets:read, audited)."""
    if not principal.can(EXTERNAL_SERVICES_READ):
        raise ApiError(403, "forbidden", "this token lacks the 'external_services:read' permission")
    if reveal and not principal.can(SECRETS_READ):
        raise ApiError(
            403,
            "forbidden",
            "revealing secrets needs the 'secrets:read' permission",
            {"required": SECRETS_READ},
        )
    response.headers["Cache-Control"] = "no-store"
    await environment_exists(state.pool, project_id, environment)
    found: dict[str, str] = {}
    secrets: list[str] = []
    secret_names: set[str] = set()
    links = []
    for link in await active_links_of_environment(state.pool, project_id, environment):
        status = (
            await state.pool.fetchval("SELECT status FROM link_status WHERE link_id = $1", link.id)
            or "pending"
        )
        links.append(
            {
                "service_id": str(link.service_id),
                "service_type": link.service_type,
                "status": status,
            }
        )
        service = await get_public(state.pool, link.service_id)
        if status != "active" or service is None or service.connection_info is None:
            continue  # a link's variables appear once it is active
        grant = link.grant(state.keyring)
        values, names = ENGINES[link.service_type].link_variables(service.connection_info, grant)
        found.update(values)
        secret_names |= names
        secrets.append(grant.password)
    if found:
        found["TEMPS_CA_CERT"] = await installation_ca_certificate(state.pool) or ""
    if reveal:
        async with state.pool.acquire() as conn:
            await record_audit(
                conn,
                principal,
                "project.variables_revealed",
                str(project_id),
                request,
                {"environment": environment},
            )
    else:
        found = mask(found, secrets, secret_names)
    return {"variables": found, "links": links}
