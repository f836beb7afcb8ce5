"""The health monitor (issue 7) on real PostgreSQL services, NATS and Docker: statuses, metrics,
history and uptime, the WAL health probe and its endpoint, ProbeNow, work sharing.

Lean on purpose (2 cores): three PostgreSQL services without replicas, one Redis, one S3. The
monitor runs with a 2 s period and 1 MB storage units; "within one cycle" is asserted as one
period plus a few seconds of slack for the probe, the bus and the projectors.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import docker
import httpx
import pytest
from temps_monitor.settings import MonitorSettings
from temps_shared.bus.publish import publish_command
from temps_shared.crypto import KeyRing
from temps_shared.engines.postgres_monitoring import MONITOR_ROLE
from temps_shared.messages import ProbeNow, Role
from temps_shared.store.services import get_service

from tests.integration.conftest import Platform
from tests.integration.monitoring import (
    admin_connection,
    checks_with,
    converged,
    create_postgres,
    generate_wal,
    health,
    recreate_with,
    status_of,
    wait_for_status,
    wal_warnings,
)
from tests.support import RUN_PREFIX as P
from tests.support import eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
CYCLE = 2.0
ONE_CYCLE = CYCLE + 4.0
TWO_CYCLES = 2 * CYCLE + 4.0
MB = 1024 * 1024
BIG = {"replicas": 0, "storage_gb": 65536}  # with 1 MB units: 64 GiB, never near 90 %
SMALL_WAL = ["-c", "max_wal_size=32MB", "-c", "min_wal_size=32MB"]


@pytest.fixture(scope="module")
async def monitor(platform: Platform) -> MonitorSettings:
    return await platform.start_monitor(
        monitor_period_s=CYCLE, monitor_probe_timeout_s=1.8, monitor_storage_unit_mb=1
    )


@pytest.fixture(scope="module")
async def control_db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def plain(api: httpx.AsyncClient, monitor: MonitorSettings) -> str:
    return await create_postgres(api, f"{P}mon", {"replicas": 0, "storage_gb": 1000})


async def test_health_shows_metrics_and_history(api: httpx.AsyncClient, plain: str) -> None:
    async def checked() -> dict[str, Any] | None:
        body = await health(api, plain)
        return body if body["history"] and body["metrics"]["connections"] is not None else None

    body = await eventually(checked, ONE_CYCLE + CYCLE, "a first health check")
    assert body["status"] == "operational"
    assert body["history"][0]["status"] == "operational"
    assert body["response_time_ms"] > 0
    assert body["uptime_24h_percent"] > 0
    metrics = body["metrics"]
    assert metrics["storage_used_bytes"] > 10 * MB
    assert metrics["storage_allocated_bytes"] == 1000 * MB
    assert isinstance(metrics["slow_queries"], list)

    # Not PostgreSQL → 404; an unknown service → 404 (error body shape).
    unknown = await api.get(f"/api/external-services/{UUID(int=7)}/wal-health")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert (await api.get(f"/api/external-services/{UUID(int=7)}/health")).status_code == 404
    snapshot = (await api.get(f"/api/external-services/{plain}/wal-health")).json()
    assert snapshot["warnings"] == []
    assert snapshot["archive_mode"] == "off"


async def test_redis_and_s3_are_probed(api: httpx.AsyncClient, monitor: MonitorSettings) -> None:
    ids = {}
    for service_type in ("redis", "s3"):
        response = await api.post(
            "/api/external-services",
            json={
                "name": f"{P}{service_type}",
                "service_type": service_type,
                "parameters": {"size_gb": 1000} if service_type == "s3" else {},
            },
        )
        assert response.status_code == 202, response.text
        ids[service_type] = response.json()["id"]
    for service_type, service_id in ids.items():
        await wait_status(api, service_id, "operational", timeout_s=120)

        async def checked(service_id: str = service_id) -> dict[str, Any] | None:
            # Figures are measured with what the liveness check left of the probe's budget: on
            # a loaded machine the first check may come without them; a later one has them.
            body = await health(api, service_id)
            measured = body["history"] and body["metrics"]["storage_used_bytes"] is not None
            return body if measured else None

        body = await eventually(
            checked, ONE_CYCLE + 2 * CYCLE, f"a measured check of {service_type}"
        )
        assert body["history"][0]["status"] == "operational", body
        assert body["history"][0].get("error") is None, body
        assert body["metrics"]["storage_used_bytes"] > 0
        response = await api.get(f"/api/external-services/{service_id}/wal-health")
        assert response.status_code == 404
        assert "PostgreSQL services only" in response.json()["error"]["message"]
    assert (await health(api, ids["redis"]))["metrics"]["connections"] >= 0
    assert (await health(api, ids["redis"]))["metrics"]["storage_allocated_bytes"] is None
    assert (await health(api, ids["s3"]))["metrics"]["storage_allocated_bytes"] == 1000 * MB


async def test_probe_role_cannot_write(
    api: httpx.AsyncClient, plain: str, control_db: asyncpg.Connection, data_dir: Path
) -> None:
    record = await get_service(control_db, UUID(plain))
    assert record is not None
    creds = record.credentials(KeyRing.from_data_dir(data_dir))
    admin = await admin_connection(api, plain)
    await admin.execute("CREATE TABLE IF NOT EXISTS precious (v text)")
    await admin.close()
    info = (await api.get(f"/api/external-services/{plain}")).json()["connection_info"]
    ca = (await api.get(f"/api/external-services/{plain}/credentials")).json()["ca_certificate"]
    conn = await asyncpg.connect(
        host=info["local_host"],
        port=info["local_port"],
        user=MONITOR_ROLE,
        password=creds["monitor_password"],
        database=creds["database"],
        ssl=ssl.create_default_context(cadata=ca),
    )
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_ls_waldir()") > 0  # pg_monitor
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO precious VALUES ('x')")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE mine (v text)")
        # Turning the default off does not help: the role may write nothing.
        await conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO precious VALUES ('x')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT pg_drop_replication_slot('any')")
    finally:
        await conn.close()


async def test_stopped_container_is_down_then_operational_and_uptime_drops(
    api: httpx.AsyncClient, plain: str, docker_client: docker.DockerClient
) -> None:
    container = docker_client.containers.get(f"temps-postgres-{P}mon")
    await asyncio.to_thread(container.stop, timeout=5)
    stopped_at = time.monotonic()
    reason = await wait_for_status(api, plain, "down", ONE_CYCLE)
    assert time.monotonic() - stopped_at <= ONE_CYCLE
    assert reason == "the container is exited"
    down_checks = await eventually(
        lambda: checks_with(api, plain, "down", 2), TWO_CYCLES, "two down checks"
    )
    assert down_checks[0]["error"] == f"temps-postgres-{P}mon is exited"

    await asyncio.to_thread(container.start)
    await wait_for_status(api, plain, "operational", ONE_CYCLE + 10)
    assert (await health(api, plain))["uptime_24h_percent"] < 100.0


async def test_storage_over_90_percent_degrades(api: httpx.AsyncClient, plain: str) -> None:
    used = (await health(api, plain))["metrics"]["storage_used_bytes"]
    # A tiny allocation (1 MB units in these tests) that leaves ~20 % free, then fill it.
    storage_gb = int(used / MB / 0.8) + 1
    response = await api.patch(
        f"/api/external-services/{plain}", json={"parameters": {"storage_gb": storage_gb}}
    )
    assert response.status_code == 202
    await converged(api, plain)
    admin = await admin_connection(api, plain)
    try:
        await admin.execute(
            "CREATE TABLE filler AS SELECT repeat('x', 1000) AS v FROM generate_series(1, $1::int)",
            int(0.15 * storage_gb * 1000),
        )
    finally:
        await admin.close()
    reason = await wait_for_status(api, plain, "degraded", ONE_CYCLE, reason="storage")
    assert reason is not None
    assert "90%" in reason
    metrics = (await health(api, plain))["metrics"]
    assert metrics["storage_used_bytes"] * 10 >= metrics["storage_allocated_bytes"] * 9


async def test_stale_slot_is_critical_until_dropped(api: httpx.AsyncClient) -> None:
    service_id = await create_postgres(api, f"{P}slot", BIG)
    admin = await admin_connection(api, service_id)
    try:
        # max_wal_size is reloadable: a small one makes 3x cheap to reach.
        await admin.execute("ALTER SYSTEM SET max_wal_size = '32MB'")
        await admin.execute("ALTER SYSTEM SET min_wal_size = '32MB'")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute("SELECT pg_create_physical_replication_slot('forgotten', true)")
        await generate_wal(admin, 7)
        reason = await wait_for_status(api, service_id, "degraded", ONE_CYCLE, reason="stale_slot")
        assert reason is not None
        assert reason.startswith("WAL health:")
        stale = (await wal_warnings(api, service_id))["stale_slot"]
        assert stale["severity"] == "critical"
        assert stale["slot_name"] == "forgotten"
        assert stale["remediation_sql"] == "SELECT pg_drop_replication_slot('forgotten');"
        snapshot = (await api.get(f"/api/external-services/{service_id}/wal-health")).json()
        assert snapshot["max_wal_size_bytes"] == 32 * MB
        assert snapshot["stale_slots"][0]["retained_bytes"] >= 3 * 32 * MB

        await admin.execute(stale["remediation_sql"])
        await admin.execute("SELECT pg_switch_wal()")
        await admin.execute("CHECKPOINT")
        await wait_for_status(api, service_id, "operational", TWO_CYCLES)
        assert await wal_warnings(api, service_id) == {}
    finally:
        await admin.close()


async def test_service_stopped_by_the_user_stays_stopped(
    api: httpx.AsyncClient, plain: str, control_db: asyncpg.Connection
) -> None:
    assert (await api.post(f"/api/external-services/{plain}/stop")).status_code == 202
    await wait_status(api, plain, "stopped")
    since = datetime.now(UTC)

    async def cycles_passed() -> bool:
        # Two more checks of the other services: two cycles went by.
        done = await control_db.fetchval(
            "SELECT count(DISTINCT checked_at) FROM service_health_history h"
            " JOIN services s ON s.id = h.service_id"
            " WHERE s.name LIKE $1 AND s.id <> $2 AND h.checked_at > $3",
            f"{P}%",
            UUID(plain),
            since,
        )
        return bool(done >= 6)

    await eventually(cycles_passed, 3 * CYCLE + 10, "two cycles")
    assert (
        await control_db.fetchval(
            "SELECT count(*) FROM service_health_history WHERE service_id = $1 AND checked_at > $2",
            UUID(plain),
            since,
        )
        == 0
    )
    assert (await status_of(api, plain))[0] == "stopped"
    assert (await api.post(f"/api/external-services/{plain}/start")).status_code == 202
    await converged(api, plain)


async def test_archive_mode_without_command_then_bloat_and_down_stays_down(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    service_id = await create_postgres(api, f"{P}arch", BIG)
    name = f"temps-postgres-{P}arch"
    extra = ["-c", "archive_mode=on", "-c", "archive_command=", *SMALL_WAL]
    await asyncio.to_thread(recreate_with, docker_client, name, extra)

    async def has(kind: str) -> dict[str, Any] | None:
        return (await wal_warnings(api, service_id)).get(kind)

    warning = await eventually(lambda: has("archive_mode_without_command"), 30, "the warning")
    assert warning["severity"] == "warning"
    assert "Stop and then Start" in warning["guidance"]
    assert "remediation_sql" not in warning
    snapshot = (await api.get(f"/api/external-services/{service_id}/wal-health")).json()
    assert snapshot["archive_mode"] == "on"
    assert snapshot["archive_command_source"] == "command line"
    await wait_for_status(api, service_id, "degraded", ONE_CYCLE, "archive_mode_without_command")

    admin = await admin_connection(api, service_id)
    try:
        await generate_wal(admin, 7)  # nothing archives them: every segment stays
    finally:
        await admin.close()
    bloat = await eventually(lambda: has("wal_bloat"), ONE_CYCLE, "WAL bloat")
    assert bloat["ratio"] >= 3
    assert bloat["severity"] == "warning"
    assert (await api.get(f"/api/external-services/{service_id}/wal-health")).json()[
        "archive_backlog"
    ] >= 7

    # Down with WAL warnings: down it stays, cycle after cycle.
    await asyncio.to_thread(docker_client.containers.get(name).stop, timeout=5)
    await wait_for_status(api, service_id, "down", ONE_CYCLE)
    await eventually(lambda: checks_with(api, service_id, "down", 3), 3 * CYCLE + 4, "checks")
    assert (await status_of(api, service_id))[0] == "down"
    assert "wal_bloat" in await wal_warnings(api, service_id)  # the last snapshot is kept


async def test_stop_start_repair_refreshes_wal_health_at_once(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    """The provisioner recreates the hand-made container (archive_mode repaired) and asks the
    monitor for a fresh snapshot (ProbeNow) instead of leaving the warning up for a cycle."""
    listed = (await api.get("/api/external-services")).json()
    service_id = next(s["id"] for s in listed if s["name"] == f"{P}arch")
    nc = await platform.bus(Role.API)
    try:
        js = nc.jetstream()
        asked = (await js.consumer_info("TEMPS_COMMANDS", "monitor")).delivered.consumer_seq
        assert (await api.post(f"/api/external-services/{service_id}/stop")).status_code == 202
        await wait_status(api, service_id, "stopped")
        assert (await api.post(f"/api/external-services/{service_id}/start")).status_code == 202
        await converged(api, service_id)
        started = time.monotonic()

        async def repaired() -> bool:
            body = (await api.get(f"/api/external-services/{service_id}/wal-health")).json()
            return body["archive_mode"] == "off" and not body["warnings"]

        await eventually(repaired, 10, "a snapshot of the repaired server", 0.05)
        assert time.monotonic() - started < 1.5
        delivered = (await js.consumer_info("TEMPS_COMMANDS", "monitor")).delivered.consumer_seq
        assert delivered > asked  # the provisioner asked for it
    finally:
        await nc.close()


async def test_probe_now_refreshes_at_once(
    api: httpx.AsyncClient, plain: str, platform: Platform
) -> None:
    nc = await platform.bus(Role.PROVISIONER)  # the role that asks for probes
    try:
        asked = datetime.now(UTC)
        await publish_command(
            nc.jetstream(),
            ProbeNow(service_id=UUID(plain), reason="container recreated"),
            origin=Role.PROVISIONER,
        )

        async def fresh() -> bool:
            body = (await api.get(f"/api/external-services/{plain}/wal-health")).json()
            return datetime.fromisoformat(body["probed_at"]) >= asked

        started = time.monotonic()
        await eventually(fresh, 5, "a fresh WAL snapshot", 0.05)
        assert time.monotonic() - started < 1.5
    finally:
        await nc.close()


async def test_two_monitors_probe_each_service_once_per_cycle(
    api: httpx.AsyncClient, platform: Platform, control_db: asyncpg.Connection
) -> None:
    second = await platform.start_monitor(
        monitor_period_s=CYCLE, monitor_probe_timeout_s=1.8, monitor_storage_unit_mb=1
    )
    cycles = 6
    start = datetime.now(UTC) + timedelta(seconds=2)  # the second replica is up by then
    end = start + timedelta(seconds=cycles * CYCLE)

    async def window_closed() -> bool:
        newest = await control_db.fetchval("SELECT max(checked_at) FROM service_health_history")
        return bool(newest and newest > end + timedelta(seconds=CYCLE))

    await eventually(window_closed, cycles * CYCLE + 20, "the counting window to pass")
    rows = await control_db.fetch(
        "SELECT h.service_id, count(*) AS checks, array_agg(DISTINCT monitor) AS monitors"
        " FROM service_health_history h JOIN services s ON s.id = h.service_id"
        " WHERE s.name LIKE $1 AND checked_at >= $2 AND checked_at < $3 GROUP BY h.service_id",
        f"{P}%",
        start,
        end,
    )
    assert len(rows) >= 3
    for row in rows:
        # One probe per period: `cycles` of them (±1 at the window's edges), never twice that.
        assert cycles - 1 <= row["checks"] <= cycles + 1, dict(row)
    replicas = {m for row in rows for m in row["monitors"]}
    assert second.monitor_instance_id in replicas
    assert len(replicas) == 2


async def test_a_stopped_read_replica_degrades_the_service(
    api: httpx.AsyncClient, monitor: MonitorSettings, docker_client: docker.DockerClient
) -> None:
    service_id = await create_postgres(api, f"{P}rmon", {"replicas": 1, "storage_gb": 65536})
    await wait_for_status(api, service_id, "operational", ONE_CYCLE)
    replica = docker_client.containers.get(f"temps-postgres-{P}rmon-replica-1")
    await asyncio.to_thread(replica.stop, timeout=5)
    reason = await wait_for_status(api, service_id, "degraded", ONE_CYCLE, "replica-1")
    assert reason == "read replica not running: replica-1"
    await asyncio.to_thread(replica.start)
    await wait_for_status(api, service_id, "operational", ONE_CYCLE + 10)
    assert (await api.delete(f"/api/external-services/{service_id}")).status_code == 202
