"""Health read models: the latest check, the check history (30 days by default), the latest
WAL snapshot, the status verdicts of the monitor, and the replicas' state each check reads.

Applied by the projectors (projector.py): `HealthChecked` and `WalHealthRecorded` from the
health stream, the monitor's `ServiceStatusChanged` from the event stream.

A backup's failed verification also degrades the service (`with_verification`, the one place
of that rule): while the newest backup that has a verification outcome failed it, any status
that would be `operational` (the monitor's, the provisioner's) is `degraded` with that reason,
and a `degraded` one carries it too. Lifted by a newer backup that verifies, by the deletion of
the failed backup's row (retention), and by an in-place restore completed after the failure
(the service's data was replaced): `reevaluate_verification` after each.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from uuid import UUID

from temps_shared.messages import (
    MONITOR_OWNED,
    BackupDeleted,
    BackupVerificationFailed,
    BackupVerified,
    Event,
    HealthChecked,
    RestoreCompleted,
    ServiceStatus,
    ServiceStatusChanged,
    WalHealthRecorded,
)
from temps_shared.store.types import Connection

log = logging.getLogger(__name__)
HEALTH_PROJECTION = "service_health"
DEFAULT_RETENTION = timedelta(days=30)

_LIVE = "EXISTS (SELECT 1 FROM services WHERE id = $1 AND NOT purged)"
VERIFICATION_REASON = "backup verification failed"  # how a reason names this rule's part
_LATEST_VERIFICATION = (
    "SELECT backup_id, verify_state, verify_reason, verified_at,"
    " (SELECT max(restored_in_place_at) FROM backups r WHERE r.service_id = $1) AS restored_at"
    " FROM backups WHERE service_id = $1"
    " AND verify_state IN ('verified', 'verification_failed')"
    " ORDER BY requested_at DESC, backup_id LIMIT 1"
)


async def _checked(conn: Connection, event: HealthChecked, retention: timedelta) -> None:
    if not await conn.fetchval(f"SELECT {_LIVE}", event.service_id):
        return  # a late observation of a deleted service
    metrics = event.metrics.model_dump(mode="json")
    await conn.execute(
        "INSERT INTO service_health AS h (service_id, checked_at, status, reason,"
        " response_time_ms, error, metrics, monitor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (service_id) DO UPDATE SET checked_at = EXCLUDED.checked_at,"
        " status = EXCLUDED.status, reason = EXCLUDED.reason,"
        " response_time_ms = EXCLUDED.response_time_ms, error = EXCLUDED.error,"
        " metrics = EXCLUDED.metrics, monitor = EXCLUDED.monitor"
        " WHERE h.checked_at < EXCLUDED.checked_at",  # a late check never hides a newer one
        event.service_id,
        event.checked_at,
        event.status,
        event.reason,
        event.response_time_ms,
        event.error,
        metrics,
        event.monitor,
    )
    await conn.execute(
        "INSERT INTO service_health_history (service_id, checked_at, status, response_time_ms,"
        " error, monitor) VALUES ($1, $2, $3, $4, $5, $6)",
        event.service_id,
        event.checked_at,
        event.status,
        event.response_time_ms,
        event.error,
        event.monitor,
    )
    if event.metrics.replication is not None:
        await _replication(conn, event)
    # Retention, one service at a time: an index range that is almost always empty.
    await conn.execute(
        "DELETE FROM service_health_history WHERE service_id = $1 AND checked_at < $2",
        event.service_id,
        event.checked_at - retention,
    )


async def _replication(conn: Connection, event: HealthChecked) -> None:
    """The replicas' state as the primary saw it at this check replaces the figure the service
    view shows (the reconcile's, read once when the replica had just started, or an older
    check's): whichever was applied last is at most one monitor period old."""
    assert event.metrics.replication is not None
    await conn.execute(
        "UPDATE service_status SET replication = $2 WHERE service_id = $1"
        " AND NOT EXISTS (SELECT 1 FROM service_health h"
        "   WHERE h.service_id = $1 AND h.checked_at > $3)",  # a late check changes nothing
        event.service_id,
        [r.model_dump(mode="json") for r in event.metrics.replication],
        event.checked_at,
    )


async def _wal(conn: Connection, event: WalHealthRecorded) -> None:
    if not await conn.fetchval(f"SELECT {_LIVE}", event.service_id):
        return
    await conn.execute(
        "INSERT INTO postgres_wal_health AS w (service_id, probed_at, snapshot)"
        " VALUES ($1, $2, $3) ON CONFLICT (service_id) DO UPDATE"
        " SET probed_at = EXCLUDED.probed_at, snapshot = EXCLUDED.snapshot"
        " WHERE w.probed_at < EXCLUDED.probed_at",
        event.service_id,
        event.snapshot.probed_at,
        event.snapshot.model_dump(mode="json"),
    )


async def apply_health_event(
    conn: Connection, event: Event, retention: timedelta = DEFAULT_RETENTION
) -> None:
    match event:
        case HealthChecked():
            await _checked(conn, event, retention)
        case WalHealthRecorded():
            await _wal(conn, event)
        case _:
            log.debug("the health projector ignores %s", event.type_name())


async def verification_failure(conn: Connection, service_id: UUID) -> str | None:
    """The reason the service is degraded by its backups: its newest backup with a
    verification outcome failed it (None otherwise)."""
    row = await conn.fetchrow(_LATEST_VERIFICATION, service_id)
    if row is None or row["verify_state"] != "verification_failed":
        return None
    restored_at, failed_at = row.get("restored_at"), row.get("verified_at")
    if restored_at is not None and (failed_at is None or restored_at > failed_at):
        return None  # the data was restored in place since
    return f"{VERIFICATION_REASON} (backup {row['backup_id']}): {row['verify_reason']}"


def _without_verification(reason: str | None) -> str | None:
    """`reason` without this rule's part, which always comes last (None when nothing else is
    left)."""
    if reason is None:
        return None
    return reason.split(VERIFICATION_REASON, 1)[0].rstrip("; ") or None


async def with_verification(
    conn: Connection, service_id: UUID, status: str, reason: str | None
) -> tuple[str, str | None]:
    """The status and reason to record once the backups' verification is taken into account."""
    failure = await verification_failure(conn, service_id)
    if failure is None or status not in (ServiceStatus.OPERATIONAL, ServiceStatus.DEGRADED):
        return status, reason
    own = _without_verification(reason)
    return ServiceStatus.DEGRADED, f"{own}; {failure}" if own else failure


async def apply_verification(
    conn: Connection, event: BackupVerified | BackupVerificationFailed
) -> None:
    """After the catalogue recorded a verification outcome: the service's status follows the
    rule (degraded by a failure, lifted by a newer success)."""
    await reevaluate_verification(conn, event.service_id)


async def apply_restore_or_deletion(
    conn: Connection, event: RestoreCompleted | BackupDeleted
) -> None:
    """After the catalogue recorded a completed restore or a backup's deletion: an in-place
    restore is noted on its backup (a failed verification before it no longer counts), then
    the service's status follows the rule again."""
    if isinstance(event, RestoreCompleted):
        await conn.execute(
            "UPDATE backups SET restored_in_place_at = $4"
            " WHERE backup_id = $1 AND restore_id = $2 AND service_id = $3",
            event.backup_id,
            event.restore_id,
            event.service_id,  # a restore as a new service leaves its source as it was
            event.occurred_at,
        )
    await reevaluate_verification(conn, event.service_id)


async def reevaluate_verification(conn: Connection, service_id: UUID) -> None:
    """Apply the rule to the service's recorded status (degraded by a failed verification,
    back to what it was without it once nothing fails)."""
    row = await conn.fetchrow(
        "SELECT status, status_reason FROM service_status WHERE service_id = $1 FOR UPDATE",
        service_id,
    )
    if row is None or row["status"] not in (ServiceStatus.OPERATIONAL, ServiceStatus.DEGRADED):
        return
    status, reason = row["status"], row["status_reason"]
    if await verification_failure(conn, service_id) is None:
        if reason is None or VERIFICATION_REASON not in reason:
            return
        reason = _without_verification(reason)
        status = ServiceStatus.DEGRADED if reason else ServiceStatus.OPERATIONAL
    else:
        status, reason = await with_verification(conn, service_id, status, reason)
    await conn.execute(
        "UPDATE service_status SET status = $2, status_reason = $3, updated_at = now()"
        " WHERE service_id = $1",
        service_id,
        status,
        reason,
    )


async def apply_monitor_status(conn: Connection, event: ServiceStatusChanged) -> None:
    """The monitor's verdict becomes the status only while the status is one the monitor owns,
    no newer user request was made, and no newer check has been recorded (`occurred_at` is the
    check's time); a failed backup verification keeps it degraded (`with_verification`)."""
    status, reason = await with_verification(conn, event.service_id, event.status, event.reason)
    await conn.execute(
        "UPDATE service_status st SET status = $2, status_reason = $3, updated_at = now()"
        " WHERE st.service_id = $1 AND st.status = ANY($4::text[]) AND $2 = ANY($4::text[])"
        " AND st.requested_generation <= $5"
        " AND NOT EXISTS (SELECT 1 FROM service_health h"
        "   WHERE h.service_id = $1 AND h.checked_at > $6)",
        event.service_id,
        status,
        reason,
        list(MONITOR_OWNED),
        event.generation or 0,
        event.occurred_at,
    )


async def forget_health(conn: Connection, service_id: UUID) -> None:
    """A deleted service leaves no health behind."""
    for table in ("service_health", "service_health_history", "postgres_wal_health"):
        await conn.execute(f"DELETE FROM {table} WHERE service_id = $1", service_id)
