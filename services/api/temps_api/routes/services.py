"""/api/external-services: create, read, start, stop, retry, delete, credentials."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import ValidationError
from temps_shared.engines import ENGINES, default_version, offered_versions
from temps_shared.messages import (
    ReconcileService,
    ServiceOperationRequested,
    ServiceStatus,
)
from temps_shared.store import outbox
from temps_shared.store.certificate_authority import installation_ca_certificate
from temps_shared.store.links import active_links_of_service, link_aad, set_link_secrets
from temps_shared.store.service_registration import ServiceNameTaken, register_service
from temps_shared.store.services import (
    ServiceRecord,
    bump_generation,
    get_service,
    rotate_secrets,
    secrets_aad,
    set_desired_state,
    update_parameters,
)
from temps_shared.store.types import Connection

from temps_api.audit import record_audit
from temps_api.auth import EXTERNAL_SERVICES_READ, EXTERNAL_SERVICES_WRITE, SECRETS_READ, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_responses, not_found, validation_error
from temps_api.idempotency import Answer, run_once
from temps_api.projector import requested_status
from temps_api.resource_limits import check_limits
from temps_api.schemas import CredentialsPublic, ServiceCreate, ServicePublic, ServiceUpdate
from temps_api.service_views import get_public, list_public
from temps_api.storage_guard import refuse_shrink_below_usage

router = APIRouter(prefix="/api/external-services", tags=["external-services"])
Reader = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_READ))]
Writer = Annotated[Principal, Depends(require(EXTERNAL_SERVICES_WRITE))]
SecretReader = Annotated[Principal, Depends(require(SECRETS_READ))]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _check_create(body: ServiceCreate, state: State) -> tuple[str, dict[str, Any]]:
    """The version and parameters to store, or a 422 naming the field."""
    engine = ENGINES.get(body.service_type)
    versions = offered_versions(state.settings, body.service_type)
    if engine is None or not versions:
        on_offer = ", ".join(sorted(t for t in ENGINES if offered_versions(state.settings, t)))
        raise ApiError(
            422,
            "invalid_input",
            f"service_type: {body.service_type!r} is not available here; on offer: {on_offer}",
            [{"field": "service_type", "message": f"one of: {on_offer}"}],
        )
    version = default_version(versions, engine) if body.version is None else str(body.version)
    if version not in versions:
        on_offer = ", ".join(sorted(versions, key=int))
        raise ApiError(
            422,
            "invalid_input",
            f"version: {body.service_type} {version} is not available here; on offer: {on_offer}",
            [{"field": "version", "message": f"one of: {on_offer}"}],
        )
    try:
        parameters = engine.parameters_model().model_validate(body.parameters or {})
    except ValidationError as exc:
        raise validation_error(exc, prefix="parameters") from exc
    return version, parameters.model_dump()


async def _request_operation(
    conn: Connection, service_id: UUID, operation: str, generation: int
) -> None:
    """Announce the operation and queue the reconcile, in the caller's transaction."""
    await outbox.enqueue(
        conn,
        ServiceOperationRequested(
            service_id=service_id, operation=operation, generation=generation
        ),
    )
    await outbox.enqueue(
        conn, ReconcileService(service_id=service_id, generation=generation, reason=operation)
    )


def _accepted(service: ServicePublic, extra_headers: dict[str, str] | None = None) -> Answer:
    return Answer(202, json.loads(service.model_dump_json()), extra_headers or {})


