"""Backup schedules (`backup_schedules`): when each service is backed up, how long its backups
are kept, how often they are verified. A service without a row (or with NULL columns) has the
defaults: enabled as its `backups` parameter says (true when absent), daily at a time derived
from its id, kept 7 days, every backup verified.

The backup worker's replicas share the rows as the monitor shares its probes: a replica claims
due rows (`FOR UPDATE SKIP LOCKED`) and moves each one's `next_run_at` to its next slot in the
same transaction that inserts the slot's backup, so a slot runs once whichever replica takes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from temps_shared.backups import cron
from temps_shared.store.backups import insert_backup
from temps_shared.store.types import Connection, Executor

DEFAULT_RETENTION_DAYS = 7
DEFAULT_VERIFY = "every"
VERIFY_CHOICES = ("every", "daily", "off")
# The engines the backup worker backs up (`temps_shared.backups.engines`, which brings Docker).
BACKED_UP = ("postgres", "redis", "s3")

# A boolean `backups` parameter decides when the schedule does not say.
_ENABLED = (
    "coalesce(c.enabled, CASE WHEN jsonb_typeof(s.parameters -> 'backups') = 'boolean'"
    " THEN (s.parameters -> 'backups')::boolean END, true)"
)


@dataclass(frozen=True)
class BackupSchedule:
    service_id: UUID
    enabled: bool
    schedule: str  # five-field cron, UTC
    retention_days: int
    verify: str  # every | daily | off
    next_run_at: datetime | None  # None: disabled
    default_schedule: bool  # `schedule` is the one derived from the service id

    def public(self) -> dict[str, Any]:
        """The schedule as the API shows it."""
        return {
            "enabled": self.enabled,
            "schedule": self.schedule,
            "schedule_is_default": self.default_schedule,
            "timezone": "UTC",
            "retention_days": self.retention_days,
            "verify": self.verify,
            "next_run_at": self.next_run_at.isoformat() if self.next_run_at else None,
        }


def effective_schedule(service_id: UUID, schedule: str | None) -> str:
    return schedule if schedule is not None else cron.default_schedule(service_id)


async def schedule_of(conn: Executor, service_id: UUID) -> BackupSchedule:
    """The service's schedule, defaults filled in (all defaults for an unknown service)."""
    row = await conn.fetchrow(
        f"SELECT {_ENABLED} AS enabled, c.schedule, c.retention_days, c.verify, c.next_run_at"
        " FROM services s LEFT JOIN backup_schedules c ON c.service_id = s.id WHERE s.id = $1",
        service_id,
    )
    enabled = bool(row["enabled"]) if row is not None else True
    stored = row["schedule"] if row is not None else None
    schedule = effective_schedule(service_id, stored)
    next_run_at: datetime | None = row["next_run_at"] if row is not None else None
    if enabled and next_run_at is None:  # not armed yet: the slot the scheduler will pick
        next_run_at = cron.parse(schedule).next_after(datetime.now(UTC))
    return BackupSchedule(
        service_id=service_id,
        enabled=enabled,
        schedule=schedule,
        retention_days=(row["retention_days"] if row is not None else None)
        or DEFAULT_RETENTION_DAYS,
        verify=(row["verify"] if row is not None else None) or DEFAULT_VERIFY,
        next_run_at=next_run_at if enabled else None,
        default_schedule=stored is None,
    )


