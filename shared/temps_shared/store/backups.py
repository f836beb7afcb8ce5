"""The backup catalogue (`backups`): rows the gateway inserts, the projector moves along and
the backup worker reads (when the backup was asked for, where a completed one lives)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from temps_shared.messages import (
    BackupCompleted,
    BackupDeleted,
    BackupEvent,
    BackupFailed,
    BackupProgress,
    BackupRequested,
    BackupStarted,
    BackupVerificationFailed,
    BackupVerified,
    RestoreCompleted,
    RestoreFailed,
)
from temps_shared.store.types import Connection

# A backup that finished (either way) never moves again: late events of it change nothing.
_OPEN = "state IN ('requested', 'running')"


@dataclass(frozen=True)
class BackupRow:
    backup_id: UUID
    service_id: UUID
    kind: str
    state: str
    location: str | None
    bytes_done: int
    size_bytes: int | None
    reason: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    restore_id: UUID | None
    restore_state: str | None
    restore_reason: str | None
    destination_id: UUID | None = None  # None: the built-in store
    trigger: str = "manual"  # manual | schedule
    verify_state: str | None = None  # pending | verified | verification_failed
    verify_reason: str | None = None
    verified_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        """The catalogue entry as the API shows it."""
        return {
            "id": str(self.backup_id),
            "service_id": str(self.service_id),
            "kind": self.kind,
            "trigger": self.trigger,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "size_bytes": self.size_bytes,
            "reason": self.reason,
            "requested_at": self.requested_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "verified": self.verify_state == "verified",
            "verification": None
            if self.verify_state is None
            else {
                "state": self.verify_state,
                "reason": self.verify_reason,
                "at": self.verified_at.isoformat() if self.verified_at else None,
            },
            "restore": None
            if self.restore_id is None
            else {
                "id": str(self.restore_id),
                "state": self.restore_state,
                "reason": self.restore_reason,
            },
        }


_COLUMNS = (
    "backup_id, service_id, kind, state, location, bytes_done, size_bytes, reason,"
    " requested_at, started_at, finished_at, restore_id, restore_state, restore_reason,"
    " destination_id, trigger, verify_state, verify_reason, verified_at"
)


async def insert_backup(
    conn: Connection,
    backup_id: UUID,
    service_id: UUID,
    kind: str,
    *,
    trigger: str = "manual",
    requested_at: datetime | None = None,
) -> None:
    """A new catalogue row, bound to the destination active now (idempotent)."""
    await conn.execute(
        "INSERT INTO backups (backup_id, service_id, kind, trigger, requested_at, destination_id)"
        " VALUES ($1, $2, $3, $4, coalesce($5, now()),"
        " (SELECT id FROM backup_destinations WHERE active))"
        " ON CONFLICT (backup_id) DO NOTHING",
        backup_id,
        service_id,
        kind,
        trigger,
        requested_at,
    )


async def get_backup(conn: Connection, backup_id: UUID) -> BackupRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM backups WHERE backup_id = $1", backup_id)
    return BackupRow(**dict(row)) if row is not None else None


async def backups_of(conn: Connection, service_id: UUID) -> list[BackupRow]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM backups WHERE service_id = $1 ORDER BY requested_at DESC",
        service_id,
    )
    return [BackupRow(**dict(row)) for row in rows]


async def request_restore(conn: Connection, backup_id: UUID, restore_id: UUID) -> None:
    await conn.execute(
        "UPDATE backups SET restore_id = $2, restore_state = 'requested', restore_reason = NULL,"
        " restore_finished_at = NULL WHERE backup_id = $1",
        backup_id,
        restore_id,
    )


async def apply_backup_event(conn: Connection, event: BackupEvent) -> None:
    """Project one backup worker event onto the catalogue (idempotent, never backwards)."""
    match event:
        case BackupRequested():
            await insert_backup(
                conn,
                event.backup_id,
                event.service_id,
                event.kind,
                trigger=event.trigger,
                requested_at=event.occurred_at,
            )
        case BackupStarted():
            await conn.execute(
                "UPDATE backups SET state = 'running', location = $2,"
                f" started_at = coalesce(started_at, $3) WHERE backup_id = $1 AND {_OPEN}",
                event.backup_id,
                event.location,
                event.occurred_at,
            )
        case BackupProgress():
            await conn.execute(
                "UPDATE backups SET bytes_done = greatest(bytes_done, $2)"
                f" WHERE backup_id = $1 AND {_OPEN}",
                event.backup_id,
                event.bytes_done,
            )
        case BackupCompleted():
            await conn.execute(
                "UPDATE backups SET state = 'completed', size_bytes = $2, bytes_done = $2,"
                f" artifacts = $3, finished_at = $4 WHERE backup_id = $1 AND {_OPEN}",
                event.backup_id,
                event.size_bytes,
                event.artifacts,
                event.occurred_at,
            )
        case BackupFailed():
            await conn.execute(
                "UPDATE backups SET state = 'failed', reason = $2, finished_at = $3"
                f" WHERE backup_id = $1 AND {_OPEN}",
                event.backup_id,
                event.reason,
                event.occurred_at,
            )
        case BackupVerified() | BackupVerificationFailed():
            failed = isinstance(event, BackupVerificationFailed)
            await conn.execute(
                "UPDATE backups SET verify_state = $2, verify_reason = $3, verified_at = $4"
                " WHERE backup_id = $1 AND state = 'completed'",
                event.backup_id,
                "verification_failed" if failed else "verified",
                event.reason if isinstance(event, BackupVerificationFailed) else event.summary,
                event.occurred_at,
            )
        case BackupDeleted():
            await conn.execute("DELETE FROM backups WHERE backup_id = $1", event.backup_id)
        case RestoreCompleted() | RestoreFailed():
            failed = isinstance(event, RestoreFailed)
            await conn.execute(
                "UPDATE backups SET restore_state = $3, restore_reason = $4,"
                " restore_finished_at = $5 WHERE backup_id = $1 AND restore_id = $2",
                event.backup_id,
                event.restore_id,
                "failed" if failed else "completed",
                event.reason if isinstance(event, RestoreFailed) else None,
                event.occurred_at,
            )
