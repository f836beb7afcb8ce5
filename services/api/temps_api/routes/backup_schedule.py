"""A service's backup schedule: on/off, when (cron, UTC), how long backups are kept, how often
they are verified. The backup worker's scheduler acts on it (`temps_backup.scheduler`); the
answer is the schedule with its defaults filled in and the next slot."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temps_shared.backups import cron
from temps_shared.store.backup_schedules import BACKED_UP, schedule_of, update_schedule
from temps_shared.store.services import get_service

from temps_api.audit import record_audit
from temps_api.auth import BACKUPS_WRITE, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_responses, not_found

router = APIRouter(prefix="/api/external-services", tags=["backups"])
Writer = Annotated[Principal, Depends(require(BACKUPS_WRITE))]


class ScheduleUpdate(BaseModel):
    """What to change; an absent field stays as it is. `schedule: null` restores the default
    (daily, at a time derived from the service)."""

    # Strict: lax mode would take `true` as 1 day, "7" as 7 (JSON has the right types).
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool | None = Field(None, description="Automatic backups on or off.")
    schedule: str | None = Field(
        None,
        max_length=200,
        description="Five-field cron (minute hour day-of-month month day-of-week), in UTC.",
        examples=["30 2 * * *"],
    )
    retention_days: int | None = Field(
        None, ge=1, le=90, description="Backups older than this are deleted (1 to 90 days)."
    )
    verify: Literal["every", "daily", "off"] | None = Field(
        None, description="Test-restore every backup, the first of each day, or none."
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return cron.parse(value).text
        except cron.CronError as exc:
            raise ValueError(str(exc)) from exc


@router.patch("/{service_id}/backups", responses=error_responses(422))
async def update_backup_schedule(
    service_id: UUID, body: ScheduleUpdate, request: Request, state: State, principal: Writer
) -> dict[str, Any]:
    """Change the service's backup schedule or retention; the answer is the whole schedule."""
    given = body.model_dump(exclude_unset=True)
    async with state.pool.acquire() as conn, conn.transaction():
        service = await get_service(conn, service_id)
        if service is None or service.purged:
            raise not_found("service", service_id)
        if service.service_type not in BACKED_UP:
            raise ApiError(
                422,
                "unsupported",
                f"backups of {service.service_type} services are not available yet",
            )
        await update_schedule(
            conn,
            service_id,
            enabled=body.enabled,
            schedule=body.schedule,
            reset_schedule="schedule" in given and body.schedule is None,
            retention_days=body.retention_days,
            verify=body.verify,
        )
        await record_audit(
            conn, principal, "backup.schedule_updated", str(service_id), request, given
        )
        schedule = await schedule_of(conn, service_id)
    return schedule.public()
