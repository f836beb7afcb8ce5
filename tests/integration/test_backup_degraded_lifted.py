"""A service degraded by a failed backup verification comes back once the failure no longer
describes it: after an in-place restore completed (its data was replaced), or once the failed
backup's row was deleted (retention). A restore of its backup as a new service changes nothing
for it. The health projection runs here on the real control-plane database, on rows never
committed."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest
from temps_api.health_projection import (
    VERIFICATION_REASON,
    apply_restore_or_deletion,
    reevaluate_verification,
)
from temps_shared.messages import BackupDeleted, RestoreCompleted, utcnow

from tests.support import RUN_PREFIX as P

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _degraded_service(conn: asyncpg.Connection) -> tuple[UUID, UUID]:
    """A service whose newest verified backup failed its verification; (service, backup)."""
    service_id, backup_id = uuid4(), uuid4()
    await conn.execute(
        "INSERT INTO services (id, name, service_type, version, parameters, secrets,"
        " desired_state) VALUES ($1, $2, 'redis', '8', '{}'::jsonb, 'x', 'running')",
        service_id,
        f"{P}dg-{service_id.hex[:6]}",
    )
    await conn.execute(
        "INSERT INTO service_status (service_id, status) VALUES ($1, 'operational')", service_id
    )
    await conn.execute(
        "INSERT INTO backups (backup_id, service_id, state, requested_at, verify_state,"
        " verify_reason, verified_at, restore_id, restore_state) VALUES ($1, $2, 'completed',"
        " now() - interval '1 hour', 'verification_failed', 'rows differ', $3, $4, 'completed')",
        backup_id,
        service_id,
        utcnow() - timedelta(minutes=30),
        uuid4(),
    )
    await reevaluate_verification(conn, service_id)
    assert await _status(conn, service_id) == ("degraded", True)
    return service_id, backup_id


async def _status(conn: asyncpg.Connection, service_id: UUID) -> tuple[str, bool]:
    row = await conn.fetchrow(
        "SELECT status, status_reason FROM service_status WHERE service_id = $1", service_id
    )
    assert row is not None
    return row["status"], VERIFICATION_REASON in (row["status_reason"] or "")


async def _restored(conn: asyncpg.Connection, backup_id: UUID, into: UUID) -> RestoreCompleted:
    restore_id: UUID = await conn.fetchval(
        "SELECT restore_id FROM backups WHERE backup_id = $1", backup_id
    )
    return RestoreCompleted(service_id=into, backup_id=backup_id, restore_id=restore_id)


async def test_an_in_place_restore_lifts_it(conn: asyncpg.Connection) -> None:
    service_id, backup_id = await _degraded_service(conn)
    await apply_restore_or_deletion(conn, await _restored(conn, backup_id, service_id))
    assert await _status(conn, service_id) == ("operational", False)


async def test_a_restore_as_a_new_service_does_not(conn: asyncpg.Connection) -> None:
    service_id, backup_id = await _degraded_service(conn)
    await apply_restore_or_deletion(conn, await _restored(conn, backup_id, uuid4()))
    assert await _status(conn, service_id) == ("degraded", True)


async def test_the_deletion_of_the_failed_backup_lifts_it(conn: asyncpg.Connection) -> None:
    service_id, backup_id = await _degraded_service(conn)
    await conn.execute("DELETE FROM backups WHERE backup_id = $1", backup_id)
    event = BackupDeleted(service_id=service_id, backup_id=backup_id, reason="retention expired")
    await apply_restore_or_deletion(conn, event)
    assert await _status(conn, service_id) == ("operational", False)


async def test_a_failure_after_the_restore_still_counts(conn: asyncpg.Connection) -> None:
    service_id, backup_id = await _degraded_service(conn)
    await apply_restore_or_deletion(conn, await _restored(conn, backup_id, service_id))
    await conn.execute(
        "UPDATE backups SET verified_at = now() + interval '1 minute' WHERE backup_id = $1",
        backup_id,
    )
    await reevaluate_verification(conn, service_id)
    assert await _status(conn, service_id) == ("degraded", True)
