"""The platform as a user runs it: `make up`'s script, the compose stack, HTTP only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.support import eventually, service_containers, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
STATE: dict[str, Any] = {}  # the service the lifecycle tests share, in file order


async def _connect(api: httpx.AsyncClient, service_id: str) -> asyncpg.Connection:
    creds = (await api.get(f"/api/external-services/{service_id}/credentials")).json()
    return await asyncpg.connect(creds["local_connection_url"], ssl="require")


async def test_up_prints_the_api_and_token_and_a_rerun_changes_nothing(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    first = stack.first_up
    assert f"Temps is up: API {stack.base_url}/api" in first
    assert f"Admin token: in {stack.data_dir / 'admin_token'}" in first
    assert stack.token not in first  # where the token is, never the token
    launcher = Path(stack.env["TEMPS_BIN_DIR"]) / "temps"
    assert f"CLI: {launcher}" in first
    assert f"export TEMPS_API_URL={stack.base_url} TEMPS_DATA_DIR={stack.data_dir}" in first
    assert f"Next: {launcher} services create mydb --type postgres --wait" in first
    # The launcher runs the project's CLI: it reaches this stack with the printed settings.
    listed = await asyncio.to_thread(
        subprocess.run,
        [str(launcher), "services", "list", "--json"],
        env={**os.environ, "TEMPS_API_URL": stack.base_url, "TEMPS_DATA_DIR": str(stack.data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)
    launcher_stat = launcher.stat()
    before = stack.project_containers(docker_client)
    assert {n.split("-")[-2] for n in before} >= {"api", "provisioner", "nats"}
    images = {t: docker_client.images.get(t).id for t in ("temps/app:latest", "temps/postgres:15")}

    started = time.monotonic()
    again = stack.run("up.sh")
    elapsed = time.monotonic() - started
    assert f"CLI: {launcher}" in again.stdout
    assert stack.project_containers(docker_client) == before  # nothing recreated
    assert launcher.stat().st_mtime_ns == launcher_stat.st_mtime_ns  # launcher not rewritten
    assert {t: docker_client.images.get(t).id for t in images} == images  # nothing rebuilt
    assert elapsed < 60, f"a no-op `make up` took {elapsed:.0f}s"


async def test_create_streams_events_and_becomes_operational(api: httpx.AsyncClient) -> None:
    events: list[dict[str, Any]] = []
    connected = asyncio.Event()

    async def follow() -> None:
        async with api.stream("GET", "/api/events", timeout=None) as stream:
            async for line in stream.aiter_lines():
                if line == ": connected":
                    connected.set()
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))

    follower = asyncio.create_task(follow())
    await asyncio.wait_for(connected.wait(), 10)

    started = time.monotonic()
    response = await api.post(
        "/api/external-services", json={"name": "e2e-db1", "service_type": "postgres"}
    )
    assert response.status_code == 202
    assert response.json()["status"] == "provisioning"
    service_id = response.json()["id"]
    STATE["id"] = service_id
    service = await wait_status(api, service_id, "operational", timeout_s=60)
    assert time.monotonic() - started < 60
    STATE["local_port"] = service["connection_info"]["local_port"]

    async def provisioned_seen() -> bool:
        return any(
            e["service_id"] == service_id and e["type"] == "ServiceProvisioned" for e in events
        )

    await eventually(provisioned_seen, 10, "the ServiceProvisioned event on /api/events")
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    mine = [e["type"] for e in events if e["service_id"] == service_id]
    assert mine[0] == "ServiceRequested"
    assert mine[-1] == "ServiceProvisioned"
    assert all("password" not in json.dumps(e) for e in events)


async def test_credentials_connect_over_tls(api: httpx.AsyncClient) -> None:
    conn = await _connect(api, STATE["id"])
    try:
        assert await conn.fetchval("SHOW ssl") == "on"
        await conn.execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept')")
    finally:
        await conn.close()


async def test_stop_start_keeps_data_and_local_port(api: httpx.AsyncClient) -> None:
    service_id = STATE["id"]
    assert (await api.post(f"/api/external-services/{service_id}/stop")).status_code == 202
    await wait_status(api, service_id, "stopped", timeout_s=60)
    assert (await api.post(f"/api/external-services/{service_id}/start")).status_code == 202
    service = await wait_status(api, service_id, "operational", timeout_s=60)
    assert service["connection_info"]["local_port"] == STATE["local_port"]
    conn = await _connect(api, service_id)
    assert await conn.fetchval("SELECT body FROM notes") == "kept"
    await conn.close()


async def test_down_then_up_keeps_the_service(
    stack: Stack, api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    stack.run("down.sh")
    assert stack.project_containers(docker_client) == {}
    # Managed services are not part of the compose project: they keep running.
    assert docker_client.containers.get("temps-postgres-e2e-db1").status == "running"
    stack.run("up.sh")
    service = await wait_status(api, STATE["id"], "operational", timeout_s=60)
    assert service["connection_info"]["local_port"] == STATE["local_port"]
    conn = await _connect(api, STATE["id"])
    assert await conn.fetchval("SELECT body FROM notes") == "kept"
    await conn.close()


async def test_delete_removes_container_and_volume(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    service_id = STATE["id"]
    assert (await api.delete(f"/api/external-services/{service_id}")).status_code == 202

    async def gone() -> bool:
        return (await api.get(f"/api/external-services/{service_id}")).status_code == 404

    await eventually(gone, 60, "the service to be deleted")
    assert service_containers(docker_client, service_id) == []
    assert not docker_client.volumes.list(filters={"name": "^temps-postgres-e2e-db1-data$"})
