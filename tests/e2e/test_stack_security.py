"""The compose stack as an attacker on the host sees it: the bus on its bridge address answers
no one without a role's credentials, and no container carries a secret in its metadata."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import docker
import httpx
import nats
import pytest

from tests.e2e.conftest import Stack
from tests.support import nats_refused

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _bridge_address(stack: Stack, client: docker.DockerClient, service: str) -> str:
    project = stack.env["TEMPS_COMPOSE_PROJECT"]
    [container] = client.containers.list(
        filters={
            "label": [
                f"com.docker.compose.project={project}",
                f"com.docker.compose.service={service}",
            ]
        }
    )
    networks = container.attrs["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


async def test_the_bus_on_the_bridge_refuses_strangers(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    address = _bridge_address(stack, docker_client, "nats")
    tls = ssl.create_default_context(cafile=str(stack.data_dir / "ca.pem"))
    tls.check_hostname = False  # dialled by address; the server's name is `nats`
    # the original attack: anonymous, no CA (the server demands TLS, which fails to verify)
    assert "CERTIFICATE_VERIFY_FAILED" in await nats_refused(f"nats://{address}:4222")
    assert "Authorization" in await nats_refused(f"tls://{address}:4222", tls=tls)
    guess = {"user": "api", "password": "guess"}
    assert "Authorization" in await nats_refused(f"tls://{address}:4222", tls=tls, **guess)
    # the monitoring port listens on the container's loopback only
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 8222), timeout=2)
    # a role's real credentials work (the files `make up` wrote, mode 0600)
    password_file = stack.data_dir / "bus" / "api.password"
    assert password_file.stat().st_mode & 0o077 == 0
    nc = await nats.connect(
        f"tls://{address}:4222",
        tls=tls,
        user="api",
        password=password_file.read_text().strip(),
        allow_reconnect=False,
        connect_timeout=3,
    )
    await nc.close()


def _secrets(data_dir: Path) -> list[str]:
    files = [
        data_dir / "controlplane_db_password",
        data_dir / "backup_store_secret_key",
        *sorted((data_dir / "bus").glob("*.password")),
    ]
    return [f.read_text().strip() for f in files]


async def test_no_container_of_the_stack_holds_a_secret_in_its_metadata(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    secrets = _secrets(stack.data_dir)
    assert len(secrets) >= 6
    project = stack.env["TEMPS_COMPOSE_PROJECT"]
    containers = docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={project}"}
    )
    assert len(containers) >= 4
    for container in containers:
        config = container.attrs["Config"]
        exposed = "\n".join([*(config.get("Env") or []), *(config.get("Cmd") or [])])
        assert not [s for s in secrets if s in exposed], container.name
        assert "PASSWORD=" not in exposed, container.name


async def test_the_audit_log_records_the_clients_own_address(api: httpx.AsyncClient) -> None:
    created = await api.post("/api/projects", json={"name": "e2e-audited"})
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    rows = (await api.get("/api/audit-log", params={"service_id": project_id})).json()
    [entry] = [r for r in rows if r["action"] == "project.created"]
    assert entry["ip"] == "127.0.0.1"  # not the bridge's gateway
    assert (await api.delete(f"/api/projects/{project_id}")).status_code == 204
