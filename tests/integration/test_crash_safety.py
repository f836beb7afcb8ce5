"""Crashes mid-operation converge: a killed provisioner's command is redelivered and adopted,
and a killed API's accepted request still goes out through the outbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx
import pytest

from tests.integration.conftest import Platform, admin_token
from tests.support import RUN_PREFIX as P
from tests.support import eventually, free_port, service_containers, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Processes:
    """Platform services as real processes, so a test can SIGKILL them."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = {**os.environ, **env}
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, module: str, **extra_env: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{module}-{len(self.running)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.running.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def processes(base_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(base_env, tmp_path)
    yield procs
    procs.stop_all()


async def _delete_and_wait(api: httpx.AsyncClient, service_id: str) -> None:
    assert (await api.delete(f"/api/external-services/{service_id}")).status_code == 202

    async def gone() -> bool:
        return (await api.get(f"/api/external-services/{service_id}")).status_code == 404

    await eventually(gone, 60, "the service to be deleted")


async def test_killed_provisioner_converges_with_one_container(
    base_env: dict[str, str], processes: Processes, docker_client: docker.DockerClient
) -> None:
    platform = Platform(base_env)
    await platform.start_api()
    first = processes.start("temps_provisioner")
    try:
        async with platform.client() as api:
            response = await api.post(
                "/api/external-services",
                json={
                    "name": f"{P}crash",
                    "service_type": "postgres",
                    "parameters": {"replicas": 0},
                },
            )
            assert response.status_code == 202
            service_id = response.json()["id"]

            async def container_exists() -> list[str]:
                return service_containers(docker_client, service_id)

            await eventually(
                container_exists, 60, "the provisioner to create the container", interval_s=0.02
            )
            first.send_signal(signal.SIGKILL)  # mid-provisioning: before it reported anything
            first.wait(timeout=10)
            status = (await api.get(f"/api/external-services/{service_id}")).json()["status"]
            assert status == "provisioning"

            processes.start("temps_provisioner")
            await wait_status(api, service_id, "operational", timeout_s=120)
            assert sorted(service_containers(docker_client, service_id)) == [
                f"temps-postgres-{P}crash",
                f"temps-postgres-{P}crash-pooler",
            ]
            await _delete_and_wait(api, service_id)
    finally:
        await platform.stop()


async def test_accepted_request_survives_an_api_kill(
    base_env: dict[str, str], processes: Processes, database_url: str
) -> None:
    port = free_port()
    # This API instance "dies" before its relay gets to the outbox row.
    api_proc = processes.start(
        "temps_api", TEMPS_API_PORT=str(port), TEMPS_OUTBOX_RELAY_ENABLED="false"
    )
    token = admin_token(Path(base_env["TEMPS_DATA_DIR"]))
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
    ) as dying:

        async def healthy() -> bool:
            try:
                return (await dying.get("/api/health")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(healthy, 60, "the API subprocess to answer")
        response = await dying.post(
            "/api/external-services", json={"name": f"{P}outbox", "service_type": "postgres"}
        )
        assert response.status_code == 202
        service_id: str = response.json()["id"]
    api_proc.send_signal(signal.SIGKILL)
    api_proc.wait(timeout=10)

    conn = await asyncpg.connect(database_url)
    pending = await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND subject LIKE 'temps.cmd.%'"
        " AND convert_from(payload, 'UTF8') LIKE '%' || $1 || '%'",
        service_id,
    )
    await conn.close()
    assert pending == 1

    # A new API instance relays it; the provisioner provisions it.
    platform = Platform(base_env)
    await platform.start_api()
    processes.start("temps_provisioner")
    try:
        async with platform.client() as api:
            service: dict[str, Any] = await wait_status(
                api, service_id, "operational", timeout_s=120
            )
            assert service["name"] == f"{P}outbox"
            await _delete_and_wait(api, service_id)
    finally:
        await platform.stop()
