"""Sessions and tokens on the real platform: an SSE stream ends soon after its token is revoked
or expires, an expired token is refused, projects and environments are deleted only while
nothing is linked, and the audit log records the client's address."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.support import RUN_PREFIX as P
from tests.support import eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
# The watch checks every open stream's token once a second; measured here: 0.96-1.06 s.
STREAM_END_BOUND_S = 10.0


async def _token(api: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/tokens",
        json={"name": f"{P}{name}", "permissions": ["external_services:read"], **extra},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


class Stream:
    """An SSE stream read in the background: its lines, and when it ended."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        self.lines: list[str] = []
        self.connected = asyncio.Event()
        self.ended_at: float | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with self.client.stream("GET", "/api/events") as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                self.lines.append(line)
                if line == ": connected":
                    self.connected.set()
        self.ended_at = time.monotonic()

    async def ended(self, timeout_s: float) -> float:
        await asyncio.wait_for(self.task, timeout_s)
        assert self.ended_at is not None
        return self.ended_at

    def final_event(self) -> tuple[str, dict[str, Any]]:
        frames = [x for x in self.lines if x.startswith(("event:", "data:"))]
        return frames[-2].removeprefix("event: "), json.loads(frames[-1].removeprefix("data: "))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.aclose()


async def _audit(api: httpx.AsyncClient, action: str, target: str) -> dict[str, Any]:
    rows = (await api.get("/api/audit-log", params={"service_id": target})).json()
    found = [r for r in rows if r["action"] == action]
    assert found, rows
    row: dict[str, Any] = found[0]
    return row


async def test_stream_ends_soon_after_its_token_is_revoked(api: httpx.AsyncClient) -> None:
    token = await _token(api, "sse-revoked")
    stream = Stream(str(api.base_url), token["token"])
    try:
        await asyncio.wait_for(stream.connected.wait(), 30)
        revoked = await api.delete(f"/api/tokens/{token['id']}")
        assert revoked.status_code == 204, revoked.text
        revoked_at = time.monotonic()
        took = await stream.ended(STREAM_END_BOUND_S + 5) - revoked_at
        print(f"SSE stream ended {took:.2f}s after the revocation")
        assert took < STREAM_END_BOUND_S
        assert stream.final_event() == ("stream_ended", {"reason": "token_revoked"})
    finally:
        await stream.close()
    refused = await api.get(
        "/api/external-services", headers={"Authorization": f"Bearer {token['token']}"}
    )
    assert refused.status_code == 401
    audit = await _audit(api, "token.revoked", token["id"])
    assert audit["ip"] == "127.0.0.1"  # the API runs on 127.0.0.1 here, no proxy between


async def test_expired_token_is_refused_and_its_stream_ends(api: httpx.AsyncClient) -> None:
    token = await _token(api, "short", expires_in_s=3)
    assert token["expires_at"] is not None
    listed = {t["id"]: t for t in (await api.get("/api/tokens")).json()}
    assert listed[token["id"]]["expires_at"] == token["expires_at"]
    headers = {"Authorization": f"Bearer {token['token']}"}
    assert (await api.get("/api/external-services", headers=headers)).status_code == 200

    stream = Stream(str(api.base_url), token["token"])
    try:
        await asyncio.wait_for(stream.connected.wait(), 30)
        await stream.ended(3 + STREAM_END_BOUND_S)
        assert stream.final_event() == ("stream_ended", {"reason": "token_expired"})
    finally:
        await stream.close()

    refused = await api.get("/api/external-services", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_expired"
    assert "expired at" in refused.json()["error"]["message"]

    in_past = await api.post(
        "/api/tokens",
        json={"name": f"{P}past", "permissions": ["admin"], "expires_at": "2001-01-01T00:00:00Z"},
    )
    assert in_past.status_code == 422, in_past.text


async def test_delete_project_and_environment_refused_while_linked(
    api: httpx.AsyncClient,
) -> None:
    created = await api.post(
        "/api/external-services",
        json={"name": f"{P}sess-cache", "service_type": "redis", "parameters": {"memory_mb": 32}},
    )
    assert created.status_code == 202, created.text
    service = await wait_status(api, created.json()["id"], "operational", timeout_s=120)
    project = (await api.post("/api/projects", json={"name": f"{P}sess-shop"})).json()
    pid = project["id"]
    assert (
        await api.post(f"/api/projects/{pid}/environments", json={"name": "staging"})
    ).status_code == 201
    linked = await api.post(
        f"/api/external-services/{service['id']}/projects",
        json={"project_id": pid, "environment": "staging"},
    )
    assert linked.status_code == 202, linked.text

    for path in (f"/api/projects/{pid}/environments/staging", f"/api/projects/{pid}"):
        refused = await api.delete(path)
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "still_linked"
        assert service["name"] in error["message"]
        [link] = error["details"]["links"]
        assert link["service_id"] == service["id"]
        assert (link["service_type"], link["environment"]) == ("redis", "staging")
        assert link["link_id"]

    # An environment with no link goes at once.
    assert (await api.delete(f"/api/projects/{pid}/environments/production")).status_code == 204
    assert (await api.get(f"/api/projects/{pid}")).json()["environments"] == ["staging"]

    unlinked = await api.delete(
        f"/api/external-services/{service['id']}/projects/{pid}", params={"environment": "staging"}
    )
    assert unlinked.status_code == 202, unlinked.text
    assert (await api.delete(f"/api/projects/{pid}/environments/staging")).status_code == 204
    # The revoked link's record stays (its user must stay revoked); the project still goes.
    assert (await api.delete(f"/api/projects/{pid}")).status_code == 204
    assert (await api.get(f"/api/projects/{pid}")).status_code == 404
    assert (await api.delete(f"/api/projects/{pid}")).status_code == 404
    audit = await _audit(api, "project.deleted", pid)
    assert audit["ip"] == "127.0.0.1"
    assert audit["details"]["name"] == project["name"]

    async def revoked() -> bool:
        links = (await api.get(f"/api/external-services/{service['id']}/projects")).json()
        return not links

    await eventually(revoked, 30, "the link to be gone from the service")
    assert (await api.delete(f"/api/external-services/{service['id']}")).status_code == 202
