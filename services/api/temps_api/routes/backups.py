"""Backups of a service: ask for one (the backup worker takes it), list the catalogue, download
an artifact (decrypted, streamed from the store), restore one in place or as a new service.
Each write is one transaction: catalogue row, outbox command, audit row."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any
from urllib.parse import quote
from uuid import UUID, uuid4

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from temps_shared.backups import layout
from temps_shared.backups.destination import builtin_destination, load_destination
from temps_shared.backups.identity import backup_identity
from temps_shared.backups.restore_plan import (
    NameTaken,
    NewService,
    PlanError,
    queue_restore,
    register_service,
)
from temps_shared.backups.store import BackupStore, StoreError
from temps_shared.crypto import load_or_create_master_key
from temps_shared.engines import ENGINES, offered_versions
from temps_shared.ids import NAME_PATTERN
from temps_shared.messages import RestoreBackup, RunBackup
from temps_shared.store import outbox
from temps_shared.store.backup_schedules import schedule_of
from temps_shared.store.backups import (
    BackupRow,
    backups_of,
    get_backup,
    insert_backup,
    request_restore,
)
from temps_shared.store.services import ServiceRecord, get_service
from temps_shared.store.types import Connection

from temps_api.audit import record_audit
from temps_api.auth import (
    BACKUPS_READ,
    BACKUPS_WRITE,
    EXTERNAL_SERVICES_WRITE,
    SECRETS_READ,
    Principal,
)
from temps_api.backup_download import stream_artifact
from temps_api.deps import State, described, require
from temps_api.errors import ApiError, error_responses, not_found

router = APIRouter(prefix="/api/external-services", tags=["backups"])
Reader = Annotated[Principal, Depends(require(BACKUPS_READ))]
Writer = Annotated[Principal, Depends(require(BACKUPS_WRITE))]
SecretReader = Annotated[Principal, Depends(require(SECRETS_READ))]
# The engines the backup worker can back up (`temps_shared.backups.engines`: not imported
# here, it brings the Docker SDK).
BACKED_UP = ("postgres", "redis", "s3")


async def _service(conn: Connection, service_id: UUID) -> ServiceRecord:
    service = await get_service(conn, service_id)
    if service is None or service.purged:
        raise not_found("service", service_id)
    return service


@router.post("/{service_id}/backups", status_code=202, responses=error_responses(409, 422))
async def create_backup(
    service_id: UUID, request: Request, state: State, principal: Writer
) -> JSONResponse:
    """Back the service up now; the answer is the catalogue entry (`requested`)."""
    async with state.pool.acquire() as conn, conn.transaction():
        service = await _service(conn, service_id)
        if service.service_type not in BACKED_UP:
            raise ApiError(
                422,
                "unsupported",
                f"backups of {service.service_type} services are not available yet",
            )
        if service.desired_state != "running":
            raise ApiError(
                409, "not_running", f"service {service.name} is {service.desired_state}; start it"
            )
        backup_id = uuid4()
        await insert_backup(conn, backup_id, service_id, "logical")
        await outbox.enqueue(conn, RunBackup(service_id=service_id, backup_id=backup_id))
        await record_audit(
            conn, principal, "backup.requested", str(service_id), request,
            {"backup_id": str(backup_id)},
        )  # fmt: skip
        row = await get_backup(conn, backup_id)
    assert row is not None
    return JSONResponse(row.public(), status_code=202)


@router.get("/{service_id}/backups")
async def list_backups(service_id: UUID, state: State, _: Reader) -> dict[str, Any]:
    """The service's backups, newest first, and its schedule (`PATCH …/backups` changes it)."""
    async with state.pool.acquire() as conn:
        await _service(conn, service_id)
        rows = await backups_of(conn, service_id)
        schedule = await schedule_of(conn, service_id)
    return {"backups": [row.public() for row in rows], "schedule": schedule.public()}


@router.get("/{service_id}/backups/{backup_id}")
async def get_one_backup(
    service_id: UUID, backup_id: UUID, state: State, _: Reader
) -> dict[str, Any]:
    """One catalogue entry; 404 for an unknown backup (or one of another service)."""
    async with state.pool.acquire() as conn:
        await _service(conn, service_id)
        backup = await get_backup(conn, backup_id)
    if backup is None or backup.service_id != service_id:
        raise not_found("backup", backup_id)
    return backup.public()


class RestoreRequest(BaseModel):
    """Without `as_new_service`: in place (the service's data is replaced)."""

    model_config = ConfigDict(extra="forbid")
    as_new_service: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Restore into a new service of this name (same engine, version, settings;"
        " new credentials) instead of in place.",
    )


