"""Redis services end to end (issue 4): versions, persistence, live parameter changes, memory and
eviction, ACL users, TLS, bad input — on the real bus, PostgreSQL and Docker.

Lean on purpose (2 cores): three services (one per version, each with another persistence
mode) carry most checks, a fourth one the memory checks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import docker
import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, OutOfMemoryError
from redis.exceptions import ConnectionError as RedisConnectionError
from temps_shared.crypto import KeyRing
from temps_shared.store.services import get_service

from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")

# version → persistence of the service that runs it
VERSIONS = {"6": "none", "7": "rdb", "8": "aof"}
MB = 1024 * 1024


async def _create(api: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": "redis", **extra}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def _all_secrets(database_url: str, data_dir: Path, service_id: str) -> dict[str, str]:
    """Every stored secret (the monitor and backup passwords are not served by the API)."""
    conn = await asyncpg.connect(database_url)
    try:
        record = await get_service(conn, UUID(service_id))
    finally:
        await conn.close()
    assert record is not None
    return record.credentials(KeyRing.from_data_dir(data_dir))


def _client(creds: dict[str, Any], **kwargs: Any) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        creds["local_connection_url"], decode_responses=True, socket_timeout=30, **kwargs
    )


def _tls_client(
    service: dict[str, Any], username: str, password: str, ca_pem: str
) -> aioredis.Redis:
    """rediss:// on the loopback TLS port, verify-full against the installation CA."""
    info = service["connection_info"]
    return aioredis.Redis.from_url(
        f"rediss://{username}:{password}@{info['local_host']}:{info['local_tls_port']}/0",
        ssl_ca_data=ca_pem,
        ssl_cert_reqs="required",
        ssl_check_hostname=True,
        decode_responses=True,
        socket_timeout=30,
    )


async def _patch(
    api: httpx.AsyncClient, service_id: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    """PATCH the parameters and wait until the provisioner has applied that generation."""
    response = await api.patch(
        f"/api/external-services/{service_id}", json={"parameters": parameters}
    )
    assert response.status_code == 202, response.text
    generation = response.json()["generation"]

    async def applied() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/external-services/{service_id}")).json()
        assert body["status"] != "failed", body["status_reason"]
        done = body["observed_generation"] >= generation and body["status"] == "operational"
        return body if done else None

    return await eventually(applied, 60, f"generation {generation} of {service_id} applied")


async def _restart(api: httpx.AsyncClient, *services: dict[str, Any]) -> None:
    """Stop → Start through the API, every service at once."""
    for verb, status in (("stop", "stopped"), ("start", "operational")):
        for service in services:
            response = await api.post(f"/api/external-services/{service['id']}/{verb}")
            assert response.status_code == 202, response.text
        await asyncio.gather(*(wait_status(api, s["id"], status) for s in services))


async def _config(client: aioredis.Redis, *keys: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in keys:
        values.update(await client.config_get(key))
    return values


async def _write(client: aioredis.Redis, prefix: str, value: str, count: int) -> None:
    """`count` keys holding `value`, pipelined by 50."""
    for start in range(0, count, 50):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 50, count)):
                pipe.set(f"{prefix}:{i}", value)
            await pipe.execute()


