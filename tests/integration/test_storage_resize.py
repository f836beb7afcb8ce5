"""Storage resizing (issue 13, point 5): growth applied without a restart, a shrink below the
measured usage refused with the figures (409 `storage_in_use`), nothing stored.

The platform runs with a 1 MiB storage unit (`storage_gb: 40` means 40 MiB) for the monitor
and the S3 quota job, and a monitor probing every 2 s; the S3 quota's full pass runs only every
30 s, so a quota lifted within seconds was lifted by the resize itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import docker
import httpx
import pytest
from temps_shared.ids import container_name

from tests.integration.conftest import Platform
from tests.integration.monitoring import admin_connection, create_postgres, health, wait_for_status
from tests.support import RUN_PREFIX as P
from tests.support import eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
MiB = 1024 * 1024
QUOTA_PERIOD_S = 30.0


@pytest.fixture(scope="module")
async def platform(
    base_env: dict[str, str], docker_client: docker.DockerClient
) -> AsyncIterator[Platform]:
    env = {
        **base_env,
        "TEMPS_S3_QUOTA_UNIT_MB": "1",
        "TEMPS_S3_QUOTA_PERIOD_S": str(QUOTA_PERIOD_S),
    }
    running = Platform(env)
    await running.start_api()
    await running.start_provisioner()
    await running.start_monitor(
        monitor_period_s=2.0, monitor_probe_timeout_s=1.8, monitor_storage_unit_mb=1
    )
    yield running
    with contextlib.suppress(asyncio.CancelledError):
        await running.stop()


async def _service(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/api/external-services/{service_id}")).json()
    return body


async def _patch(api: httpx.AsyncClient, service_id: str, **parameters: Any) -> httpx.Response:
    return await api.patch(f"/api/external-services/{service_id}", json={"parameters": parameters})


async def _usage_at_least(api: httpx.AsyncClient, service_id: str, floor: int) -> int:
    """The monitor's storage figure once a check measured at least `floor` bytes."""

    async def probe() -> int | None:
        used = (await health(api, service_id, limit=1))["metrics"]["storage_used_bytes"]
        return used if used is not None and used >= floor else None

    return await eventually(probe, 60, f"a storage figure ≥ {floor} bytes", 0.5)


async def _refused_shrink(
    api: httpx.AsyncClient, service_id: str, parameter: str, used: int
) -> dict[str, Any]:
    """A shrink below `used` answers 409 with the figures; nothing changes."""
    before = await _service(api, service_id)
    asked = used // MiB - 1
    response = await _patch(api, service_id, **{parameter: asked})
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_in_use"
    details = error["details"]
    assert details["parameter"] == parameter
    assert details["requested"] == asked
    assert details["requested_bytes"] == asked * MiB
    assert details["used_bytes"] >= used - MiB  # the latest figure (usage moves a little)
    assert details["used_bytes"] > details["requested_bytes"]
    assert str(details["used_bytes"]) in error["message"]
    after = await _service(api, service_id)
    assert after["parameters"] == before["parameters"]
    assert after["generation"] == before["generation"]  # no command, no event
    return dict(details)


def _container_id(docker_client: docker.DockerClient, name: str) -> str:
    container_id = docker_client.containers.get(name).id
    assert container_id is not None
    return str(container_id)


async def test_postgres_grows_live_and_refuses_a_shrink_below_usage(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    name = f"{P}pgsize"
    service_id = await create_postgres(api, name, {"storage_gb": 1000, "replicas": 0})
    container = container_name("postgres", name)
    container_id = _container_id(docker_client, container)
    conn = await admin_connection(api, service_id)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute(
            "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS pad"
            " FROM generate_series(1, 30000) g"
        )
        used = await _usage_at_least(api, service_id, 30 * MiB)

        refused = await _refused_shrink(api, service_id, "storage_gb", used)
        print(f"\npostgres: used {refused['used_bytes']} B, refused {refused['requested']} MiB")

        # A shrink above the usage is accepted: the allocation is now ≥ 90 % used (degraded).
        tight = math.ceil(used / MiB) + 1
        response = await _patch(api, service_id, storage_gb=tight)
        assert response.status_code == 202, response.text
        reason = await wait_for_status(api, service_id, "degraded", 60, reason="storage")
        print(f"postgres: shrunk to {tight} MiB → degraded ({reason})")

        # Growth: no restart, the client keeps its session, the storage verdict lifts.
        response = await _patch(api, service_id, storage_gb=2000)
        assert response.status_code == 202, response.text
        await wait_for_status(api, service_id, "operational", 60)
        assert (await _service(api, service_id))["parameters"]["storage_gb"] == 2000
        assert _container_id(docker_client, container) == container_id
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        assert await conn.fetchval("SELECT count(*) FROM filler") == 30000
    finally:
        await conn.close()
    await api.delete(f"/api/external-services/{service_id}")


def _s3_client(creds: dict[str, Any], ca_file: Path) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=creds["local_endpoint"],
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        region_name=creds["region"],
        verify=str(ca_file),
        config=botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


async def test_s3_quota_raised_live_and_shrink_below_usage_refused(
    api: httpx.AsyncClient,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    name = f"{P}s3size"
    response = await api.post(
        "/api/external-services",
        json={"name": name, "service_type": "s3", "parameters": {"size_gb": 1000}},
    )
    assert response.status_code == 202, response.text
    service_id = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=120)
    creds = (await api.get(f"/api/external-services/{service_id}/credentials")).json()
    ca_file = tmp_path_factory.mktemp("s3size") / "ca.pem"
    ca_file.write_text(creds["ca_certificate"])
    s3, bucket = _s3_client(creds, ca_file), creds["bucket"]
    container = container_name("s3", name)
    container_id = _container_id(docker_client, container)

    async def put(key: str, size: int) -> str | None:
        try:
            await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=os.urandom(size))
        except botocore.exceptions.ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return None

    for n in range(4):
        assert await put(f"a{n}", MiB) is None
    used = await _usage_at_least(api, service_id, 4 * MiB)
    refused = await _refused_shrink(api, service_id, "size_gb", used)
    print(f"\ns3: used {refused['used_bytes']} B, refused {refused['requested']} MiB")

    # Shrink above the usage: accepted; then fill past it until the quota blocks writes.
    tight = math.ceil(used / MiB) + 2
    response = await _patch(api, service_id, size_gb=tight)
    assert response.status_code == 202, response.text
    for n in range(tight + 1):
        await put(f"b{n}", MiB)

    async def refused_write() -> str | None:
        return await put("probe", 1024)

    await eventually(refused_write, QUOTA_PERIOD_S * 2 + 15, "the quota to block writes", 1.0)
    await wait_status(api, service_id, "degraded", timeout_s=30)

    # Growth: the quota is lifted at once (well before the next full pass), no restart.
    started = time.monotonic()
    response = await _patch(api, service_id, size_gb=2000)
    assert response.status_code == 202, response.text

    async def accepted_write() -> bool:
        return await put("probe", 1024) is None

    await eventually(accepted_write, 20, "writes accepted after the raise", 0.2)
    lifted_s = time.monotonic() - started
    print(f"s3: quota {tight} → 2000 MiB lifted in {lifted_s:.1f} s (full pass every 30 s)")
    assert lifted_s < 8
    await wait_status(api, service_id, "operational", timeout_s=30)
    assert _container_id(docker_client, container) == container_id
    await api.delete(f"/api/external-services/{service_id}")
