"""Self-healing: a container removed behind the platform's back comes back from its volume within
one resync period, with its data, port and credentials; a removed primary volume is a `failed`
status with a reason, never a new, empty database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import docker
import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, run_containers, run_volumes, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
PERIOD_S = 4.0


@pytest.fixture(scope="module")
async def platform(
    base_env: dict[str, str], docker_client: docker.DockerClient
) -> AsyncIterator[Platform]:
    """The conftest's platform with a short resync period (no monitor: the period alone)."""
    running = Platform(
        {
            **base_env,
            "TEMPS_RESYNC_PERIOD_S": str(PERIOD_S),
            "TEMPS_RESYNC_POLL_S": "0.5",
            "TEMPS_RESYNC_ON_DOWN": "true",
        }
    )
    await running.start_api()
    await running.start_provisioner()
    yield running
    with contextlib.suppress(asyncio.CancelledError):
        await running.stop()


async def _create(api: httpx.AsyncClient, name: str, kind: str, **params: Any) -> dict[str, Any]:
    body = {"name": f"{P}{name}", "service_type": kind, "parameters": params}
    created = await api.post("/api/external-services", json=body)
    assert created.status_code == 202, created.text
    return await wait_status(api, created.json()["id"], "operational", 120)


async def _removed_and_back(
    api: httpx.AsyncClient, client: docker.DockerClient, service: dict[str, Any], member: str
) -> float:
    """`docker rm -f` the member; seconds until a new one runs, then the service is
    operational."""
    old = client.containers.get(member)
    await asyncio.to_thread(old.remove, force=True)
    removed_at = time.monotonic()

    async def back() -> bool:
        try:
            again = await asyncio.to_thread(client.containers.get, member)
        except docker.errors.NotFound:  # not yet, or between a create and a recreate
            return False
        return again.status == "running" and again.id != old.id

    await eventually(back, PERIOD_S * 2 + 60, f"{member} to come back")
    took = time.monotonic() - removed_at
    print(f"{member} back {took:.1f}s after its removal (resync period {PERIOD_S:.0f}s)")
    await wait_status(api, service["id"], "operational", 60)
    return took


async def test_a_removed_redis_comes_back_with_its_data_and_port(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    service = await _create(api, "healr", "redis", memory_mb=64, persistence="aof")
    creds = await credentials(api, service["id"])
    async with aioredis.Redis.from_url(creds["local_connection_url"]) as client:
        await client.set("kept", "yes")  # in the append-only file on the volume at once
    took = await _removed_and_back(api, docker_client, service, f"temps-redis-{P}healr")
    assert took < PERIOD_S + 30  # one period to notice, then the reconcile (a few seconds)
    again = (await api.get(f"/api/external-services/{service['id']}")).json()
    assert again["connection_info"]["local_port"] == service["connection_info"]["local_port"]

    async def kept() -> bytes | None:
        try:  # same data, same credentials, once it accepts connections again
            async with aioredis.Redis.from_url(creds["local_connection_url"]) as client:
                value: bytes | None = await client.get("kept")
                return value
        except aioredis.ConnectionError:
            return None

    assert await eventually(kept, 30, "the key written before the removal") == b"yes"


async def test_a_removed_postgres_primary_and_replica_come_back(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    service = await _create(api, "healpg", "postgres", replicas=1)
    creds = await credentials(api, service["id"])
    conn = await asyncpg.connect(creds["local_connection_url"], ssl="require")
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')")
    await conn.close()
    for member in (f"temps-postgres-{P}healpg", f"temps-postgres-{P}healpg-replica-1"):
        assert await _removed_and_back(api, docker_client, service, member) < PERIOD_S + 30
    conn = await asyncpg.connect(creds["local_connection_url"], ssl="require")
    try:
        assert await conn.fetchval("SELECT v FROM kept") == "yes"
    finally:
        await conn.close()


async def test_a_removed_s3_comes_back(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    service = await _create(api, "heals3", "s3")
    took = await _removed_and_back(api, docker_client, service, f"temps-s3-{P}heals3")
    assert took < PERIOD_S + 30


async def test_a_lost_volume_fails_instead_of_coming_back_empty(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    service = await _create(api, "lostvol", "redis", memory_mb=64)
    name = f"temps-redis-{P}lostvol"
    docker_client.containers.get(name).remove(force=True)
    docker_client.volumes.get(f"{name}-data").remove(force=True)
    failed = await wait_status(api, service["id"], "failed", PERIOD_S * 2 + 60)
    assert "volume" in failed["status_reason"]
    assert "lost" in failed["status_reason"]
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(f"{name}-data")  # no new, empty one
    assert (await api.delete(f"/api/external-services/{service['id']}")).status_code == 202


async def test_orphans_of_deleted_services_are_collected_and_strangers_kept(
    api: httpx.AsyncClient, docker_client: docker.DockerClient, database_url: str
) -> None:
    service = await _create(api, "orphan", "redis", memory_mb=64)
    name = f"temps-redis-{P}orphan"
    # A crash left the objects of a service the database already counts as deleted.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE services SET purged = true WHERE id = $1", service["id"])
    finally:
        await conn.close()
    # An object that is managed but not this installation's (another control plane's).
    stranger = docker_client.containers.create(
        "temps/redis:7",
        name=f"temps-redis-{P}stranger",
        labels={"io.temps.managed": "true", "io.temps.service-id": service["id"]},
    )

    async def collected() -> bool:
        left = run_containers(docker_client) | run_volumes(docker_client)
        return not {name, f"{name}-data"} & left

    try:
        await eventually(collected, PERIOD_S * 2 + 30, "the orphans to be collected")
        stranger.reload()  # still there
    finally:
        stranger.remove(force=True)