async def update_schedule(
    conn: Connection,
    service_id: UUID,
    *,
    enabled: bool | None = None,
    schedule: str | None = None,
    reset_schedule: bool = False,
    retention_days: int | None = None,
    verify: str | None = None,
) -> None:
    """Change what is given (None: unchanged; `reset_schedule`: back to the default). A new
    schedule or switch is armed again by the scheduler (next_run_at NULL)."""
    await conn.execute(
        "INSERT INTO backup_schedules (service_id) VALUES ($1) ON CONFLICT DO NOTHING", service_id
    )
    rearm = enabled is not None or schedule is not None or reset_schedule
    await conn.execute(
        "UPDATE backup_schedules SET"
        " enabled = coalesce($2, enabled),"
        " schedule = CASE WHEN $3 THEN NULL ELSE coalesce($4, schedule) END,"
        " retention_days = coalesce($5, retention_days),"
        " verify = coalesce($6, verify),"
        " next_run_at = CASE WHEN $7 THEN NULL ELSE next_run_at END,"
        " updated_at = now()"
        " WHERE service_id = $1",
        service_id,
        enabled,
        reset_schedule,
        schedule,
        retention_days,
        verify,
        rearm,
    )


# --- the scheduler's side -------------------------------------------------------------------

_ENROL = """
INSERT INTO backup_schedules (service_id)
SELECT s.id FROM services s
WHERE NOT s.purged AND s.service_type = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM backup_schedules c WHERE c.service_id = s.id)
ON CONFLICT (service_id) DO NOTHING
"""
_FORGET_PURGED = """
DELETE FROM backup_schedules c USING services s WHERE s.id = c.service_id AND s.purged
"""
_UNARMED = """
SELECT service_id, schedule FROM backup_schedules WHERE next_run_at IS NULL
ORDER BY service_id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
# Due rows, whatever their service's state: each is moved to its next slot; only a due slot of
# an enabled, running, backed-up service gets a backup (a stopped service skips its slot).
_DUE = f"""
SELECT c.service_id, c.schedule,
       {_ENABLED} AND s.desired_state = 'running' AND NOT s.purged
           AND s.service_type = ANY($2::text[]) AS runs
FROM backup_schedules c JOIN services s ON s.id = c.service_id
WHERE c.next_run_at <= now()
ORDER BY c.next_run_at
LIMIT $1
FOR UPDATE OF c SKIP LOCKED
"""
_ADVANCE = """
UPDATE backup_schedules SET next_run_at = $2, claimed_by = $3, claimed_at = now()
WHERE service_id = $1
"""


def _next_slot(service_id: UUID, schedule: str | None, now: datetime) -> datetime:
    try:
        return cron.parse(effective_schedule(service_id, schedule)).next_after(now)
    except cron.CronError:  # written past the API's check: fall back rather than stall
        return cron.parse(cron.default_schedule(service_id)).next_after(now)


async def enrol(conn: Connection, limit: int) -> None:
    """Rows for services created since (none for purged ones), each armed with its next slot."""
    async with conn.transaction():
        await conn.execute(_ENROL, list(BACKED_UP))
        await conn.execute(_FORGET_PURGED)
    async with conn.transaction():
        now = datetime.now(UTC)
        for row in await conn.fetch(_UNARMED, limit):
            await conn.execute(
                "UPDATE backup_schedules SET next_run_at = $2 WHERE service_id = $1",
                row["service_id"],
                _next_slot(row["service_id"], row["schedule"], now),
            )


@dataclass(frozen=True)
class ScheduledBackup:
    service_id: UUID
    backup_id: UUID


async def claim_due(conn: Connection, limit: int, replica: str) -> list[ScheduledBackup]:
    """Up to `limit` due slots, each moved to its next slot, with the catalogue rows of the
    backups they start (`trigger` schedule), all committed together. The caller publishes a
    RunBackup for each after this returns."""
    started: list[ScheduledBackup] = []
    async with conn.transaction():
        now = datetime.now(UTC)
        for row in await conn.fetch(_DUE, limit, list(BACKED_UP)):
            service_id = row["service_id"]
            # From now, not from the missed slot: a worker back after a day runs one backup.
            await conn.execute(
                _ADVANCE, service_id, _next_slot(service_id, row["schedule"], now), replica
            )
            if row["runs"]:
                backup_id = uuid4()
                await insert_backup(conn, backup_id, service_id, "logical", trigger="schedule")
                started.append(ScheduledBackup(service_id, backup_id))
    return started
