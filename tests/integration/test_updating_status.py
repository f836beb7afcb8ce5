"""Honest status while a service changes (issue 13, point 4), with a real PostgreSQL service:
while a change restarts or recreates a member the service shows `updating` with what is being
done, never `operational` while the member refuses connections; the PATCH answers never claim
`applied` for a member that does not accept connections yet; each step is an event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_converged

pytestmark = pytest.mark.asyncio(loop_scope="session")
TICK_S = 0.05
CONNECT_TIMEOUT_S = 5.0


async def _connects(url: str) -> bool | None:
    """One direct connection and a query: True when it works, False when the server refuses
    or resets it, None when it only took longer than CONNECT_TIMEOUT_S (a loaded machine)."""
    try:
        conn = await asyncpg.connect(url, ssl="require", timeout=CONNECT_TIMEOUT_S)
    except TimeoutError:
        return None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
        return True
    except TimeoutError:
        return None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)


@dataclass
class Samples:
    """Each tick: a direct connection attempt, then a GET as soon as it ended. A refusal the
    GET after it still calls `operational` is a lie: the status was read after the member
    refused (the restart is announced, and projected, before the member stops)."""

    ticks: list[tuple[float, str, str | None, bool | None]] = field(default_factory=list)

    def statuses(self) -> list[str]:
        return [status for _, status, _, _ in self.ticks]

    def lies(self) -> list[tuple[float, str, str | None, bool | None]]:
        return [t for t in self.ticks if t[1] == "operational" and t[3] is False]

    def refused(self) -> int:
        return sum(ok is False for *_, ok in self.ticks)


async def _sample(
    api: httpx.AsyncClient, service_id: str, url: str, done: asyncio.Event, samples: Samples
) -> None:
    started = time.monotonic()
    while not done.is_set():
        tick = time.monotonic()
        ok = await _connects(url)
        body = (await api.get(f"/api/external-services/{service_id}")).json()
        samples.ticks.append((tick - started, body["status"], body["status_reason"], ok))
        await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - tick)))


async def _steps(api: httpx.AsyncClient, service_id: str, into: list[dict[str, Any]]) -> None:
    """The service's events (SSE) as they arrive, until cancelled."""
    with contextlib.suppress(httpx.HTTPError):
        await _read_events(api, service_id, into)


async def _read_events(api: httpx.AsyncClient, service_id: str, into: list[dict[str, Any]]) -> None:
    async with api.stream(
        "GET", "/api/events", params={"service_id": service_id}, timeout=None
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line.removeprefix("data: ")))


async def _settled_after_change(
    api: httpx.AsyncClient, service_id: str, generation: int, samples: Samples
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/external-services/{service_id}")).json()
        if body["status"] == "failed":
            raise AssertionError(body["status_reason"])
        done = body["status"] == "operational" and body["observed_generation"] >= generation
        return body if done else None

    return await eventually(probe, 180, f"{service_id} operational after the change")


@pytest.fixture(scope="module")
async def pg(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.post(
        "/api/external-services",
        json={
            "name": f"{P}upd",
            "service_type": "postgres",
            "version": "15",
            "parameters": {"replicas": 0, "memory_mb": 256},
        },
    )
    assert response.status_code == 202, response.text
    service = await wait_converged(api, response.json()["id"])
    service["url"] = (await credentials(api, service["id"]))["local_connection_url"]
    return service


async def _watched(
    api: httpx.AsyncClient, service: dict[str, Any], change: Any
) -> tuple[Any, Samples, list[dict[str, Any]]]:
    """Run `change()` with the GET + connection sampler and the event stream going; returns
    its answer once the service is operational at the change's generation again."""
    sid, samples, done = service["id"], Samples(), asyncio.Event()
    events: list[dict[str, Any]] = []
    listener = asyncio.create_task(_steps(api, sid, events))
    await asyncio.sleep(0.5)  # the stream is subscribed
    sampler = asyncio.create_task(_sample(api, sid, service["url"], done, samples))
    try:
        await asyncio.sleep(0.3)  # a few samples before the change
        answer = await change()
        generation = (await api.get(f"/api/external-services/{sid}")).json()["generation"]
        await _settled_after_change(api, sid, generation, samples)
        await asyncio.sleep(0.5)  # a few samples after it
    finally:
        done.set()
        await sampler
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    return answer, samples, events


async def test_a_memory_change_shows_updating_until_postgres_accepts_connections(
    api: httpx.AsyncClient, pg: dict[str, Any]
) -> None:
    sid = pg["id"]

    async def change() -> httpx.Response:
        return await api.patch(
            f"/api/external-services/{sid}", json={"parameters": {"memory_mb": 320}}
        )

    answer, samples, events = await _watched(api, pg, change)
    assert answer.status_code == 202, answer.text
    # The answer says what GET shows from now on: a change being applied, not `operational`.
    assert answer.json()["status"] == "updating", answer.json()
    print(
        f"memory change: {len(samples.ticks)} samples, {samples.refused()} refused connections,"
        f" statuses {sorted(set(samples.statuses()))}"
    )
    assert samples.refused() > 0, "the restart was not seen: the test proves nothing"
    assert not samples.lies(), f"operational while refusing connections: {samples.lies()}"
    assert "updating" in samples.statuses()
    reasons = {reason for _, status, reason, _ in samples.ticks if status == "updating"}
    assert any(r and r.startswith("restarting the primary to apply") for r in reasons), reasons
    assert samples.statuses()[-1] == "operational"
    assert samples.ticks[-1][3], "the last sample could not connect"
    steps = [e["payload"]["step"] for e in events if e["type"] == "ServiceStepCompleted"]
    assert any(s.startswith("container recreated") for s in steps), steps
    assert "accepting connections" in steps, steps
    kinds = [e["type"] for e in events]
    assert "ServiceProvisioned" in kinds, kinds


async def test_lifting_a_cpu_cap_answers_applied_only_when_it_accepts_connections(
    api: httpx.AsyncClient, pg: dict[str, Any]
) -> None:
    """A CPU cap cannot be lifted live (Docker 20.10): the member is recreated."""
    sid = pg["id"]
    capped = await api.patch(f"/api/external-services/{sid}/resources", json={"cpus": 1})
    assert capped.status_code == 200, capped.text
    await wait_converged(api, sid)
    first_after: list[bool | None] = []

    async def change() -> httpx.Response:
        answer = await api.patch(f"/api/external-services/{sid}/resources", json={"cpus": None})
        first_after.append(await _connects(pg["url"]))  # at once, no retry
        return answer

    answer, samples, events = await _watched(api, pg, change)
    assert answer.status_code == 200, answer.text
    assert [(a["outcome"], a["recreated"]) for a in answer.json()["applied"]] == [("applied", True)]
    assert first_after == [True], "the answer said applied, but a connection right after failed"
    print(
        f"cap lifted: {len(samples.ticks)} samples, {samples.refused()} refused connections,"
        f" statuses {sorted(set(samples.statuses()))}"
    )
    assert samples.refused() > 0, "the recreate was not seen: the test proves nothing"
    assert not samples.lies(), f"operational while refusing connections: {samples.lies()}"
    reasons = {reason for _, status, reason, _ in samples.ticks if status == "updating"}
    assert any(r and "lift its resource caps" in r for r in reasons), reasons
    assert samples.statuses()[-1] == "operational"
    steps = [e["payload"]["step"] for e in events if e["type"] == "ServiceStepCompleted"]
    assert any(s.startswith("container recreated") for s in steps), steps
    assert "accepting connections" in steps, steps