@pytest.fixture(scope="module")
async def trio(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """One service per version, created at once; version → its operational service."""
    created = await asyncio.gather(
        *(
            _create(api, f"{P}r{v}", version=v, parameters={"persistence": persistence})
            for v, persistence in VERSIONS.items()
        )
    )
    ready = await asyncio.gather(*(wait_status(api, c["id"], "operational") for c in created))
    return dict(zip(VERSIONS, ready, strict=True))


async def test_versions_reach_operational_and_info_server_matches(
    api: httpx.AsyncClient, trio: dict[str, dict[str, Any]]
) -> None:
    for version, service in trio.items():
        assert service["version"] == version
        assert service["parameters"]["persistence"] == VERSIONS[version]
        info = service["connection_info"]
        assert info["host"] == f"temps-redis-{P}r{version}"
        assert (info["port"], info["tls_port"]) == (6379, 6380)
        assert len({info["local_port"], info["local_tls_port"]}) == 2
        creds = await credentials(api, service["id"])
        assert creds["username"] == "temps_admin"
        assert creds["connection_url"] == (
            f"redis://temps_admin:{creds['password']}@temps-redis-{P}r{version}:6379/0"
        )
        async with _client(creds) as client:
            server = await client.info("server")
            assert str(server["redis_version"]).startswith(f"{version}."), server
            assert await _config(client, "maxmemory", "maxmemory-policy", "maxclients") == {
                "maxmemory": str(512 * MB),
                "maxmemory-policy": "allkeys-lru",
                "maxclients": "10000",
            }


async def test_persistence_and_live_changes_across_stop_start(
    api: httpx.AsyncClient, trio: dict[str, dict[str, Any]]
) -> None:
    creds = {v: await credentials(api, s["id"]) for v, s in trio.items()}
    for version in trio:
        async with _client(creds[version]) as client:
            await client.mset({f"k{i}": f"v{i}" for i in range(100)})

    # maxclients and eviction change live: visible at once, keys kept.
    await _patch(api, trio["7"]["id"], {"maxclients": 500, "eviction": "volatile-lru"})
    async with _client(creds["7"]) as client:
        assert await _config(client, "maxclients", "maxmemory-policy") == {
            "maxclients": "500",
            "maxmemory-policy": "volatile-lru",
        }
        assert await client.dbsize() == 100

    await _restart(api, *trio.values())
    for version, persistence in VERSIONS.items():
        async with _client(creds[version]) as client:
            expected = 0 if persistence == "none" else 100
            assert await client.dbsize() == expected, (version, persistence)
    async with _client(creds["7"]) as client:  # the live change survived the restart too
        assert await _config(client, "maxclients", "maxmemory-policy") == {
            "maxclients": "500",
            "maxmemory-policy": "volatile-lru",
        }

    # none → aof on a live service keeps what was written before, and from then on persists.
    async with _client(creds["6"]) as client:
        await client.set("before-aof", "kept")
    await _patch(api, trio["6"]["id"], {"persistence": "aof"})
    async with _client(creds["6"]) as client:
        assert await client.get("before-aof") == "kept"
        assert await _config(client, "appendonly") == {"appendonly": "yes"}
    await _restart(api, trio["6"])
    async with _client(creds["6"]) as client:
        assert await client.get("before-aof") == "kept"


async def test_users_tls_and_pubsub(
    api: httpx.AsyncClient,
    trio: dict[str, dict[str, Any]],
    docker_client: docker.DockerClient,
    database_url: str,
    data_dir: Path,
) -> None:
    service = trio["8"]
    creds = await credentials(api, service["id"])
    secrets = await _all_secrets(database_url, data_dir, service["id"])
    ca = creds["ca_certificate"]

    # The monitor reads, and cannot write (over TLS, verify-full, like any client).
    async with _tls_client(service, "temps_monitor", secrets["monitor_password"], ca) as monitor:
        assert await monitor.ping()
        assert "used_memory" in await monitor.info("memory")
        with pytest.raises(NoPermissionError):
            await monitor.set("x", "y")
        with pytest.raises(NoPermissionError):
            await monitor.config_set("maxmemory", "1mb")

    # The backup user takes a consistent RDB and can do nothing else.
    container = docker_client.containers.get(f"temps-redis-{P}r8")
    env = {"REDISCLI_AUTH": secrets["backup_password"]}
    dump = container.exec_run(
        ["redis-cli", "--user", "temps_backup", "--rdb", "/tmp/backup.rdb"], environment=env
    )
    assert dump.exit_code == 0, dump.output
    check = container.exec_run(["redis-check-rdb", "/tmp/backup.rdb"])
    assert check.exit_code == 0
    assert b"RDB looks OK" in check.output
    for command in (["GET", "k1"], ["SET", "k1", "x"], ["INFO"], ["KEYS", "*"]):
        refused = container.exec_run(
            ["redis-cli", "--user", "temps_backup", *command], environment=env
        )
        assert b"NOPERM" in refused.output, (command, refused.output)

    # Pub/Sub between two clients over TLS; the subscriber survives a reconcile of the service.
    async with (
        _tls_client(service, creds["username"], creds["password"], ca) as subscriber,
        _tls_client(service, creds["username"], creds["password"], ca) as publisher,
    ):
        pubsub = subscriber.pubsub()
        await pubsub.subscribe("news")
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
        assert await publisher.publish("news", "one") == 1
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None
        assert message["data"] == "one"
        await _patch(api, service["id"], {"maxclients": 2000})
        assert await publisher.publish("news", "two") == 1
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None
        assert message["data"] == "two"
        await pubsub.aclose()

    # No login as `default` (no password: refused), no plaintext on the TLS port.
    info = service["connection_info"]
    for port, refusal in (
        (info["local_port"], AuthenticationError),
        (info["local_tls_port"], RedisConnectionError),
    ):
        async with aioredis.Redis(
            host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        ) as anonymous:
            with pytest.raises(refusal):
                await anonymous.ping()


async def test_memory_cap_eviction_and_noeviction(api: httpx.AsyncClient) -> None:
    created = await _create(
        api, f"{P}mem", parameters={"memory": "64MB", "eviction": "allkeys-lru"}
    )
    assert created["version"] == "7"  # the spec's default version
    assert created["parameters"]["memory_mb"] == 64
    await wait_status(api, created["id"], "operational")
    creds = await credentials(api, created["id"])
    value = "x" * (100 * 1024)
    async with _client(creds) as client:
        await _write(client, "big", value, 2000)  # 200 MB
        memory, stats = await client.info("memory"), await client.info("stats")
        assert int(memory["maxmemory"]) == 64 * MB
        assert int(memory["used_memory"]) <= 64 * MB, memory["used_memory"]
        assert int(stats["evicted_keys"]) > 0

    await _patch(api, created["id"], {"eviction": "noeviction"})
    async with _client(creds) as client:
        kept = await client.dbsize()
        with pytest.raises(OutOfMemoryError):
            await _write(client, "more", value, 1000)
        assert await client.ping()  # refused writes, not a crash
        assert await client.dbsize() >= kept

    await _patch(api, created["id"], {"memory_mb": 128})
    async with _client(creds) as client:
        assert await _config(client, "maxmemory") == {"maxmemory": str(128 * MB)}
        assert await client.dbsize() >= kept
        await client.set("room-again", value)  # raised cap: writes succeed again
    response = await api.delete(f"/api/external-services/{created['id']}")
    assert response.status_code == 202


async def test_bad_input_is_refused_naming_the_field(
    api: httpx.AsyncClient, trio: dict[str, dict[str, Any]]
) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"eviction": "lru-please"}, "parameters.eviction", "allkeys-lru"),
        ({"persistence": "sometimes"}, "parameters.persistence", "rdb+aof"),
        ({"maxclients": 0}, "parameters.maxclients", "greater than or equal to 1"),
        ({"memory": "lots"}, "memory", "512MB"),
    ]
    for parameters, field, says in cases:
        for response in (
            await api.post(
                "/api/external-services",
                json={"name": f"{P}bad", "service_type": "redis", "parameters": parameters},
            ),
            await api.patch(
                f"/api/external-services/{trio['7']['id']}", json={"parameters": parameters}
            ),
        ):
            assert response.status_code == 422, (parameters, response.text)
            message = response.json()["error"]["message"]
            assert field in message, (parameters, message)
            assert says in message, (parameters, message)
    response = await api.post(
        "/api/external-services", json={"name": f"{P}bad", "service_type": "redis", "version": "5"}
    )
    assert response.status_code == 422
    assert "on offer: 6, 7, 8" in response.json()["error"]["message"]
    names = {s["name"] for s in (await api.get("/api/external-services")).json()}
    assert f"{P}bad" not in names
