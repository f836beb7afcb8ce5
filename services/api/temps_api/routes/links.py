"""/api/external-services/{id}/projects: link a service to a project + environment (a user of
its own, least privileged) and unlink it (the user is revoked; the data stays)."""

from __future__ import annotations

import json
from typing import Annotated, Any
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from temps_shared.engines import ENGINES
from temps_shared.messages import (
    LinkRequested,
    LinkRevokeRequested,
    ReconcileService,
    utcnow,
)
from temps_shared.store import outbox
from temps_shared.store.links import (
    LinkRecord,
    active_link,
    active_links_of_service,
    insert_link,
    keyspace_overlaps,
    link_aad,
    set_link_state,
)
from temps_shared.store.services import ServiceRecord, bump_generation, get_service
from temps_shared.store.types import Connection

from temps_api.audit import record_audit
from temps_api.auth import EXTERNAL_SERVICES_READ, EXTERNAL_SERVICES_WRITE, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_responses, not_found
from temps_api.routes.projects import environment_exists

router = APIRouter(prefix="/api/external-services", tags=["links"])
Reader = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_READ))]
Writer = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_WRITE))]


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: UUID
    environment: str = "production"
    key_prefix: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Redis only: keys and channels restricted to `<prefix>:*`.",
    )
    shared_keyspace: bool = Field(
        False,
        description=(
            "Redis only: accept sharing keys with other projects' links of the service. Without"
            " it, a link without key_prefix next to another project's link, or with the same"
            " key_prefix as another project's link, is refused with 409 naming those links."
        ),
    )


async def _writable_service(conn: Connection, service_id: UUID) -> ServiceRecord:
    service = await get_service(conn, service_id, for_update=True)
    if service is None or service.purged:
        raise not_found("service", service_id)
    if service.desired_state == "deleted":
        raise ApiError(409, "service_deleting", "the service is being deleted")
    return service


def _public(link: LinkRecord, status: str, username: str) -> dict[str, Any]:
    return {
        "id": str(link.id),
        "project_id": str(link.project_id),
        "environment": link.environment,
        "status": status,
        "username": username,
        "key_prefix": link.key_prefix,
        "shared_keyspace": link.shared_keyspace,
        "created_at": link.created_at.isoformat(),
    }


async def _refuse_shared_keyspace(
    conn: Connection, service_id: UUID, project_id: UUID, key_prefix: str | None
) -> None:
    """409 naming the other projects' links this one would share Redis keys with."""
    overlapping = keyspace_overlaps(
        await active_links_of_service(conn, service_id), project_id, key_prefix
    )
    if not overlapping:
        return
    names = dict(
        await conn.fetch(
            "SELECT id, name FROM projects WHERE id = ANY($1::uuid[])",
            [link.project_id for link in overlapping],
        )
    )
    details = [
        {
            "link_id": str(link.id),
            "project_id": str(link.project_id),
            "project": names.get(link.project_id),
            "environment": link.environment,
            "key_prefix": link.key_prefix,
        }
        for link in overlapping
    ]
    named = ", ".join(
        f"link {d['link_id']} (project {d['project']!r} / {d['environment']}, "
        + (f"key_prefix {d['key_prefix']!r})" if d["key_prefix"] else "no key_prefix)")
        for d in details
    )
    advice = (
        "give another key_prefix"
        if key_prefix
        else "give a key_prefix (keys and channels limited to <prefix>:*)"
    )
    raise ApiError(
        409,
        "keyspace_shared",
        f"this link would share Redis keys with another project's: {named}; {advice}, or send"
        ' "shared_keyspace": true to share them on purpose',
        details,
    )


