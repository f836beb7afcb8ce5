"""Per-container resource limits through the platform: live caps on every member, what Docker
really holds, stopped members, lifting caps, refusals, OOM kills, usage samples and logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any
from uuid import UUID

import asyncpg
import docker
import httpx
import pytest
from temps_shared.bus.publish import publish_command
from temps_shared.messages import AgentReply, AgentRequest, ReconcileService, Role, agent_subject
from temps_shared.store.pool import create_pool
from temps_shared.store.services import update_resources

from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
MIB = 1024 * 1024


async def _converged(
    api: httpx.AsyncClient, service_id: str, status: str = "operational"
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/external-services/{service_id}")).json()
        if body["status"] == "failed":
            raise AssertionError(body["status_reason"])
        done = body["status"] == status and body["observed_generation"] == body["generation"]
        return body if done else None

    return await eventually(probe, 120, f"{service_id} to be {status}")


async def _patch(api: httpx.AsyncClient, service_id: str, body: dict[str, Any]) -> httpx.Response:
    return await api.patch(f"/api/external-services/{service_id}/resources", json=body)


def _host_config(client: docker.DockerClient, name: str) -> dict[str, Any]:
    config: dict[str, Any] = client.containers.get(name).attrs["HostConfig"]
    return config


@pytest.fixture(scope="module")
async def capped(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.post(
        "/api/external-services",
        json={
            "name": f"{P}caps",
            "service_type": "postgres",
            "version": "15",
            "parameters": {"replicas": 1, "memory_mb": 256},
        },
    )
    assert response.status_code == 202
    return await _converged(api, response.json()["id"])


async def _sql(api: httpx.AsyncClient, service_id: str, query: str) -> Any:
    creds = (await api.get(f"/api/external-services/{service_id}/credentials")).json()
    conn = await asyncpg.connect(creds["local_connection_url"], ssl="require")
    try:
        if ";" in query:  # several statements: the simple protocol, no result
            return await conn.execute(query)
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def test_caps_apply_live_to_every_member(
    api: httpx.AsyncClient, capped: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    sid = capped["id"]
    await _sql(api, sid, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('x')")
    response = await _patch(api, sid, {"memory_mb": 512, "swap_mb": 128, "cpus": 0.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["limits"] == {"memory_mb": 512, "swap_mb": 128, "cpus": 0.5}
    assert [(a["role"], a["outcome"], a["recreated"]) for a in body["applied"]] == [
        ("primary", "applied", False),
        ("replica-1", "applied", False),
    ]
    for name in (f"temps-postgres-{P}caps", f"temps-postgres-{P}caps-replica-1"):
        host = _host_config(docker_client, name)
        assert host["Memory"] == 512 * MIB
        assert host["MemorySwap"] == 640 * MIB
        assert host["NanoCpus"] == 500_000_000

    members = (await api.get(f"/api/external-services/{sid}/runtime")).json()["members"]
    members = [m for m in members if m["role"] != "pooler"]  # PgBouncer: not capped
    assert [m["role"] for m in members] == ["primary", "replica-1"]
    for member in members:
        assert member["resource_limits"] == {"memory_mb": 512, "swap_mb": 128, "cpus": 0.5}
        assert member["drift"] is None
        assert member["status"] == "running"
        assert member["oom_kills"] == 0


async def test_usage_sample_and_logs(api: httpx.AsyncClient, capped: dict[str, Any]) -> None:
    sid = capped["id"]
    assert (await _patch(api, sid, {"memory_mb": 512, "swap_mb": 128, "cpus": 0.5})).is_success
    stats = (await api.get(f"/api/external-services/{sid}/stats")).json()
    cores = os.cpu_count() or 1
    members = [m for m in stats["members"] if m["role"] != "pooler"]  # PgBouncer: not capped
    assert [m["role"] for m in members] == ["primary", "replica-1"]
    for member in members:
        assert 0.0 <= member["cpu_percent"] <= 100.0 * cores
        assert 0 < member["memory_usage_bytes"] < 512 * MIB
        assert member["memory_limit_bytes"] == 512 * MIB  # against the cap, not host RAM
        expected = member["memory_usage_bytes"] / (512 * MIB) * 100
        assert member["memory_percent"] == pytest.approx(expected, abs=0.01)
    logs = (await api.get(f"/api/external-services/{sid}/logs", params={"tail": 50})).json()
    assert logs["member"] == "primary"
    assert any("database system is ready" in line for line in logs["lines"])
    replica = await api.get(f"/api/external-services/{sid}/logs", params={"member": "replica-1"})
    assert replica.status_code == 200
    unknown = await api.get(f"/api/external-services/{sid}/logs", params={"member": "nope"})
    assert unknown.status_code == 404


async def test_cpu_percent_reflects_real_load(
    api: httpx.AsyncClient, capped: dict[str, Any]
) -> None:
    sid = capped["id"]
    creds = (await api.get(f"/api/external-services/{sid}/credentials")).json()
    conn = await asyncpg.connect(creds["local_connection_url"], ssl="require")
    busy = asyncio.create_task(
        conn.fetchval("SELECT count(*) FROM generate_series(1, 200000000)", timeout=60)
    )
    try:

        async def loaded() -> dict[str, Any] | None:
            stats = (await api.get(f"/api/external-services/{sid}/stats")).json()
            primary: dict[str, Any] = stats["members"][0]
            return primary if primary["cpu_percent"] > 20.0 else None

        # Capped at 0.5 core above: a busy backend shows close to 50 %, never above the cap.
        primary = await eventually(loaded, 20, "CPU usage under load", interval_s=0.5)
        assert primary["cpu_percent"] <= 60.0
    finally:
        busy.cancel()
        with contextlib.suppress(BaseException):
            await busy
        conn.terminate()


async def test_a_cap_docker_refuses_on_every_member_is_not_kept(
    api: httpx.AsyncClient, capped: dict[str, Any]
) -> None:
    sid = capped["id"]
    before = (await api.get(f"/api/external-services/{sid}")).json()
    response = await _patch(api, sid, {"memory_mb": 6, "cpus": 0.5})  # below what they use
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "caps_refused"
    assert {a["outcome"] for a in error["details"]["applied"]} == {"failed"}
    assert all(a["error"] for a in error["details"]["applied"])
    # The previous caps are stored again, under a newer generation the reconcile converges to.
    after = await _converged(api, sid)
    assert (
        after["resources"]
        == before["resources"]
        == {
            "memory_mb": 512,
            "swap_mb": 128,
            "cpus": 0.5,
        }
    )
    assert after["generation"] == before["generation"] + 2
    members = (await api.get(f"/api/external-services/{sid}/runtime")).json()["members"]
    members = [m for m in members if m["role"] != "pooler"]  # PgBouncer: not capped
    assert [m["drift"] for m in members] == [None, None]
    assert [m["status"] for m in members] == ["running", "running"]


async def test_caps_survive_stop_start_and_a_recreate(
    api: httpx.AsyncClient, capped: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    sid = capped["id"]
    assert (await api.post(f"/api/external-services/{sid}/stop")).status_code == 202
    await wait_status(api, sid, "stopped")
    # On a stopped service: stored, accepted by Docker, live on the next start.
    response = await _patch(api, sid, {"memory_mb": 384, "cpus": 1})
    assert {a["outcome"] for a in response.json()["applied"]} == {"stopped"}
    assert (await api.post(f"/api/external-services/{sid}/start")).status_code == 202
    await _converged(api, sid)
    assert _host_config(docker_client, f"temps-postgres-{P}caps")["Memory"] == 384 * MIB

    # A parameter change recreates the containers: the caps come with them.
    old_id = docker_client.containers.get(f"temps-postgres-{P}caps").id
    await api.patch(f"/api/external-services/{sid}", json={"parameters": {"memory_mb": 320}})
    await _converged(api, sid)
    primary = docker_client.containers.get(f"temps-postgres-{P}caps")
    assert primary.id != old_id
    assert primary.attrs["HostConfig"]["Memory"] == 384 * MIB
    assert primary.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert await _sql(api, sid, "SELECT v FROM kept") == "x"


async def test_lifting_every_cap_recreates_with_data(
    api: httpx.AsyncClient, capped: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    sid = capped["id"]
    response = await _patch(api, sid, {"memory_mb": None, "swap_mb": None, "cpus": None})
    assert response.status_code == 200
    assert [(a["outcome"], a["recreated"]) for a in response.json()["applied"]] == [
        ("applied", True),
        ("applied", True),
    ]
    for name in (f"temps-postgres-{P}caps", f"temps-postgres-{P}caps-replica-1"):
        host = _host_config(docker_client, name)
        assert host["Memory"] == 0
        assert host["NanoCpus"] == 0
    await _converged(api, sid)

    async def kept() -> Any:
        try:
            return await _sql(api, sid, "SELECT v FROM kept")
        except (OSError, asyncpg.PostgresError):
            return None

    assert await eventually(kept, 30, "the data after the recreate") == "x"


async def test_a_reconcile_that_lifted_the_caps_first_counts_as_recreated(
    api: httpx.AsyncClient,
    capped: dict[str, Any],
    docker_client: docker.DockerClient,
    platform: Platform,
    database_url: str,
) -> None:
    """The PATCH queues a reconcile and asks the agent at once; whichever takes the service lock
    first recreates the members. Here the reconcile wins: the agent must still say so."""
    sid = capped["id"]
    # A CPU cap: lifting it recreates (a lifted memory cap alone is applied live).
    response = await _patch(api, sid, {"memory_mb": 256, "cpus": 0.5})
    assert {a["outcome"] for a in response.json()["applied"]} == {"applied"}
    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            generation = await update_resources(conn, UUID(sid), {})
    finally:
        await pool.close()
    nc = await platform.bus(Role.API)
    try:
        await publish_command(
            nc.jetstream(),
            ReconcileService(service_id=UUID(sid), generation=generation, reason="resources"),
            origin=Role.API,
        )
        await _converged(api, sid)
        names = (f"temps-postgres-{P}caps", f"temps-postgres-{P}caps-replica-1")
        ids = [docker_client.containers.get(name).id for name in names]
        request = AgentRequest(service_id=UUID(sid), generation=generation)
        subject = agent_subject(platform.api_settings().node_id, "apply-resources")
        msg = await nc.request(subject, request.model_dump_json().encode(), timeout=60)
    finally:
        await nc.close()
    reply = AgentReply.model_validate_json(msg.data)
    assert [(a["outcome"], a["recreated"]) for a in reply.result["applied"]] == [
        ("applied", True),
        ("applied", True),
    ]
    assert [docker_client.containers.get(name).id for name in names] == ids
    assert _host_config(docker_client, names[0])["Memory"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"memory_mb": -1}, "resources.memory_mb"),
        ({"memory_mb": 5}, "resources.memory_mb"),
        ({"cpus": 0}, "resources.cpus"),
        ({"cpus": -2}, "resources.cpus"),
        ({"cpus": 1000}, "resources.cpus"),
        ({"swap_mb": 64}, "resources"),
        ({"swap_mb": -1, "memory_mb": 64}, "resources.swap_mb"),
    ],
)
async def test_bad_limits_are_refused(
    api: httpx.AsyncClient, capped: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    response = await _patch(api, capped["id"], body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(field)


async def test_kernel_oom_kill_of_a_backend_is_counted(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/external-services",
        json={
            "name": f"{P}oom",
            "service_type": "postgres",
            "version": "15",
            "parameters": {"replicas": 0, "memory_mb": 128},
            "resources": {"memory_mb": 64},
        },
    )
    assert response.status_code == 202, response.text
    sid = response.json()["id"]
    await _converged(api, sid)
    creds = (await api.get(f"/api/external-services/{sid}/credentials")).json()
    conn = await asyncpg.connect(creds["local_connection_url"], ssl="require")
    try:
        await conn.execute("SET work_mem = '2GB'")
        # Sorting 20 M rows in memory needs far more than the 64 MiB cap.
        await conn.fetchval(
            "SELECT count(*) FROM (SELECT g FROM generate_series(1, 20000000) g"
            " ORDER BY random()) s",
            timeout=60,
        )
    except (TimeoutError, asyncpg.PostgresError, OSError):
        pass  # the backend was killed: its connection dies with it
    finally:
        await conn.close(timeout=5)

    async def counted() -> dict[str, Any] | None:
        members = (await api.get(f"/api/external-services/{sid}/runtime")).json()["members"]
        return members[0] if members[0]["oom_kills"] >= 1 else None

    primary = await eventually(counted, 30, "the OOM kill to be counted")
    assert primary["status"] == "running"  # a killed backend leaves the container running
    assert primary["resource_limits"]["memory_mb"] == 64
    assert (await api.delete(f"/api/external-services/{sid}")).status_code == 202
