"""The PostgreSQL engine through the platform: versions, TLS, read replicas and scaling,
memory sizing with an announced restart, the archive_mode reconcile, lifecycle, bad input."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import asyncpg
import docker
import httpx
import pytest

from tests.support import RUN_PREFIX as P
from tests.support import eventually, service_containers, wait_converged, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
PGDATA_MOUNT = "/var/lib/postgresql/data"


async def _create(api: httpx.AsyncClient, name: str, **body: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": "postgres", **body}
    )
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def _credentials(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    creds: dict[str, Any] = (
        await api.get(f"/api/external-services/{service_id}/credentials")
    ).json()
    return creds


async def _connect(creds: dict[str, Any], port: int | None = None) -> asyncpg.Connection:
    context = ssl.create_default_context(cadata=creds["ca_certificate"])
    url = creds["local_connection_url"].split("?")[0]
    if port is not None:
        url = url.rsplit(":", 1)[0] + f":{port}/" + creds["database"]
    return await asyncpg.connect(url, ssl=context)


async def _delete(api: httpx.AsyncClient, service_id: str) -> None:
    assert (await api.delete(f"/api/external-services/{service_id}")).status_code == 202

    async def gone() -> bool:
        return (await api.get(f"/api/external-services/{service_id}")).status_code == 404

    await eventually(gone, 60, "the service to be deleted")


async def test_versions_13_15_17(api: httpx.AsyncClient) -> None:
    refused = await api.post(
        "/api/external-services",
        json={"name": f"{P}v16", "service_type": "postgres", "version": "16"},
    )
    assert refused.status_code == 422
    assert "version" in refused.json()["error"]["message"]
    assert "13, 15, 17" in refused.json()["error"]["message"]

    created = {
        major: await _create(api, f"{P}v{major}", version=major, parameters={"replicas": 0})
        for major in ("13", "15", "17")
    }
    for major, service in created.items():
        await wait_status(api, service["id"], "operational", timeout_s=120)
        conn = await _connect(await _credentials(api, service["id"]))
        try:
            assert (await conn.fetchval("SHOW server_version")).startswith(f"{major}.")
            # Preloaded from the first start: the extension answers at once.
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            assert await conn.fetchval("SELECT count(*) FROM pg_stat_statements") >= 0
        finally:
            await conn.close()
    for service in created.values():
        await _delete(api, service["id"])


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"replicas": -1}, "parameters.replicas"),
        ({"replicas": 6}, "parameters.replicas"),
        ({"memory_mb": 64}, "parameters.memory_mb"),
        ({"storage_gb": 0}, "parameters.storage_gb"),
    ],
)
async def test_bad_parameters_are_refused(
    api: httpx.AsyncClient, parameters: dict[str, Any], field: str
) -> None:
    response = await api.post(
        "/api/external-services",
        json={"name": f"{P}bad", "service_type": "postgres", "parameters": parameters},
    )
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(field)


@pytest.fixture(scope="module")
async def replicated(api: httpx.AsyncClient) -> dict[str, Any]:
    created = await _create(api, f"{P}rep", version="15", parameters={"memory_mb": 256})
    return await wait_converged(api, created["id"], 120)


async def _replica_port(service: dict[str, Any], member: str) -> int:
    ports = {r["member"]: r["local_port"] for r in service["connection_info"]["replicas"]}
    return ports[member]


async def _reads_row(creds: dict[str, Any], port: int, value: str) -> bool:
    conn = await _connect(creds, port)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()")
        rows = await conn.fetch("SELECT v FROM t WHERE v = $1", value)
        return bool(rows)
    except asyncpg.UndefinedTableError:
        return False
    finally:
        await conn.close()


async def test_replica_streams_and_scaling_up_and_down(
    api: httpx.AsyncClient, replicated: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    service_id = replicated["id"]
    creds = await _credentials(api, service_id)
    conn = await _connect(creds)
    await conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('one')")
    await conn.close()
    port1 = await _replica_port(replicated, "replica-1")
    await eventually(lambda: _reads_row(creds, port1, "one"), 5, "the row on replica-1")
    assert replicated["replication"][0]["member"] == "replica-1"
    assert isinstance(replicated["replication"][0]["lag_bytes"], int)

    response = await api.patch(
        f"/api/external-services/{service_id}", json={"parameters": {"replicas": 2}}
    )
    assert response.status_code == 202
    scaled = await wait_converged(api, service_id, 120)
    port2 = await _replica_port(scaled, "replica-2")
    await eventually(lambda: _reads_row(creds, port2, "one"), 10, "the row on replica-2")

    response = await api.patch(
        f"/api/external-services/{service_id}", json={"parameters": {"replicas": 0}}
    )
    assert response.status_code == 202
    alone = await wait_converged(api, service_id, 120)
    assert alone["connection_info"]["replicas"] == []
    # The primary and its pooler (PgBouncer) stay.
    assert sorted(service_containers(docker_client, service_id)) == [
        f"temps-postgres-{P}rep",
        f"temps-postgres-{P}rep-pooler",
    ]
    volumes = {
        v.name
        for v in docker_client.volumes.list(filters={"label": f"io.temps.service-id={service_id}"})
    }
    assert volumes == {f"temps-postgres-{P}rep-data", f"temps-postgres-{P}rep-pooler-data"}
    conn = await _connect(creds)
    assert await conn.fetch("SELECT slot_name FROM pg_replication_slots") == []
    await conn.close()


async def test_memory_change_restarts_with_new_settings(
    api: httpx.AsyncClient, replicated: dict[str, Any]
) -> None:
    service_id = replicated["id"]
    response = await api.patch(
        f"/api/external-services/{service_id}", json={"parameters": {"memory": "2GB"}}
    )
    assert response.status_code == 202
    assert response.json()["parameters"]["memory_mb"] == 2048
    await wait_converged(api, service_id, 120)
    conn = await _connect(await _credentials(api, service_id))
    try:
        assert await conn.fetchval("SHOW shared_buffers") == "512MB"
        assert await conn.fetchval("SHOW effective_cache_size") == "1536MB"
        assert await conn.fetchval("SELECT v FROM t") == "one"
    finally:
        await conn.close()

    # The restart was announced on the event stream, with its reason.
    announced: list[str] = []
    async with api.stream(
        "GET", f"/api/events?service_id={service_id}", headers={"Last-Event-ID": "0"}
    ) as stream:

        async def read() -> None:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    reason = data["payload"].get("reason") or ""
                    if data["type"] == "ServiceStatusChanged" and "restarting" in reason:
                        announced.append(reason)
                        return

        await asyncio.wait_for(read(), 10)
    assert "command" in announced[0]


async def _archive_mode(api: httpx.AsyncClient, service_id: str) -> str:
    conn = await _connect(await _credentials(api, service_id))
    try:
        mode: str = await conn.fetchval("SHOW archive_mode")
        assert await conn.fetchval("SELECT v FROM t") == "one"  # data intact
        return mode
    finally:
        await conn.close()


async def _stop_start(api: httpx.AsyncClient, service_id: str) -> None:
    assert (await api.post(f"/api/external-services/{service_id}/stop")).status_code == 202
    await wait_status(api, service_id, "stopped")
    assert (await api.post(f"/api/external-services/{service_id}/start")).status_code == 202
    await wait_converged(api, service_id, 120)


async def test_stop_start_repairs_archive_mode(
    api: httpx.AsyncClient, replicated: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    service_id, name = replicated["id"], f"temps-postgres-{P}rep"
    container = docker_client.containers.get(name)
    # An operator recreates the container by hand with archiving on and no archive command.
    tls = container.get_archive("/etc/temps/tls")[0]
    attrs = container.attrs
    container.remove(force=True)
    binding = attrs["HostConfig"]["PortBindings"]["5432/tcp"][0]
    rogue = docker_client.containers.create(
        attrs["Config"]["Image"],
        command=[*attrs["Config"]["Cmd"], "-c", "archive_mode=on", "-c", "archive_command="],
        name=name,
        hostname=name,
        environment=attrs["Config"]["Env"],
        labels=attrs["Config"]["Labels"],
        volumes={f"{name}-data": {"bind": PGDATA_MOUNT, "mode": "rw"}},
        ports={"5432/tcp": (binding["HostIp"], int(binding["HostPort"]))},
        network="temps",
    )
    rogue.put_archive("/etc/temps", b"".join(tls))
    rogue.start()
    await eventually(lambda: _archive_mode_or_none(api, service_id), 30, "the rogue container")
    assert await _archive_mode(api, service_id) == "on"

    await _stop_start(api, service_id)
    assert await _archive_mode(api, service_id) == "off"

    # With the archive configuration on the volume, archiving is intended: on after Stop → Start.
    exit_code, _ = docker_client.containers.get(name).exec_run(
        [
            "sh",
            "-c",
            f"mkdir -p {PGDATA_MOUNT}/temps && echo '[global]' > "
            f"{PGDATA_MOUNT}/temps/pgbackrest.conf",
        ]
    )
    assert exit_code == 0
    await _stop_start(api, service_id)
    assert await _archive_mode(api, service_id) == "on"


async def _archive_mode_or_none(api: httpx.AsyncClient, service_id: str) -> str | None:
    try:
        return await _archive_mode(api, service_id)
    except (OSError, asyncpg.PostgresError):
        return None


async def test_delete_leaves_nothing_behind(
    api: httpx.AsyncClient, replicated: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    await api.patch(
        f"/api/external-services/{replicated['id']}", json={"parameters": {"replicas": 1}}
    )
    await wait_converged(api, replicated["id"], 120)
    await _delete(api, replicated["id"])
    label = {"label": f"io.temps.service-id={replicated['id']}"}
    assert docker_client.containers.list(all=True, filters=label) == []
    assert docker_client.volumes.list(filters=label) == []