@router.post("/{service_id}/projects", status_code=202, responses=error_responses(409))
async def link(
    service_id: UUID, body: LinkCreate, request: Request, state: State, principal: Writer
) -> JSONResponse:
    async with state.pool.acquire() as conn, conn.transaction():
        service = await _writable_service(conn, service_id)
        await environment_exists(conn, body.project_id, body.environment)
        if body.key_prefix and service.service_type != "redis":
            raise ApiError(
                422,
                "invalid_input",
                "key_prefix: only Redis links take a key prefix",
                [{"field": "key_prefix"}],
            )
        if body.shared_keyspace and service.service_type != "redis":
            raise ApiError(
                422,
                "invalid_input",
                "shared_keyspace: only Redis links share a keyspace",
                [{"field": "shared_keyspace"}],
            )
        if service.service_type == "redis" and not body.shared_keyspace:
            # The service row is locked (FOR UPDATE): links of one service are created one at
            # a time, so two requests cannot both pass this check.
            await _refuse_shared_keyspace(conn, service_id, body.project_id, body.key_prefix)
        project = await conn.fetchval("SELECT name FROM projects WHERE id = $1", body.project_id)
        link_id = uuid4()
        credentials = ENGINES[service.service_type].new_link_credentials(
            project, body.environment, link_id
        )
        record = LinkRecord(
            id=link_id,
            service_id=service_id,
            service_type=service.service_type,
            project_id=body.project_id,
            environment=body.environment,
            key_prefix=body.key_prefix,
            shared_keyspace=body.shared_keyspace,
            secrets_ciphertext=state.keyring.encrypt(
                json.dumps(credentials).encode(), link_aad(link_id)
            ),
            desired_state="active",
            created_at=utcnow(),
        )
        try:
            async with conn.transaction():
                await insert_link(conn, record)
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(
                409,
                "already_linked",
                f"project {project!r} / {body.environment} already has a {service.service_type}"
                " service linked; unlink it first",
            ) from exc
        generation = await bump_generation(conn, service_id)
        await outbox.enqueue(
            conn,
            LinkRequested(
                service_id=service_id,
                link_id=link_id,
                project_id=body.project_id,
                environment=body.environment,
                generation=generation,
            ),
        )
        await outbox.enqueue(
            conn, ReconcileService(service_id=service_id, generation=generation, reason="link")
        )
        await record_audit(
            conn,
            principal,
            "service.linked",
            str(service_id),
            request,
            {
                "project_id": str(body.project_id),
                "environment": body.environment,
                "key_prefix": body.key_prefix,
                "shared_keyspace": body.shared_keyspace,
            },
        )
    return JSONResponse(_public(record, "pending", credentials["username"]), status_code=202)


@router.get("/{service_id}/projects")
async def links(service_id: UUID, state: State, _: Reader) -> list[dict[str, Any]]:
    service = await get_service(state.pool, service_id)
    if service is None or service.purged:
        raise not_found("service", service_id)
    answer = []
    for record in await active_links_of_service(state.pool, service_id):
        status = (
            await state.pool.fetchval(
                "SELECT status FROM link_status WHERE link_id = $1", record.id
            )
            or "pending"
        )
        answer.append(_public(record, status, record.credentials(state.keyring)["username"]))
    return answer


@router.delete("/{service_id}/projects/{project_id}", status_code=202)
async def unlink(
    service_id: UUID,
    project_id: UUID,
    request: Request,
    state: State,
    principal: Writer,
    environment: str = "production",
) -> dict[str, Any]:
    async with state.pool.acquire() as conn, conn.transaction():
        await _writable_service(conn, service_id)
        record = await active_link(conn, service_id, project_id, environment)
        if record is None:
            raise ApiError(
                404,
                "not_linked",
                f"the service is not linked to project {project_id} / {environment}",
            )
        await set_link_state(conn, record.id, "revoked")
        generation = await bump_generation(conn, service_id)
        await outbox.enqueue(
            conn,
            LinkRevokeRequested(service_id=service_id, link_id=record.id, generation=generation),
        )
        await outbox.enqueue(
            conn, ReconcileService(service_id=service_id, generation=generation, reason="unlink")
        )
        await record_audit(
            conn,
            principal,
            "service.unlinked",
            str(service_id),
            request,
            {"project_id": str(project_id), "environment": environment},
        )
    return _public(record, "revoking", record.credentials(state.keyring)["username"])
