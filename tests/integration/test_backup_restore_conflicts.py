"""`POST …/backups/{bid}/restore` answers 409 for what the worker could only fail after its
retries: an in-place restore of a stopped or deleting service, and a restore while one of the
service's restores (or of the same backup) is still requested. The gateway's check runs here
on the real control-plane database, on rows never committed (no worker ever sees them)."""

from __future__ import annotations

from uuid import UUID, uuid4

import asyncpg
import pytest
from temps_api.errors import ApiError
from temps_api.routes.backups import _refuse_conflicting_restore
from temps_shared.store.services import ServiceRecord, get_service

from tests.support import RUN_PREFIX as P

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _service(conn: asyncpg.Connection, desired_state: str) -> ServiceRecord:
    service_id = uuid4()
    await conn.execute(
        "INSERT INTO services (id, name, service_type, version, parameters, secrets,"
        " desired_state) VALUES ($1, $2, 'redis', '8', '{}'::jsonb, 'x', $3)",
        service_id,
        f"{P}rc-{service_id.hex[:6]}",
        desired_state,
    )
    record = await get_service(conn, service_id)
    assert record is not None
    return record


async def _backup(conn: asyncpg.Connection, service_id: UUID, restore: str | None) -> UUID:
    backup_id = uuid4()
    await conn.execute(
        "INSERT INTO backups (backup_id, service_id, state, restore_id, restore_state)"
        " VALUES ($1, $2, 'completed', $3, $4)",
        backup_id,
        service_id,
        uuid4() if restore else None,
        restore,
    )
    return backup_id


async def _code(
    conn: asyncpg.Connection, service: ServiceRecord, backup_id: UUID, *, in_place: bool
) -> str | None:
    try:
        await _refuse_conflicting_restore(conn, service, backup_id, in_place=in_place)
    except ApiError as exc:
        return f"{exc.status} {exc.code}"
    return None


@pytest.mark.parametrize("desired_state", ["stopped", "deleted"])
async def test_an_in_place_restore_of_a_service_not_running_is_refused(
    conn: asyncpg.Connection, desired_state: str
) -> None:
    service = await _service(conn, desired_state)
    backup_id = await _backup(conn, service.id, None)
    assert await _code(conn, service, backup_id, in_place=True) == "409 not_running"
    # Its data can still be brought back as a new service.
    assert await _code(conn, service, backup_id, in_place=False) is None


async def test_a_restore_while_one_is_requested_is_refused(conn: asyncpg.Connection) -> None:
    service = await _service(conn, "running")
    restoring = await _backup(conn, service.id, "requested")
    other = await _backup(conn, service.id, "completed")
    assert await _code(conn, service, other, in_place=True) == "409 restore_in_progress"
    assert await _code(conn, service, restoring, in_place=False) == "409 restore_in_progress"
    # Another backup as a new service does not touch the one being restored into.
    assert await _code(conn, service, other, in_place=False) is None
    await conn.execute(
        "UPDATE backups SET restore_state = 'completed' WHERE backup_id = $1", restoring
    )
    assert await _code(conn, service, other, in_place=True) is None
