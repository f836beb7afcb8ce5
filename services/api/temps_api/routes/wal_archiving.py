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
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from temps_shared.backups.destination import builtin_destination, load_destination
from temps_shared.backups.recovery_window import RecoveryWindow, recovery_window
from temps_shared.backups.store import BackupStore, StoreError
from temps_shared.engines import offered_versions
from temps_shared.ids import NAME_PATTERN
from temps_shared.messages import ConfigureWalArchiving, RestoreToTime
from temps_shared.store import outbox
from temps_shared.store.service_registration import ServiceNameTaken, register_service
from temps_shared.store.services import ServiceRecord, get_service
from temps_shared.store.types import Connection
from temps_shared.store.wal_archiving import (
    archiving_of,
    pitr_restore,
    record_pitr_restore,
    record_request,
)

from temps_api.audit import record_audit
from temps_api.auth import BACKUPS_READ, BACKUPS_WRITE, EXTERNAL_SERVICES_WRITE, Principal
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


class PointInTimeRestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_time: AwareDatetime | None = Field(
        None,
        description="Restore the data as it was at this instant (with its offset, e.g."
        " 2026-12-03T10:15:00Z); absent: the newest archived state.",
    )
    as_new_service: str = Field(
        pattern=NAME_PATTERN,
        description="The new service that receives the data (same version and settings, no"
        " read replica); the source keeps running untouched.",
    )


class PointInTimeRestorePublic(BaseModel):
    id: UUID
    state: str = Field(description="requested | completed | failed")
    target_time: datetime | None
    reason: str | None = None
    new_service: dict[str, str] | None = Field(None, description="{id, name} of the new service")


@router.post(
    "/{service_id}/restore",
    status_code=202,
    response_model=PointInTimeRestorePublic,
    responses=error_responses(409, 422, 502),
)
async def restore_to_time(
    service_id: UUID,
    body: PointInTimeRestoreRequest,
    request: Request,
    state: State,
    principal: Writer,
) -> JSONResponse:
    """Restore the service's WAL archive as of `target_time` into a new service. A time outside
    the recovery window answers 422 naming the window."""
    if not principal.can(EXTERNAL_SERVICES_WRITE):
        raise ApiError(
            403,
            "forbidden",
            f"this token lacks the {EXTERNAL_SERVICES_WRITE!r} permission (the restore creates"
            " a service)",
            {"required": EXTERNAL_SERVICES_WRITE},
        )
    window = await get_recovery_window(service_id, state, principal)
    async with state.pool.acquire() as conn:
        source = await _postgres(conn, service_id)
        archiving = await archiving_of(conn, service_id)
    if archiving is None or not archiving.enabled or window.earliest is None:
        raise ApiError(
            409, "no_archive", f"service {source.name} has no WAL archive with a backup yet"
        )
    target, earliest, latest = body.target_time, window.earliest, window.latest or window.earliest
    if target is not None and not earliest <= target <= latest:
        raise ApiError(
            422,
            "outside_recovery_window",
            f"target_time: {target.isoformat()} is outside the recovery window"
            f" {earliest.isoformat()} … {latest.isoformat()}",
            {"earliest": earliest.isoformat(), "latest": latest.isoformat()},
        )
    if source.version not in offered_versions(state.settings, source.service_type):
        raise ApiError(
            422,
            "invalid_input",
            f"version {source.version} is no longer offered: the data cannot be restored here",
        )
    async with state.pool.acquire() as conn, conn.transaction():
        try:
            new_id = await register_service(
                conn,
                state.keyring,
                name=body.as_new_service,
                service_type=source.service_type,
                version=source.version,
                parameters={**source.parameters, "replicas": 0},
                resources=source.resources,
                # The restored data holds the source's roles: the new service takes them over.
                credentials=source.credentials(state.keyring),
            )
        except ServiceNameTaken as exc:
            raise ApiError(
                409,
                "name_taken",
                f"as_new_service: a service named {body.as_new_service!r} exists",
                [{"field": "as_new_service"}],
            ) from exc
        restore_id = uuid4()
        await record_pitr_restore(conn, restore_id, new_id, service_id, target)
        await outbox.enqueue(
            conn,
            RestoreToTime(
                service_id=new_id,
                restore_id=restore_id,
                source_service_id=service_id,
                stanza=source.name,
                destination_id=archiving.destination_id,
                target_time=target,
            ),
        )
        await record_audit(
            conn, principal, "backup.pitr_restore_requested", str(service_id), request,
            {"restore_id": str(restore_id), "new_service_id": str(new_id),
             "target_time": target.isoformat() if target else None},
        )  # fmt: skip
    answer = PointInTimeRestorePublic(
        id=restore_id,
        state="requested",
        target_time=target,
        new_service={"id": str(new_id), "name": body.as_new_service},
    )
    return JSONResponse(
        answer.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/api/external-services/{new_id}/restores/{restore_id}"},
    )


@router.get(
    "/{service_id}/restores/{restore_id}",
    response_model=PointInTimeRestorePublic,
)
async def get_restore_to_time(
    service_id: UUID, restore_id: UUID, state: State, _: Reader
) -> PointInTimeRestorePublic:
    """A point-in-time restore into this service, and how it ended."""
    async with state.pool.acquire() as conn:
        row = await pitr_restore(conn, service_id, restore_id)
    if row is None:
        raise not_found("restore", restore_id)
    return PointInTimeRestorePublic(
        id=row["id"], state=row["state"], target_time=row["target_time"], reason=row["reason"]
    )
