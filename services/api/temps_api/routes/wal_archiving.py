"""WAL archiving of a PostgreSQL service (pgBackRest, to the active backup destination):
`POST` records the request and hands it to the backup worker, which reports each step; `GET`
shows where it is. docs/pitr.md describes the whole."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from temps_shared.backups.destination import builtin_destination, load_destination
from temps_shared.backups.recovery_window import RecoveryWindow, recovery_window
from temps_shared.backups.store import BackupStore, StoreError
from temps_shared.messages import ConfigureWalArchiving
from temps_shared.store import outbox
from temps_shared.store.services import ServiceRecord, get_service
from temps_shared.store.types import Connection
from temps_shared.store.wal_archiving import archiving_of, record_request

from temps_api.audit import record_audit
from temps_api.auth import BACKUPS_READ, BACKUPS_WRITE, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_responses, not_found

router = APIRouter(prefix="/api/external-services", tags=["backups"])
Reader = Annotated[Principal, Depends(require(BACKUPS_READ))]
Writer = Annotated[Principal, Depends(require(BACKUPS_WRITE))]


class WalArchivingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(description="Archive WAL (point-in-time recovery) or stop archiving.")


class WalArchivingPublic(BaseModel):
    enabled: bool = Field(description="What was last asked for.")
    state: str = Field(description="enabling | on | disabling | off | failed")
    step: str | None = Field(None, description="The last step done while changing.")
    reason: str | None = Field(None, description="Why it failed.")
    requested_at: datetime | None = None
    updated_at: datetime | None = None


_NEVER = WalArchivingPublic(enabled=False, state="off")


class RecoveryWindowPublic(BaseModel):
    earliest: datetime | None = Field(
        description="The earliest restorable instant (one second after the oldest physical"
        " backup ended); null before the first backup."
    )
    latest: datetime | None = Field(
        description="The latest restorable instant (the newest archived WAL); null before"
        " the first backup."
    )


async def _postgres(conn: Connection, service_id: UUID) -> ServiceRecord:
    service = await get_service(conn, service_id)
    if service is None or service.purged:
        raise not_found("service", service_id)
    if service.service_type != "postgres":
        raise ApiError(422, "unsupported", "WAL archiving applies to PostgreSQL services only")
    return service


@router.get(
    "/{service_id}/wal-archiving",
    response_model=WalArchivingPublic,
    responses=error_responses(422),
)
async def get_wal_archiving(service_id: UUID, state: State, _: Reader) -> WalArchivingPublic:
    """Whether the service archives its WAL, and where a change stands."""
    async with state.pool.acquire() as conn:
        await _postgres(conn, service_id)
        row = await archiving_of(conn, service_id)
    return WalArchivingPublic(**row.public()) if row is not None else _NEVER


@router.get(
    "/{service_id}/recovery-window",
    response_model=RecoveryWindowPublic,
    responses=error_responses(422, 502),
)
async def get_recovery_window(service_id: UUID, state: State, _: Reader) -> RecoveryWindowPublic:
    """The instants the service can be restored to, read from its WAL archive."""
    async with state.pool.acquire() as conn:
        service = await _postgres(conn, service_id)
        row = await archiving_of(conn, service_id)
        destination = await load_destination(
            conn,
            state.keyring,
            row.destination_id if row is not None else None,
            builtin_destination(state.settings),
        )
    if row is None:
        return RecoveryWindowPublic(earliest=None, latest=None)

    def read() -> RecoveryWindow:
        return recovery_window(BackupStore(destination), service_id, service.name)

    try:
        window = await asyncio.to_thread(read)
    except StoreError as exc:
        raise ApiError(502, "store_unreachable", f"the WAL archive cannot be read: {exc}") from exc
    return RecoveryWindowPublic(earliest=window.earliest, latest=window.latest)


@router.post(
    "/{service_id}/wal-archiving",
    status_code=202,
    response_model=WalArchivingPublic,
    responses=error_responses(409, 422),
)
async def set_wal_archiving(
    service_id: UUID,
    body: WalArchivingUpdate,
    request: Request,
    state: State,
    principal: Writer,
) -> JSONResponse:
    """Turn WAL archiving on or off; the backup worker carries it out (`enabling`, then `on`,
    or `failed` with the reason). Asking again re-runs every step (each is idempotent)."""
    async with state.pool.acquire() as conn, conn.transaction():
        service = await _postgres(conn, service_id)
        if service.desired_state != "running":
            raise ApiError(
                409, "not_running", f"service {service.name} is {service.desired_state}; start it"
            )
        request_id = uuid4()
        row = await record_request(conn, service_id, body.enabled, request_id)
        await outbox.enqueue(
            conn,
            ConfigureWalArchiving(
                service_id=service_id, request_id=request_id, enabled=body.enabled
            ),
        )
        await record_audit(
            conn,
            principal,
            "wal_archiving.enabled" if body.enabled else "wal_archiving.disabled",
            str(service_id),
            request,
            {"request_id": str(request_id)},
        )
    answer = WalArchivingPublic(**row.public())
    return JSONResponse(answer.model_dump(mode="json"), status_code=202)
