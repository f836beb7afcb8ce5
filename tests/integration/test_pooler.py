"""The pooled PostgreSQL endpoint (PgBouncer per service): `DATABASE_URL` through the pooler in
transaction mode with prepared statements, `DATABASE_DIRECT_URL` to PostgreSQL itself, and
PAUSE/RESUME around a planned restart of the primary: a client loop through the pooled URL
loses no transaction while the same loop through the direct URL sees the restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx
import psycopg
import pytest

from tests.integration.client_loops import Loop
from tests.integration.pooled_service import linked_postgres
from tests.support import RUN_PREFIX as P
from tests.support import (
    credentials,
    service_containers,
    wait_converged,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def pooled(api: httpx.AsyncClient) -> dict[str, Any]:
    """A service with one link: its record and the link's variables and URLs."""
    linked = await linked_postgres(api, f"{P}pool", f"{P}poolapp")
    return {**linked, "admin": await credentials(api, linked["service"]["id"])}


async def test_pooler_member_and_urls(
    pooled: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    service, variables = pooled["service"], pooled["variables"]
    info = service["connection_info"]
    pooler = info["pooler"]
    assert pooler["host"] == f"temps-postgres-{P}pool-pooler"
    assert pooler["pool_mode"] == "transaction"
    assert pooler["local_port"] != info["local_port"]
    assert sorted(service_containers(docker_client, service["id"])) == [
        f"temps-postgres-{P}pool",
        f"temps-postgres-{P}pool-pooler",
    ]
    container = docker_client.containers.get(pooler["host"])
    assert container.labels["io.temps.role"] == "pooler"
    assert "temps" in container.attrs["NetworkSettings"]["Networks"]
    # Pooled: the pooler's name and port; direct: PostgreSQL's. Both over TLS.
    assert f"@{pooler['host']}:6432/" in variables["DATABASE_URL"]
    assert variables["DATABASE_URL"] == variables["POSTGRES_URL"]
    assert f"@{info['host']}:5432/" in variables["DATABASE_DIRECT_URL"]
    assert variables["DATABASE_URL"].endswith("?sslmode=require")
    # No secret reaches the pooler's environment or command line.
    config = container.attrs["Config"]
    assert variables["POSTGRES_PASSWORD"] not in json.dumps([config["Env"], config["Cmd"]])


async def test_pooled_url_serves_the_link_user_with_prepared_statements(
    pooled: dict[str, Any],
) -> None:
    conn = await asyncpg.connect(pooled["pooled"], ssl=pooled["ssl"])
    try:
        user = await conn.fetchval("SELECT current_user")
        assert user == pooled["variables"]["POSTGRES_USER"]
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), (
            "pooler → server not over TLS"
        )
        await conn.execute("CREATE TABLE IF NOT EXISTS ticks (n int, at timestamptz)")
        # asyncpg prepares every query (named statements): through transaction pooling they
        # must survive server connections changing under the client (max_prepared_statements).
        statement = await conn.prepare("SELECT $1::int + 1")
        for n in range(50):
            assert await statement.fetchval(n) == n + 1
            async with conn.transaction():
                await conn.execute("INSERT INTO ticks VALUES ($1, now())", n)
        assert await conn.fetchval("SELECT count(*) FROM ticks WHERE n < 50") >= 50
    finally:
        await conn.close()
    # Many clients at once, each with its own prepared statements, sharing few server
    # connections.
    clients = [await asyncpg.connect(pooled["pooled"], ssl=pooled["ssl"]) for _ in range(8)]
    try:

        async def work(c: asyncpg.Connection, k: int) -> None:
            for n in range(20):
                assert await c.fetchval("SELECT $1::int * $2::int", n, k) == n * k

        await asyncio.gather(*(work(c, k) for k, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()
    # The administrator is not served by the pooler (superusers use the direct endpoint).
    admin = pooled["admin"]["local_connection_url"].split("?")[0]
    admin_pooled = admin.replace(
        f":{pooled['service']['connection_info']['local_port']}/",
        f":{pooled['service']['connection_info']['pooler']['local_port']}/",
    )
    with pytest.raises((asyncpg.PostgresError, OSError)):
        await asyncpg.connect(admin_pooled, ssl=pooled["ssl"], timeout=10)


async def test_pooled_url_serves_psycopg3_prepared_statements(
    pooled: dict[str, Any], tmp_path: Path
) -> None:
    """psycopg 3 names its server-side statements `_pg3_0`, `_pg3_1`, … per connection: two
    clients preparing different queries under the same names, on few server connections, must
    each get their own (PgBouncer renames them per server connection)."""
    ca = tmp_path / "ca.crt"
    ca.write_text(pooled["variables"]["TEMPS_CA_CERT"])
    url = f"{pooled['pooled']}?sslmode=verify-full&sslrootcert={ca}"
    connections = [
        await psycopg.AsyncConnection.connect(url, prepare_threshold=0, autocommit=True)
        for _ in range(6)
    ]
    try:

        async def work(conn: psycopg.AsyncConnection[Any], k: int) -> None:
            # A different first query per client: each is prepared as `_pg3_0` on its connection.
            query = f"SELECT %s::int * {k}" if k % 2 else f"SELECT %s::int + {k}"
            for n in range(20):
                cur = await conn.execute(query, (n,), prepare=True)
                assert await cur.fetchone() == ((n * k) if k % 2 else (n + k),)
                async with conn.transaction():  # one server connection for the block
                    cur = await conn.execute(query, (n,), prepare=True)
                    assert await cur.fetchone() == ((n * k) if k % 2 else (n + k),)
                    # Prepared on the server (under PgBouncer's own name), not sent as text.
                    cur = await conn.execute("SELECT statement FROM pg_prepared_statements")
                    statements = [row[0] for row in await cur.fetchall()]
                    assert query.replace("%s", "$1") in statements, statements

        await asyncio.gather(*(work(c, k) for k, c in enumerate(connections)))
    finally:
        for conn in connections:
            await conn.close()


async def _memory_change(api: httpx.AsyncClient, service_id: str, memory_mb: int) -> float:
    started = time.monotonic()
    response = await api.patch(
        f"/api/external-services/{service_id}", json={"parameters": {"memory_mb": memory_mb}}
    )
    assert response.status_code == 202, response.text
    await wait_converged(api, service_id)
    return time.monotonic() - started


async def _step_events(api: httpx.AsyncClient, service_id: str, needle: str) -> list[str]:
    found: list[str] = []
    async with api.stream(
        "GET", f"/api/events?service_id={service_id}", headers={"Last-Event-ID": "0"}
    ) as stream:

        async def read() -> None:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    step = data["payload"].get("step") or ""
                    if data["type"] == "ServiceStepCompleted" and needle in step:
                        found.append(step)
                        return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(read(), 10)
    return found


async def test_memory_change_holds_pooled_clients(
    api: httpx.AsyncClient, pooled: dict[str, Any]
) -> None:
    service_id = pooled["service"]["id"]
    # Setup through the pooled URL (the table for both loops).
    conn = await asyncpg.connect(pooled["pooled"], ssl=pooled["ssl"])
    await conn.execute("CREATE TABLE IF NOT EXISTS ticks (n int, at timestamptz)")
    await conn.close()

    pooled_loop = Loop(pooled["pooled"], pooled["ssl"], "pooled")
    direct_loop = Loop(pooled["direct"], pooled["ssl"], "direct")
    tasks = [asyncio.create_task(loop.run()) for loop in (pooled_loop, direct_loop)]
    try:
        await asyncio.sleep(1)
        assert pooled_loop.ok > 10, pooled_loop
        assert direct_loop.ok > 10, direct_loop
        took_s = await _memory_change(api, service_id, 512)
        await asyncio.sleep(1)
    finally:
        for loop in (pooled_loop, direct_loop):
            loop.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    print(
        f"\nmemory change took {took_s:.1f} s; pooled: {pooled_loop.ok} ok,"
        f" {len(pooled_loop.failures)} failed, longest wait {pooled_loop.longest_s * 1000:.0f} ms;"
        f" direct: {direct_loop.ok} ok, {len(direct_loop.failures)} failed,"
        f" longest {direct_loop.longest_s * 1000:.0f} ms"
    )
    assert pooled_loop.failures == [], pooled_loop.failures[:3]
    # The direct loop saw the restart: so the pooler is what held the pooled one.
    assert direct_loop.failures, "the direct loop saw no restart: nothing was proven"
    # The primary really restarted with the new settings.
    conn = await asyncpg.connect(pooled["direct"], ssl=pooled["ssl"])
    try:
        assert await conn.fetchval("SHOW shared_buffers") == "128MB"
    finally:
        await conn.close()
    held = await _step_events(api, service_id, "clients held")
    assert held, "no step reported how long the pooler held clients"
    print(f"reported: {held[0]}")
