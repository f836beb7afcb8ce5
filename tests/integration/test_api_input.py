"""Bad input against the running API (issue 16, "Input"): oversized bodies answer 413 at once
and leave the event loop free, non-JSON bodies 415, numbers Python cannot hold 422, impossible
resource caps 422 without being stored, Last-Event-ID and Idempotency-Key misuse 422."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")
BIG = 15_600_000  # the 15.6 MB


@pytest.fixture(scope="module")
async def redis(api: httpx.AsyncClient) -> AsyncIterator[dict[str, Any]]:
    """One small service the tests write to (named with the run prefix, deleted after)."""
    key = str(uuid4())
    body = {"name": f"{P}input", "service_type": "redis", "parameters": {"memory_mb": 64}}
    response = await api.post("/api/external-services", json=body, headers={"Idempotency-Key": key})
    assert response.status_code == 202, response.text
    service = response.json()
    yield {**service, "idempotency_key": key, "create_body": body}
    await api.delete(f"/api/external-services/{service['id']}")


async def _timed_health(platform: Platform) -> list[float]:
    """Latencies of /api/health, polled on fresh connections while something else runs."""
    took: list[float] = []
    async with httpx.AsyncClient(base_url=platform.base_url, timeout=30) as client:
        for _ in range(10):
            started = time.monotonic()
            assert (await client.get("/api/health")).status_code == 200
            took.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
    return took


async def test_a_15_mb_body_is_refused_quickly_and_health_stays_responsive(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    body = b'{"name": "' + b"x" * BIG + b'", "service_type": "redis"}'
    health = asyncio.create_task(_timed_health(platform))
    started = time.monotonic()
    response = await api.post(
        "/api/external-services", content=body, headers={"content-type": "application/json"}
    )
    took = time.monotonic() - started
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["code"] == "body_too_large"
    assert len(response.content) < 1000
    assert took < 3.0
    assert max(await health) < 1.0


async def test_a_chunked_upload_is_cut_off_at_the_limit(api: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(BIG // 65536):
            yield b"x" * 65536
        yield b'"}'

    started = time.monotonic()
    response = await api.post(
        "/api/external-services", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text[:300]
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "%sinf", "service_type": "redis", "parameters": {"memory_mb": 1e400}}',
        '{"name": "%sinf", "service_type": "redis", "parameters": {"memory": NaN}}',
        '{"name": "%sinf", "service_type": "postgres", "parameters": {"storage_gb": -Infinity}}',
        '{"name": "%sinf", "service_type": "redis", "parameters": {"memory": "'
        + "9" * 400
        + 'TB"}}',
    ],
)
async def test_numbers_out_of_range_are_422(api: httpx.AsyncClient, raw: str) -> None:
    response = await api.post(
        "/api/external-services",
        content=(raw % P).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    names = {s["name"] for s in (await api.get("/api/external-services")).json()}
    assert f"{P}inf" not in names


async def test_a_body_that_is_not_json_is_415(
    api: httpx.AsyncClient, redis: dict[str, Any]
) -> None:
    for path, method in (
        ("/api/external-services", "POST"),
        (f"/api/external-services/{redis['id']}/resources", "PATCH"),
        ("/api/projects", "POST"),
    ):
        response = await api.request(
            method, path, content=b"name=x", headers={"content-type": "text/plain"}
        )
        assert response.status_code == 415, (path, response.text)
        assert response.json()["error"]["code"] == "unsupported_media_type"


async def test_last_event_id_out_of_range_is_422(api: httpx.AsyncClient) -> None:
    for value in ("99999999999999999999999", "-1", "abc", "1e5"):
        response = await api.get("/api/events", headers={"Last-Event-ID": value})
        assert response.status_code == 422, (value, response.text)
        assert "Last-Event-ID" in response.json()["error"]["message"]


async def test_an_idempotency_key_with_another_body_is_422(
    api: httpx.AsyncClient, redis: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": redis["idempotency_key"]}
    again = await api.post("/api/external-services", json=redis["create_body"], headers=headers)
    assert again.status_code == 202
    assert again.json()["id"] == redis["id"]
    other = {**redis["create_body"], "parameters": {"memory_mb": 128}}
    refused = await api.post("/api/external-services", json=other, headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "idempotency_key_reused"


async def _stored(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    resources: dict[str, Any] = (await api.get(f"/api/external-services/{service_id}")).json()[
        "resources"
    ]
    return resources


@pytest.mark.parametrize(
    ("caps", "field"),
    [
        ({"cpus": 0.0001}, "resources.cpus"),
        ({"memory_mb": 10**15}, "resources.memory_mb"),
        ({"memory_mb": 10**6}, "resources.memory_mb"),  # more than this host's RAM
        ({"cpus": 512}, "resources.cpus"),  # more than this host's cores
        ({"memory_mb": 64, "swap_mb": 10**6}, "resources.swap_mb"),
    ],
)
async def test_caps_docker_or_the_host_cannot_give_are_422_and_not_stored(
    api: httpx.AsyncClient, redis: dict[str, Any], caps: dict[str, Any], field: str
) -> None:
    sid = redis["id"]
    before = await _stored(api, sid)
    response = await api.patch(f"/api/external-services/{sid}/resources", json=caps)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(field)
    assert await _stored(api, sid) == before


async def test_caps_docker_accepts_are_stored_and_the_service_stays_up(
    api: httpx.AsyncClient, redis: dict[str, Any]
) -> None:
    sid = redis["id"]

    async def operational() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/external-services/{sid}")).json()
        assert body["status"] != "failed", body["status_reason"]
        done = body["status"] == "operational"
        return body if done and body["observed_generation"] == body["generation"] else None

    await eventually(operational, 120, "the service to be operational")
    response = await api.patch(
        f"/api/external-services/{sid}/resources", json={"cpus": 0.01, "memory_mb": 256}
    )
    assert response.status_code == 200, response.text
    assert {a["outcome"] for a in response.json()["applied"]} == {"applied"}
    assert await _stored(api, sid) == {"cpus": 0.01, "memory_mb": 256, "swap_mb": None}
    restarted = await api.post(f"/api/external-services/{sid}/stop")
    assert restarted.status_code == 202
    assert (await api.post(f"/api/external-services/{sid}/start")).status_code == 202
    await eventually(operational, 120, "the service to come back with its caps")