@router.post(
    "",
    status_code=202,
    response_model=ServicePublic,
    # 502/503: caps in `resources` are judged against the Docker host, asked of its agent.
    responses=error_responses(409, 502, 503),
)
async def create_service(
    body: ServiceCreate,
    request: Request,
    state: State,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    version, parameters = _check_create(body, state)
    limits = await check_limits(state, body.resources) if body.resources else None

    async def work(conn: Connection) -> Answer:
        engine = ENGINES[body.service_type]
        try:
            service_id = await register_service(
                conn,
                state.keyring,
                name=body.name,
                service_type=body.service_type,
                version=version,
                parameters=parameters,
                resources=limits.model_dump() if limits else {},
                credentials=engine.generate_credentials(body.name),
            )
        except ServiceNameTaken as exc:
            raise ApiError(
                409,
                "name_taken",
                f"name: a service named {body.name!r} exists; choose another",
                [{"field": "name"}],
            ) from exc
        await record_audit(
            conn,
            principal,
            "service.created",
            str(service_id),
            request,
            {"name": body.name, "service_type": body.service_type},
        )
        public = await get_public(conn, service_id)
        assert public is not None
        return _accepted(public, {"Location": f"/api/external-services/{service_id}"})

    return await run_once(
        state.pool,
        principal,
        idempotency_key,
        "POST",
        request.url.path,
        work,
        body.model_dump(mode="json"),
    )


@router.get("", response_model=list[ServicePublic])
async def list_services(state: State, _: Reader) -> list[ServicePublic]:
    return await list_public(state.pool)


@router.get("/{service_id}", response_model=ServicePublic)
async def get_service_public(service_id: UUID, state: State, _: Reader) -> ServicePublic:
    service = await get_public(state.pool, service_id)
    if service is None:
        raise not_found("service", service_id)
    return service


# Applies an operation's change to the desired state; returns the new generation.
Apply = Callable[[Connection, ServiceRecord], Awaitable[int]]


def _set_desired(desired_state: str) -> Apply:
    async def apply(conn: Connection, service: ServiceRecord) -> int:
        return await set_desired_state(conn, service.id, desired_state)

    return apply


async def _retry(conn: Connection, service: ServiceRecord) -> int:
    return await bump_generation(conn, service.id)


async def _change(
    state: State,
    principal: Principal,
    request: Request,
    service_id: UUID,
    operation: str,
    apply: Apply,
    idempotency_key: str | None = None,
    details: dict[str, Any] | None = None,
) -> Response:
    """One user operation: checks, the desired-state change, its event and command, the audit
    row — in one transaction, at most once per Idempotency-Key."""

    async def work(conn: Connection) -> Answer:
        service = await get_service(conn, service_id, for_update=True)
        if service is None or service.purged:
            raise not_found("service", service_id)
        current = await get_public(conn, service_id)
        assert current is not None
        if service.desired_state == "deleted" and operation != "delete":
            raise ApiError(409, "service_deleting", "the service is being deleted")
        if operation == "delete" and (linked := await active_links_of_service(conn, service_id)):
            raise ApiError(
                409,
                "linked",
                f"the service is linked to {len(linked)} project environment(s); unlink them "
                "first (DELETE /api/external-services/{id}/projects/{project_id})",
            )
        if operation == "retry" and current.status != ServiceStatus.FAILED:
            raise ApiError(
                409,
                "not_failed",
                f"only a failed service can be retried; this one is {current.status}",
            )
        generation = await apply(conn, service)
        await _request_operation(conn, service_id, operation, generation)
        await record_audit(
            conn, principal, f"service.{operation}", str(service_id), request, details
        )
        public = await get_public(conn, service_id)
        assert public is not None
        if operation == "update" and (shown := requested_status(operation, current.status)):
            # What GET shows once the request is projected: never `operational` for a change
            # that may restart members (`updating` until every member is ready again).
            public = public.model_copy(update={"status": shown[0], "status_reason": shown[1]})
        return _accepted(public)

    return await run_once(
        state.pool, principal, idempotency_key, request.method, request.url.path, work
    )


@router.patch(
    "/{service_id}",
    status_code=202,
    response_model=ServicePublic,
    responses=error_responses(409),
)
async def update_service(
    service_id: UUID, body: ServiceUpdate, request: Request, state: State, principal: Writer
) -> Response:
    """Change parameters (merged with the stored ones); applied live where the engine can,
    by a restart (data kept) where it cannot."""

    async def apply(conn: Connection, service: ServiceRecord) -> int:
        model = ENGINES[service.service_type].parameters_model()
        try:
            merged = model.model_validate({**service.parameters, **body.parameters})
        except ValidationError as exc:
            raise validation_error(exc, prefix="parameters") from exc
        await refuse_shrink_below_usage(conn, service, merged.model_dump())
        return await update_parameters(conn, service.id, merged.model_dump())

    return await _change(
        state,
        principal,
        request,
        service_id,
        "update",
        apply,
        details={"parameters": body.parameters},
    )


@router.delete(
    "/{service_id}",
    status_code=202,
    response_model=ServicePublic,
    responses=error_responses(409),
)
async def delete_service(
    service_id: UUID, request: Request, state: State, principal: Writer
) -> Response:
    return await _change(state, principal, request, service_id, "delete", _set_desired("deleted"))


@router.post(
    "/{service_id}/start",
    status_code=202,
    response_model=ServicePublic,
    responses=error_responses(409),
)
async def start_service(
    service_id: UUID,
    request: Request,
    state: State,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _change(
        state, principal, request, service_id, "start", _set_desired("running"), idempotency_key
    )


@router.post(
    "/{service_id}/stop",
    status_code=202,
    response_model=ServicePublic,
    responses=error_responses(409),
)
async def stop_service(
    service_id: UUID,
    request: Request,
    state: State,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _change(
        state, principal, request, service_id, "stop", _set_desired("stopped"), idempotency_key
    )


@router.post(
    "/{service_id}/retry",
    status_code=202,
    response_model=ServicePublic,
    responses=error_responses(409),
)
async def retry_service(
    service_id: UUID,
    request: Request,
    state: State,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _change(state, principal, request, service_id, "retry", _retry, idempotency_key)


# Secrets a rotation renews: the admin's password (PostgreSQL, Redis) or key pair (S3 — its
# access key names the static identity file, so a new one also makes SeaweedFS reload it).
ADMIN_SECRETS = ("password", "access_key", "secret_key")


@router.post(
    "/{service_id}/rotate-credentials",
    status_code=202,
    response_model=ServicePublic,
    responses=error_responses(409),
)
async def rotate_credentials(
    service_id: UUID,
    request: Request,
    state: State,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """New secrets for the admin and every link user, stored with the links' variables in one
    transaction; the provisioner applies them (open connections stay) and announces
    `CredentialsRotated`."""

    async def apply(conn: Connection, service: ServiceRecord) -> int:
        if service.previous_secrets_ciphertext is not None:
            raise ApiError(
                409,
                "rotation_in_progress",
                "a credential rotation is still being applied; try again shortly",
            )
        engine = ENGINES[service.service_type]
        current, fresh = (
            service.credentials(state.keyring),
            engine.generate_credentials(service.name),
        )
        rotated = {**current, **{k: fresh[k] for k in ADMIN_SECRETS if k in current}}
        generation = await rotate_secrets(
            conn,
            service.id,
            state.keyring.encrypt(json.dumps(rotated).encode(), secrets_aad(service.id)),
        )
        for link in await active_links_of_service(conn, service.id):
            renewed = engine.new_link_credentials("rotate", link.environment, link.id)
            secret = {**link.credentials(state.keyring), "password": renewed["password"]}
            if service.service_type == "s3":  # the access key is half of the key pair
                secret["username"] = renewed["username"]
            await set_link_secrets(
                conn, link.id, state.keyring.encrypt(json.dumps(secret).encode(), link_aad(link.id))
            )
        return generation

    return await _change(state, principal, request, service_id, "rotate", apply, idempotency_key)


@router.get(
    "/{service_id}/credentials",
    response_model=CredentialsPublic,
    response_model_exclude_none=True,
    responses=error_responses(409),
)
async def get_credentials(
    service_id: UUID, request: Request, response: Response, state: State, principal: SecretReader
) -> dict[str, Any]:
    """The instance's administrator credentials; audited, and refused if the audit fails."""
    response.headers["Cache-Control"] = "no-store"
    service = await get_service(state.pool, service_id)
    public = await get_public(state.pool, service_id)
    if service is None or public is None:
        raise not_found("service", service_id)
    if public.connection_info is None:
        raise ApiError(409, "not_ready", "the service has no address yet; it is still provisioning")
    ca_pem = await installation_ca_certificate(state.pool)
    view = ENGINES[service.service_type].credentials_view(
        service.credentials(state.keyring), public.connection_info, ca_pem or ""
    )
    async with state.pool.acquire() as conn:
        await record_audit(
            conn, principal, "service.credentials_revealed", str(service_id), request
        )
    return view
