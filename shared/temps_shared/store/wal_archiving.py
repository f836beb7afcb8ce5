"""WAL archiving per PostgreSQL service (`wal_archiving`): the gateway records a request
(`request`), the backup worker carries it out and reports (`WalArchivingStep`,
`WalArchivingChanged`), the projector applies the reports of the request in flight."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from temps_shared.messages import (
    PointInTimeRestored,
    PointInTimeRestoreEvent,
    PointInTimeRestoreFailed,
    WalArchivingChanged,
    WalArchivingEvent,
    WalArchivingStep,
)
from temps_shared.store.types import Executor

_COLUMNS = (
    "service_id, enabled, state, step, reason, request_id, destination_id, requested_at, updated_at"
)


@dataclass(frozen=True)
class WalArchiving:
    service_id: UUID
    enabled: bool  # what the user asked for
    state: str  # enabling | on | disabling | off | failed
    step: str | None  # the last step done
    reason: str | None  # why it failed
    request_id: UUID
    destination_id: UUID | None  # where the archive is (None: the built-in store)
    requested_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "state": self.state,
            "step": self.step,
            "reason": self.reason,
            "requested_at": self.requested_at,
            "updated_at": self.updated_at,
        }


async def archiving_of(conn: Executor, service_id: UUID) -> WalArchiving | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM wal_archiving WHERE service_id = $1", service_id
    )
    return WalArchiving(**dict(row)) if row is not None else None


async def record_request(
    conn: Executor, service_id: UUID, enabled: bool, request_id: UUID
) -> WalArchiving:
    """Record the user's request (it supersedes any in flight). Turning it on archives to the
    destination active now; turning it off keeps the one the archive is in."""
    row = await conn.fetchrow(
        "INSERT INTO wal_archiving (service_id, enabled, state, request_id, destination_id)"
        " VALUES ($1, $2, $3, $4, (SELECT id FROM backup_destinations WHERE active))"
        " ON CONFLICT (service_id) DO UPDATE SET enabled = $2, state = $3, step = NULL,"
        " reason = NULL, request_id = $4, requested_at = now(), updated_at = now(),"
        " destination_id = CASE WHEN $2 THEN EXCLUDED.destination_id"
        " ELSE wal_archiving.destination_id END"
        f" RETURNING {_COLUMNS}",
        service_id,
        enabled,
        "enabling" if enabled else "disabling",
        request_id,
    )
    assert row is not None
    return WalArchiving(**dict(row))


async def apply_wal_archiving_event(conn: Executor, event: WalArchivingEvent) -> None:
    """Only the request in flight moves the row."""
    match event:
        case WalArchivingStep():
            await conn.execute(
                "UPDATE wal_archiving SET step = $3, updated_at = $4"
                " WHERE service_id = $1 AND request_id = $2",
                event.service_id,
                event.request_id,
                event.step,
                event.occurred_at,
            )
        case WalArchivingChanged():
            await conn.execute(
                "UPDATE wal_archiving SET state = $3, reason = $4, updated_at = $5"
                " WHERE service_id = $1 AND request_id = $2",
                event.service_id,
                event.request_id,
                event.state,
                event.reason,
                event.occurred_at,
            )


async def archived_services(conn: Executor) -> list[UUID]:
    """Services whose archiving is wanted (their identities stay in the store)."""
    rows = await conn.fetch(
        "SELECT w.service_id FROM wal_archiving w JOIN services s ON s.id = w.service_id"
        " WHERE w.enabled AND NOT s.purged"
    )
    return [row["service_id"] for row in rows]


# --- point-in-time restores -------------------------------------------------------------------

_RESTORE_COLUMNS = (
    "id, service_id, source_service_id, target_time, state, reason, requested_at, finished_at"
)


async def record_pitr_restore(
    conn: Executor,
    restore_id: UUID,
    service_id: UUID,
    source_service_id: UUID,
    target_time: datetime | None,
) -> None:
    await conn.execute(
        "INSERT INTO pitr_restores (id, service_id, source_service_id, target_time, state)"
        " VALUES ($1, $2, $3, $4, 'requested')",
        restore_id,
        service_id,
        source_service_id,
        target_time,
    )


async def pitr_restore(conn: Executor, service_id: UUID, restore_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_RESTORE_COLUMNS} FROM pitr_restores WHERE id = $1 AND service_id = $2",
        restore_id,
        service_id,
    )
    return dict(row) if row is not None else None


async def apply_pitr_event(conn: Executor, event: PointInTimeRestoreEvent) -> None:
    ok = isinstance(event, PointInTimeRestored)
    reason = event.reason if isinstance(event, PointInTimeRestoreFailed) else None
    await conn.execute(
        "UPDATE pitr_restores SET state = $2, reason = $3, finished_at = $4"
        " WHERE id = $1 AND state = 'requested'",
        event.restore_id,
        "completed" if ok else "failed",
        reason,
        event.occurred_at,
    )
