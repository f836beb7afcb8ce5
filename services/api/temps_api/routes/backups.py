"""Backups of a service: ask for one (the backup worker takes it), list the catalogue, restore
one in place. Each request is one transaction: catalogue row, outbox command, audit row."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from temps_shared.messages import RestoreBackup, RunBackup
from temps_shared.store import outbox
from temps_shared.store.backups import backups_of, get_backup, insert_backup, request_restore
from temps_shared.store.services import ServiceRecord, get_service
from temps_shared.store.types import Connection

from temps_api.audit import record_audit
from temps_api.auth import BACKUPS_READ, BACKUPS_WRITE, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_responses, not_found

router = APIRouter(prefix="/api/external-services", tags=["backups"])
Reader = Annotated[Principal, Depends(require(BACKUPS_READ))]
Writer = Annotated[Principal, Depends(require(BACKUPS_WRITE))]
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
    """The service's backups, newest first."""
    async with state.pool.acquire() as conn:
        await _service(conn, service_id)
        rows = await backups_of(conn, service_id)
    return {"backups": [row.public() for row in rows]}


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


@router.post(
    "/{service_id}/backups/{backup_id}/restore",
    status_code=202,
    responses=error_responses(409),
)
async def restore_backup(
    service_id: UUID, backup_id: UUID, request: Request, state: State, principal: Writer
) -> JSONResponse:
    """Restore a completed backup into its service, in place (its data is replaced)."""
    async with state.pool.acquire() as conn, conn.transaction():
        await _service(conn, service_id)
        backup = await get_backup(conn, backup_id)
        if backup is None or backup.service_id != service_id:
            raise not_found("backup", backup_id)
        if backup.state != "completed":
            raise ApiError(
                409, "backup_not_completed", f"backup {backup_id} is {backup.state}, not completed"
            )
        restore_id = uuid4()
        await request_restore(conn, backup_id, restore_id)
        await outbox.enqueue(
            conn, RestoreBackup(service_id=service_id, backup_id=backup_id, restore_id=restore_id)
        )
        await record_audit(
            conn, principal, "backup.restore_requested", str(service_id), request,
            {"backup_id": str(backup_id), "restore_id": str(restore_id)},
        )  # fmt: skip
        row = await get_backup(conn, backup_id)
    assert row is not None
    return JSONResponse(row.public(), status_code=202)