async def _completed_backup(conn: Connection, service_id: UUID, backup_id: UUID) -> BackupRow:
    """The service's backup, completed (404 unknown or another service's, 409 unfinished)."""
    backup = await get_backup(conn, backup_id)
    if backup is None or backup.service_id != service_id:
        raise not_found("backup", backup_id)
    if backup.state != "completed" or backup.location is None:
        raise ApiError(
            409, "backup_not_completed", f"backup {backup_id} is {backup.state}, not completed"
        )
    return backup


async def _new_service_for(
    conn: Connection, state: State, source: ServiceRecord, name: str
) -> UUID:
    """A service like `source` named `name`, with its own credentials (409 taken, 422 its
    version no longer offered)."""
    if source.version not in offered_versions(state.settings, source.service_type):
        raise ApiError(
            422,
            "invalid_input",
            f"{source.service_type} {source.version} is no longer offered here; restore in place",
        )
    credentials = ENGINES[source.service_type].generate_credentials(name)
    # New secrets, but the same primary database: the new service's connection string then
    # names the restored data (PostgreSQL).
    if "database" in credentials:
        credentials["database"] = source.credentials(state.keyring)["database"]
    new = NewService(
        name=name,
        engine=source.service_type,
        version=source.version,
        parameters=source.parameters,
        resources=source.resources,
        credentials=credentials,
    )
    try:
        return await register_service(conn, state.keyring, new)
    except NameTaken as exc:
        raise ApiError(409, exc.code, exc.message, [{"field": "as_new_service"}]) from exc
    except PlanError as exc:
        raise ApiError(422, exc.code, exc.message, [{"field": "as_new_service"}]) from exc


async def _refuse_conflicting_restore(
    conn: Connection, service: ServiceRecord, backup_id: UUID, *, in_place: bool
) -> None:
    """409 for what would only fail in the worker after its retries: an in-place restore of a
    service that is stopped or being deleted, or while one of its restores is still under way
    (and a second restore of a backup still being restored, either way). The service row is
    locked, so two requests at once are decided one after the other."""
    await conn.execute("SELECT 1 FROM services WHERE id = $1 FOR UPDATE", service.id)
    if in_place and service.desired_state != "running":
        raise ApiError(
            409,
            "not_running",
            f"service {service.name} is {service.desired_state}; start it, or restore the "
            "backup as a new service",
        )
    busy: UUID | None = await conn.fetchval(
        "SELECT backup_id FROM backups WHERE restore_state = 'requested'"
        " AND (backup_id = $2 OR ($3 AND service_id = $1)) LIMIT 1",
        service.id,
        backup_id,
        in_place,
    )
    if busy is not None:
        raise ApiError(
            409,
            "restore_in_progress",
            f"a restore of backup {busy} is still under way; wait until it ended",
        )


@router.post(
    "/{service_id}/backups/{backup_id}/restore",
    status_code=202,
    responses=error_responses(409, 422),
)
async def restore_backup(
    service_id: UUID,
    backup_id: UUID,
    request: Request,
    state: State,
    principal: Writer,
    body: Annotated[RestoreRequest | None, Body()] = None,
) -> JSONResponse:
    """Restore a completed backup into its service, in place (its data is replaced), or with
    `{"as_new_service": "name"}` into a new service of the same engine, version and settings
    (`new_service` in the answer names it)."""
    as_new = body.as_new_service if body is not None else None
    if as_new is not None and not principal.can(EXTERNAL_SERVICES_WRITE):
        # It creates a service: what creating one needs, too.
        raise ApiError(
            403,
            "forbidden",
            f"this token lacks the {EXTERNAL_SERVICES_WRITE!r} permission (as_new_service"
            " creates a service)",
            {"required": EXTERNAL_SERVICES_WRITE},
        )
    async with state.pool.acquire() as conn, conn.transaction():
        source = await _service(conn, service_id)
        await _completed_backup(conn, service_id, backup_id)
        await _refuse_conflicting_restore(conn, source, backup_id, in_place=as_new is None)
        details: dict[str, Any] = {"backup_id": str(backup_id)}
        if as_new is None:
            restore_id = uuid4()
            await request_restore(conn, backup_id, restore_id)
            await outbox.enqueue(
                conn,
                RestoreBackup(service_id=service_id, backup_id=backup_id, restore_id=restore_id),
            )
        else:
            new_id = await _new_service_for(conn, state, source, as_new)
            restore_id = await queue_restore(conn, backup_id, new_id)
            details |= {"as_new_service": as_new, "new_service_id": str(new_id)}
        details["restore_id"] = str(restore_id)
        await record_audit(
            conn, principal, "backup.restore_requested", str(service_id), request, details
        )
        row = await get_backup(conn, backup_id)
    assert row is not None
    answer = row.public()
    headers = {}
    if as_new is not None:
        answer["new_service"] = {"id": details["new_service_id"], "name": as_new}
        headers["Location"] = f"/api/external-services/{details['new_service_id']}"
    return JSONResponse(answer, status_code=202, headers=headers)


