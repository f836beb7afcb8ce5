"""Backup schedules, retention, deadlines and deletion with the service (issue 11, points 4
and 8): the backup worker's scheduler against a real S3 (SeaweedFS), NATS, PostgreSQL and
Docker. Short periods keep the module quick; a minute-boundary slot is waited for once."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from temps_backup.main import serve as serve_backup
from temps_backup.settings import BackupSettings
from temps_shared.bus.publish import publish_command
from temps_shared.messages import Role, RunBackup
from temps_shared.store.backup_schedules import claim_due, schedule_of

from tests.integration.backup_store import SeaweedStore, store_with_worker
from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUCKET = "temps-backups"
DEADLINE_S = 3600.0


@dataclass(frozen=True)
class Harness:
    store: SeaweedStore
    settings: BackupSettings


@pytest.fixture(scope="module")
async def harness(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Harness]:
    """The backup store and one backup worker replica whose scheduler runs twice a second."""
    async with store_with_worker(
        platform.env,
        tmp_path_factory.mktemp("backup-store"),
        backup_scheduler_period_s=0.5,
        backup_deadline_s=DEADLINE_S,
        backup_deleted_service_grace_s=0,
    ) as (running, settings):
        yield Harness(running, settings)


@pytest.fixture(scope="module")
async def db(platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(platform.env["TEMPS_DATABASE_URL"])
    yield conn
    await conn.close()


async def _create(api: httpx.AsyncClient, name: str) -> str:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": "redis"}
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=120)
    return service_id


@pytest.fixture(scope="module")
async def service(api: httpx.AsyncClient, harness: Harness) -> AsyncIterator[str]:
    service_id = await _create(api, f"{P}sched")
    yield service_id
    # Later modules' workers must not back it up on this module's schedule.
    await api.patch(f"/api/external-services/{service_id}/backups", json={"enabled": False})


async def _patch(api: httpx.AsyncClient, service_id: str, **body: Any) -> dict[str, Any]:
    response = await api.patch(f"/api/external-services/{service_id}/backups", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _entry(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()
    return entry


async def _completed(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        entry = await _entry(api, service_id, backup_id)
        assert entry["state"] != "failed", entry["reason"]
        return entry if entry["state"] == "completed" else None

    return await eventually(done, 120, f"backup {backup_id} to complete")


async def _backup(api: httpx.AsyncClient, service_id: str) -> str:
    response = await api.post(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 202, response.text
    backup_id: str = response.json()["id"]
    await _completed(api, service_id, backup_id)
    return backup_id


def _keys(store: SeaweedStore, prefix: str) -> list[str]:
    listed = store.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [str(o["Key"]) for o in listed.get("Contents", [])]


async def _location(db: asyncpg.Connection, backup_id: str) -> str:
    location: str = await db.fetchval(
        "SELECT location FROM backups WHERE backup_id = $1", UUID(backup_id)
    )
    assert location.endswith(f"/{backup_id}/")
    return location


async def _row_exists(db: asyncpg.Connection, backup_id: str) -> bool:
    return bool(
        await db.fetchval("SELECT count(*) FROM backups WHERE backup_id = $1", UUID(backup_id))
    )


async def test_the_schedule_has_defaults_and_refuses_bad_input(
    api: httpx.AsyncClient, service: str
) -> None:
    schedule = await _patch(api, service)  # nothing changed: the defaults
    assert schedule["enabled"] is True
    assert schedule["retention_days"] == 7
    assert schedule["verify"] == "every"
    assert schedule["schedule_is_default"] is True
    minute, hour, *rest = schedule["schedule"].split()
    assert rest == ["*", "*", "*"]
    assert 0 <= int(minute) < 60
    assert 0 <= int(hour) < 24
    assert schedule["next_run_at"]

    url = f"/api/external-services/{service}/backups"
    for body, field in (
        ({"retention_days": 0}, "retention_days"),
        ({"retention_days": 91}, "retention_days"),
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "* * *"}, "schedule"),
        ({"verify": "weekly"}, "verify"),
        ({"retention": 3}, "retention"),
    ):
        response = await api.patch(url, json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in response.text, response.text
    unknown = await api.patch(f"/api/external-services/{uuid4()}/backups", json={"enabled": True})
    assert unknown.status_code == 404, unknown.text

    changed = await _patch(api, service, schedule="15 3 * * 1-5", retention_days=90, verify="daily")
    assert changed["schedule"] == "15 3 * * 1-5"
    assert changed["schedule_is_default"] is False
    assert (changed["retention_days"], changed["verify"]) == (90, "daily")
    listed = (await api.get(f"/api/external-services/{service}/backups")).json()
    assert listed["schedule"] == changed  # the catalogue's answer carries the schedule
    back = await _patch(api, service, schedule=None, retention_days=7, verify="every")
    assert back["schedule"] == schedule["schedule"]
    off = await _patch(api, service, enabled=False)
    assert off["enabled"] is False
    assert off["next_run_at"] is None

    entries = (await api.get("/api/audit-log", params={"service_id": service})).json()
    updates = [e for e in entries if e["action"] == "backup.schedule_updated"]
    assert {"retention_days": 90, "schedule": "15 3 * * 1-5", "verify": "daily"} in [
        e["details"] for e in updates
    ]


async def test_retention_deletes_exactly_the_expired_backups(
    api: httpx.AsyncClient, harness: Harness, service: str, db: asyncpg.Connection
) -> None:
    await _patch(api, service, enabled=False, retention_days=2)
    expired, young, fresh = [await _backup(api, service) for _ in range(3)]
    folders = {b: await _location(db, b) for b in (expired, young, fresh)}
    assert all(_keys(harness.store, f) for f in folders.values())

    # A failed backup that left a partial artifact and an unfinished multipart upload.
    failed = str(uuid4())
    failed_folder = folders[fresh].replace(fresh, failed)
    s3 = harness.store.client()
    s3.put_object(Bucket=BUCKET, Key=failed_folder + "dump.zst.age", Body=b"partial")
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=failed_folder + "big.zst.age")
    await db.execute(
        "INSERT INTO backups (backup_id, service_id, state, location, reason, requested_at,"
        " finished_at, registered_at) VALUES ($1, $2, 'failed', $3, 'test',"
        " now() - interval '3 days', now() - interval '3 days', now() - interval '3 days')",
        UUID(failed),
        UUID(service),
        failed_folder,
    )
    for backup_id, age in ((expired, timedelta(days=2, hours=1)), (young, timedelta(days=1))):
        await db.execute(
            "UPDATE backups SET requested_at = requested_at - $2::interval,"
            " started_at = started_at - $2::interval, finished_at = finished_at - $2::interval,"
            " registered_at = registered_at - $2::interval WHERE backup_id = $1",
            UUID(backup_id),
            age,
        )

    async def swept() -> bool:
        return not await _row_exists(db, expired) and not await _row_exists(db, failed)

    await eventually(swept, 30, "the expired backups to be deleted")
    assert _keys(harness.store, folders[expired]) == []
    assert _keys(harness.store, failed_folder) == []
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=failed_folder).get("Uploads", [])
    assert upload["UploadId"] not in [u["UploadId"] for u in uploads]
    # The unexpired ones are intact, rows and objects.
    await asyncio.sleep(2 * harness.settings.backup_scheduler_period_s + 0.5)
    listed = (await api.get(f"/api/external-services/{service}/backups")).json()["backups"]
    ids = {b["id"] for b in listed}
    assert {young, fresh} <= ids
    assert not {expired, failed} & ids
    for backup_id in (young, fresh):
        keys = _keys(harness.store, folders[backup_id])
        assert any(k.endswith("/manifest.json") for k in keys), keys


async def test_retention_keeps_restoring_imported_and_newest_backups(
    api: httpx.AsyncClient, harness: Harness, service: str, db: asyncpg.Connection
) -> None:
    """Kept past their age: a backup being restored, one imported (registered) today with an
    old installation's times, and the service's newest completed backup; a plain old one goes."""
    await _patch(api, service, enabled=False, retention_days=2)
    plain, restoring, imported, newest = [await _backup(api, service) for _ in range(4)]
    old = timedelta(days=30)
    # One transaction: the scheduler must never see the times moved without the restore mark
    # or the earlier backups still newer (it would rightly delete `restoring` or `newest`).
    async with db.transaction():
        for backup_id in (plain, restoring, imported, newest):
            registered = timedelta(0) if backup_id == imported else old
            await db.execute(
                "UPDATE backups SET requested_at = requested_at - $2::interval,"
                " started_at = started_at - $2::interval, finished_at = finished_at - $2::interval,"
                " registered_at = registered_at - $3::interval WHERE backup_id = $1",
                UUID(backup_id),
                old,
                registered,
            )
        # Earlier tests' backups end before these (kept: registered recently).
        await db.execute(
            "UPDATE backups SET finished_at = finished_at - interval '60 days'"
            " WHERE service_id = $1 AND NOT backup_id = ANY($2::uuid[])",
            UUID(service),
            [UUID(b) for b in (plain, restoring, imported, newest)],
        )
        await db.execute(
            "UPDATE backups SET restore_id = $2, restore_state = 'requested' WHERE backup_id = $1",
            UUID(restoring),
            uuid4(),
        )
    await eventually(lambda: _gone(db, plain), 30, "the plain expired backup to be deleted")
    await asyncio.sleep(2 * harness.settings.backup_scheduler_period_s + 0.5)
    for backup_id in (restoring, imported, newest):
        assert await _row_exists(db, backup_id), backup_id
        assert _keys(harness.store, await _location(db, backup_id)), backup_id
    # Once the restore ended, the old backup expires like any other.
    await db.execute(
        "UPDATE backups SET restore_state = 'completed' WHERE backup_id = $1", UUID(restoring)
    )
    await eventually(lambda: _gone(db, restoring), 30, "the restored backup to expire")
    assert await _row_exists(db, newest)
    assert await _row_exists(db, imported)


async def _gone(db: asyncpg.Connection, backup_id: str) -> bool:
    return not await _row_exists(db, backup_id)


async def test_a_backup_past_the_deadline_is_failed(
    api: httpx.AsyncClient, harness: Harness, service: str, db: asyncpg.Connection
) -> None:
    stuck, recent = uuid4(), uuid4()
    for backup_id, age, state in (
        (stuck, timedelta(seconds=DEADLINE_S + 60), "running"),
        (recent, timedelta(seconds=DEADLINE_S - 600), "requested"),
    ):
        await db.execute(
            "INSERT INTO backups (backup_id, service_id, state, requested_at)"
            " VALUES ($1, $2, $3, now() - $4::interval)",
            backup_id,
            UUID(service),
            state,
            age,
        )

    async def failed() -> dict[str, Any] | None:
        entry = await _entry(api, service, str(stuck))
        return entry if entry["state"] == "failed" else None

    entry = await eventually(failed, 30, "the stuck backup to be failed")
    assert entry["reason"] == "the backup did not finish within 1 h"
    assert (await _entry(api, service, str(recent)))["state"] == "requested"
    await db.execute("DELETE FROM backups WHERE backup_id = $1", recent)  # never commanded


async def test_a_service_without_backups_has_them_off_by_default(db: asyncpg.Connection) -> None:
    """`backups: false` in a service's parameters (PostgreSQL offers it) turns the schedule
    off until the schedule says otherwise; checked on rows never committed."""
    tx = db.transaction()
    await tx.start()
    try:
        ids = {flag: uuid4() for flag in ("false", "true", "absent")}
        for flag, service_id in ids.items():
            parameters = "{}" if flag == "absent" else f'{{"backups": {flag}}}'
            await db.execute(
                "INSERT INTO services (id, name, service_type, version, parameters, secrets,"
                " desired_state) VALUES ($1, $2, 'postgres', '17', $3::jsonb, 'x', 'running')",
                service_id,
                f"{P}flag-{flag}",
                parameters,
            )
        assert [(await schedule_of(db, ids[f])).enabled for f in ids] == [False, True, True]
        off = await schedule_of(db, ids["false"])
        assert off.next_run_at is None
        await db.execute(
            "INSERT INTO backup_schedules (service_id, enabled) VALUES ($1, true)", ids["false"]
        )
        assert (await schedule_of(db, ids["false"])).enabled is True
    finally:
        await tx.rollback()


async def _scheduled(db: asyncpg.Connection, service: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT backup_id, requested_at, state FROM backups"
        " WHERE service_id = $1 AND trigger = 'schedule' ORDER BY requested_at",
        UUID(service),
    )


async def test_scheduled_backups_run_once_per_slot_across_replicas(
    api: httpx.AsyncClient,
    platform: Platform,
    harness: Harness,
    service: str,
    db: asyncpg.Connection,
) -> None:
    # Two more replicas: three schedulers (and consumers) share the rows.
    stop = asyncio.Event()
    replicas = [asyncio.create_task(serve_backup(harness.settings, stop)) for _ in range(2)]
    pool = await asyncpg.create_pool(platform.env["TEMPS_DATABASE_URL"], min_size=6, max_size=6)
    nc = await platform.bus(Role.BACKUP)
    try:
        # Slots forced due by the test first (a yearly schedule never fires meanwhile).
        await _patch(api, service, enabled=True, schedule="0 0 1 1 *", retention_days=7)
        before = len(await _scheduled(db, service))

        async def armed() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT next_run_at > now() FROM backup_schedules WHERE service_id = $1",
                    UUID(service),
                )
            )

        async def claim(n: int) -> int:
            """This test as six more schedulers at once, starting what they claim."""
            async with pool.acquire() as conn:
                started = await claim_due(conn, 10, f"test-{n}")
            for backup in started:
                command = RunBackup(service_id=backup.service_id, backup_id=backup.backup_id)
                await publish_command(nc.jetstream(), command, origin=Role.BACKUP)
            return sum(1 for b in started if str(b.service_id) == service)

        slots = 4
        for _ in range(slots):
            await eventually(armed, 30, "the schedule to be armed")
            await db.execute(
                "UPDATE backup_schedules SET next_run_at = now() WHERE service_id = $1",
                UUID(service),
            )
            await asyncio.gather(*(claim(n) for n in range(6)))
            await eventually(armed, 30, "the slot to be claimed")
            await asyncio.sleep(1.0)
        forced = await _scheduled(db, service)
        assert len(forced) - before == slots, forced

        # Every minute: the next minute's slot, taken by a replica on its own.
        await _patch(api, service, schedule="* * * * *")

        async def natural() -> list[asyncpg.Record] | None:
            rows = await _scheduled(db, service)
            return rows if len(rows) > len(forced) else None

        rows = await eventually(natural, 75, "a scheduled backup at the minute")
        assert rows[-1]["requested_at"].second < 10  # just after the minute boundary
        await _patch(api, service, enabled=False)
        rows = await _scheduled(db, service)
        # One backup per slot: slots are a second or more apart, doubles would be together.
        times = [r["requested_at"] for r in rows]
        assert all(b - a > timedelta(seconds=0.8) for a, b in itertools.pairwise(times))
        for row in rows:
            await _completed(api, service, str(row["backup_id"]))
        listed = (await api.get(f"/api/external-services/{service}/backups")).json()["backups"]
        assert {b["trigger"] for b in listed if b["id"] in {str(r["backup_id"]) for r in rows}} == {
            "schedule"
        }
    finally:
        stop.set()
        await asyncio.wait(replicas, timeout=30)
        await nc.close()
        await pool.close()


async def test_deleting_a_service_deletes_its_backups(
    api: httpx.AsyncClient, harness: Harness, db: asyncpg.Connection
) -> None:
    service_id = await _create(api, f"{P}schdel")
    await _patch(api, service_id, enabled=False)
    backups = [await _backup(api, service_id) for _ in range(2)]
    folders = [await _location(db, b) for b in backups]
    assert all(_keys(harness.store, f) for f in folders)

    # Linked to a project: refused, naming the links.
    project = await api.post("/api/projects", json={"name": f"{P}schdel-app"})
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    link = await api.post(
        f"/api/external-services/{service_id}/projects",
        json={"project_id": project_id, "environment": "production"},
    )
    assert link.status_code == 202, link.text
    refused = await api.delete(f"/api/external-services/{service_id}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "linked"
    assert "project environment" in refused.json()["error"]["message"]
    unlink = await api.delete(f"/api/external-services/{service_id}/projects/{project_id}")
    assert unlink.status_code == 202, unlink.text

    async def accepted() -> bool:
        response = await api.delete(f"/api/external-services/{service_id}")
        return response.status_code == 202

    await eventually(accepted, 60, "the service delete to be accepted")

    async def gone() -> bool:
        remaining = await db.fetchval(
            "SELECT count(*) FROM backups WHERE service_id = $1", UUID(service_id)
        )
        return bool(remaining == 0)

    await eventually(gone, 90, "the deleted service's backups to be deleted")
    assert await db.fetchval("SELECT purged FROM services WHERE id = $1", UUID(service_id))
    for folder in folders:
        assert _keys(harness.store, folder) == []
    assert not await db.fetchval(
        "SELECT count(*) FROM backup_schedules WHERE service_id = $1", UUID(service_id)
    )
