"""A PostgreSQL service end to end over the real bus: API → outbox → JetStream → provisioner →
Docker → events → projector → API."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from uuid import uuid4

import asyncpg
import docker
import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temps_shared.bus.publish import publish_command
from temps_shared.messages import ReconcileService, Role

from tests.integration.conftest import Platform
from tests.support import (
    RUN_PORT_RANGE,
    eventually,
    run_containers,
    service_containers,
    wait_status,
)
from tests.support import RUN_PREFIX as P

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _verify_full(ca_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = True
    return context


async def _create(api: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": "postgres", **extra}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
async def db1(api: httpx.AsyncClient) -> dict[str, Any]:
    created = await _create(api, f"{P}db1", parameters={"memory": "256MB", "replicas": 0})
    await wait_status(api, created["id"], "operational")
    return created


async def test_create_is_accepted_then_operational(
    api: httpx.AsyncClient, docker_client: docker.DockerClient, spans: InMemorySpanExporter
) -> None:
    response = await api.post(
        "/api/external-services", json={"name": f"{P}traced", "service_type": "postgres"}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "provisioning"
    assert response.headers["location"] == f"/api/external-services/{body['id']}"
    assert body["version"] == "17"  # the newest on offer
    assert body["parameters"] == {
        "storage_gb": 10,
        "memory_mb": 1024,
        "replicas": 1,
        "backups": True,
    }

    operational = await wait_status(api, body["id"], "operational")
    assert operational["observed_generation"] == operational["generation"] == 1
    info = operational["connection_info"]
    assert info["host"] == f"temps-postgres-{P}traced"
    assert info["port"] == 5432
    assert info["local_host"] == "127.0.0.1"
    assert RUN_PORT_RANGE[0] <= info["local_port"] <= RUN_PORT_RANGE[1]
    # The spec's default: one read replica, streaming.
    assert [r["member"] for r in info["replicas"]] == ["replica-1"]
    assert operational["replication"][0]["member"] == "replica-1"
    assert sorted(service_containers(docker_client, body["id"])) == [
        f"temps-postgres-{P}traced",
        f"temps-postgres-{P}traced-pooler",
        f"temps-postgres-{P}traced-replica-1",
    ]

    # One trace: the provisioner's span for the command is in the HTTP request's trace.
    finished = spans.get_finished_spans()
    http = [s for s in finished if s.name == "POST /api/external-services"]
    reconcile = [s for s in finished if s.name == "process ReconcileService"]
    assert http
    assert reconcile
    http_traces = {s.context.trace_id for s in http}
    assert any(s.context.trace_id in http_traces for s in reconcile)

    assert (await api.delete(f"/api/external-services/{body['id']}")).status_code == 202


async def test_credentials_open_a_tls_connection(
    api: httpx.AsyncClient, db1: dict[str, Any]
) -> None:
    response = await api.get(f"/api/external-services/{db1['id']}/credentials")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    creds = response.json()
    assert creds["connection_url"].endswith("?sslmode=require")
    assert f"@temps-postgres-{P}db1:5432/" in creds["connection_url"]

    # verify-full against the installation CA, on the loopback publication.
    conn = await asyncpg.connect(
        creds["local_connection_url"].split("?")[0], ssl=_verify_full(creds["ca_certificate"])
    )
    try:
        assert await conn.fetchval("SELECT current_user") == creds["username"]
        assert await conn.fetchval("SHOW ssl") == "on"
        assert await conn.fetchval("SHOW shared_buffers") == "64MB"  # memory: 256MB
    finally:
        await conn.close()

    # From outside the container, only TLS is accepted.
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(creds["local_connection_url"].split("?")[0], ssl=False)

    audit = await api.get("/api/external-services")  # the read itself is not audited
    assert audit.status_code == 200


async def test_stop_start_keeps_data_and_local_port(
    api: httpx.AsyncClient, db1: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    creds = (await api.get(f"/api/external-services/{db1['id']}/credentials")).json()
    url = creds["local_connection_url"]
    conn = await asyncpg.connect(url, ssl="require")
    await conn.execute("CREATE TABLE IF NOT EXISTS kept (v text); INSERT INTO kept VALUES ('x')")
    await conn.close()
    before = (await api.get(f"/api/external-services/{db1['id']}")).json()

    assert (await api.post(f"/api/external-services/{db1['id']}/stop")).status_code == 202
    await wait_status(api, db1["id"], "stopped")
    assert docker_client.containers.get(f"temps-postgres-{P}db1").status == "exited"

    assert (await api.post(f"/api/external-services/{db1['id']}/start")).status_code == 202
    after = await wait_status(api, db1["id"], "operational")
    assert after["connection_info"]["local_port"] == before["connection_info"]["local_port"]
    conn = await asyncpg.connect(url, ssl="require")
    assert await conn.fetchval("SELECT v FROM kept") == "x"
    await conn.close()


async def test_bad_input_is_refused_and_creates_nothing(
    api: httpx.AsyncClient,
    db1: dict[str, Any],
    docker_client: docker.DockerClient,
    platform: Any,
) -> None:
    before = run_containers(docker_client)

    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": f"{P}x", "service_type": "mysql"}, 422, "service_type"),
        ({"name": "It_Bad", "service_type": "postgres"}, 422, "name"),
        ({"name": "x", "service_type": "postgres"}, 422, "name"),
        ({"name": f"{P}x", "service_type": "postgres", "version": "16"}, 422, "version"),
        (
            {"name": f"{P}x", "service_type": "postgres", "parameters": {"memory_mb": 64}},
            422,
            "parameters.memory_mb",
        ),
        (
            {"name": f"{P}x", "service_type": "postgres", "parameters": {"storage": "lots"}},
            422,
            "storage",
        ),
        ({"name": f"{P}db1", "service_type": "postgres"}, 409, "name"),
    ]
    for body, status, field in cases:
        response = await api.post("/api/external-services", json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert field in error["message"], (body, error)
    version_error = (await api.post("/api/external-services", json=cases[3][0])).json()["error"]
    assert "on offer: 13, 15, 17" in version_error["message"]

    async with httpx.AsyncClient(base_url=platform.base_url) as anonymous:
        response = await anonymous.post(
            "/api/external-services", json={"name": f"{P}y", "service_type": "postgres"}
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"

    created = await api.post(
        "/api/tokens", json={"name": "reader", "permissions": ["external_services:read"]}
    )
    assert created.status_code == 201
    async with platform.client(created.json()["token"]) as reader:
        assert (await reader.get("/api/external-services")).status_code == 200
        response = await reader.post(
            "/api/external-services", json={"name": f"{P}y", "service_type": "postgres"}
        )
        assert response.status_code == 403
        assert "external_services:write" in response.json()["error"]["message"]
        assert (
            await reader.get(f"/api/external-services/{db1['id']}/credentials")
        ).status_code == 403

    names = {s["name"] for s in (await api.get("/api/external-services")).json()}
    assert not names & {f"{P}x", f"{P}y", "It_Bad", "x"}
    await asyncio.sleep(1)  # a wrongly queued command would have reached Docker by now
    after = run_containers(docker_client)
    assert after <= before | {f"temps-postgres-{P}traced"}


async def test_idempotency_key_replays_the_first_answer(
    api: httpx.AsyncClient, platform: Platform, docker_client: docker.DockerClient
) -> None:
    key = str(uuid4())
    body = {"name": f"{P}idem", "service_type": "postgres", "parameters": {"replicas": 0}}
    first = await api.post("/api/external-services", json=body, headers={"Idempotency-Key": key})
    second = await api.post("/api/external-services", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert [s["name"] for s in (await api.get("/api/external-services")).json()].count(
        f"{P}idem"
    ) == 1

    # A command delivered twice (another id, same service) still makes one container.
    service_id = first.json()["id"]
    nc = await platform.bus(Role.API)
    await publish_command(
        nc.jetstream(),
        ReconcileService(service_id=service_id, generation=1, reason="duplicate"),
        origin=Role.API,
    )
    await nc.close()
    await wait_status(api, service_id, "operational")
    await asyncio.sleep(1)
    assert sorted(service_containers(docker_client, service_id)) == [
        f"temps-postgres-{P}idem",
        f"temps-postgres-{P}idem-pooler",
    ]


async def test_events_stream_follows_a_provisioning(api: httpx.AsyncClient) -> None:
    seen: list[tuple[str, str]] = []
    service_id: str | None = None

    async with api.stream("GET", "/api/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert await anext(lines) == ": connected"
        service_id = (await _create(api, f"{P}events"))["id"]

        async def read_until_provisioned() -> None:
            event_type = ""
            async for line in lines:
                if line.startswith("event: "):
                    event_type = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    if data["service_id"] == service_id:
                        seen.append((event_type, data["type"]))
                        if event_type == "ServiceProvisioned":
                            return

        await asyncio.wait_for(read_until_provisioned(), timeout=90)
    types = [t for t, _ in seen]
    assert types[0] == "ServiceRequested"
    assert types[-1] == "ServiceProvisioned"
    assert all(a == b for a, b in seen)


async def test_delete_removes_container_and_volume(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    # This module's services (other modules of the session keep their own).
    mine = {f"{P}{name}" for name in ("traced", "db1", "idem", "events")}
    for service in (await api.get("/api/external-services")).json():
        if service["name"] in mine:
            response = await api.delete(f"/api/external-services/{service['id']}")
            assert response.status_code == 202
            assert response.json()["status"] == "deleting"

            async def gone(sid: str = service["id"]) -> bool:
                return (await api.get(f"/api/external-services/{sid}")).status_code == 404

            await eventually(gone, 60, f"{service['name']} to be deleted")
            assert service_containers(docker_client, service["id"]) == []
            volume = f"temps-postgres-{service['name']}-data"
            assert not docker_client.volumes.list(filters={"name": f"^{volume}$"})
    names = {s["name"] for s in (await api.get("/api/external-services")).json()}
    assert not names & mine