def _main_artifact(artifacts: list[dict[str, Any]], own_database: str | None) -> dict[str, Any]:
    """What a download gives by default: PostgreSQL the service's own database's dump (else the
    first database's), other engines their first artifact (dump.rdb, the S3 archive)."""
    dumps = [a for a in artifacts if a.get("database")]
    for artifact in dumps:
        if artifact["database"] == own_database:
            return artifact
    return dumps[0] if dumps else artifacts[0]


def _plain(artifact: dict[str, Any]) -> str:
    """An artifact's name as downloaded (the manifest's names the stored, encrypted file)."""
    return str(artifact["name"]).removesuffix(layout.SUFFIX)


def _file_name(service: ServiceRecord, backup: BackupRow, artifact: str) -> str:
    taken = backup.finished_at or backup.requested_at
    name = f"{service.name}-{taken:%Y%m%dT%H%M%SZ}-{artifact}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@router.get(
    "/{service_id}/backups/{backup_id}/download",
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The artifact, decrypted and decompressed.",
        },
        **error_responses(409),
        **described(502, "The backup store failed"),
    },
    response_class=StreamingResponse,
)
async def download_backup(
    service_id: UUID,
    backup_id: UUID,
    request: Request,
    state: State,
    principal: Reader,
    _secrets: SecretReader,
    artifact: Annotated[
        str | None,
        Query(max_length=200, description="An artifact of the manifest (default: the main one)."),
    ] = None,
) -> StreamingResponse:
    """One artifact of a completed backup, decrypted and decompressed, streamed from the store
    (also needs `secrets:read`; audited as `backup.downloaded`). A damaged artifact aborts the
    response mid-way: the client sees an error, never a silently short file."""
    async with state.pool.acquire() as conn:
        service = await _service(conn, service_id)
        backup = await _completed_backup(conn, service_id, backup_id)
        destination = await load_destination(
            conn, state.keyring, backup.destination_id, builtin_destination(state.settings)
        )
    assert backup.location is not None
    store = await asyncio.to_thread(BackupStore, destination)
    try:
        document = await asyncio.to_thread(store.get_json, backup.location + layout.MANIFEST)
    except StoreError as exc:
        raise ApiError(502, "store_unavailable", f"the backup store failed: {exc}") from exc
    try:  # the SHA-256 the stream is checked against is then the installation's own
        layout.check_seal(document, state.keyring, backup_id)
    except layout.ManifestNotSealed as exc:
        raise ApiError(409, "backup_not_sealed", f"{exc}; nothing was downloaded") from exc
    artifacts: list[dict[str, Any]] = document.get("artifacts", [])
    if artifact is None:
        own = service.credentials(state.keyring).get("database")
        chosen = _main_artifact(artifacts, own) if artifacts else None
    else:
        wanted = (artifact, artifact + layout.SUFFIX)  # its plain name or its stored one
        chosen = next((a for a in artifacts if a["name"] in wanted), None)
    if chosen is None:
        names = ", ".join(_plain(a) for a in artifacts)
        raise ApiError(
            404, "not_found", f"backup {backup_id} has no artifact {artifact!r}; it has: {names}"
        )
    name = _plain(chosen)
    async with state.pool.acquire() as conn, conn.transaction():
        await record_audit(
            conn, principal, "backup.downloaded", str(service_id), request,
            {"backup_id": str(backup_id), "artifact": name},
        )  # fmt: skip
    identity = backup_identity(
        await asyncio.to_thread(load_or_create_master_key, state.settings.data_dir)
    )
    file_name = _file_name(service, backup, name)
    return StreamingResponse(
        stream_artifact(
            store, backup.location + str(chosen["name"]), str(chosen["sha256"]), identity
        ),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{file_name}"; '
            f"filename*=UTF-8''{quote(file_name)}",
            "X-Backup-Artifact": name,
        },
    )
