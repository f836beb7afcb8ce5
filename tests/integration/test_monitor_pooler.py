"""The pooler's figures in `/health` (issue 13.1): the monitor reads `SHOW POOLS` from each
PostgreSQL service's PgBouncer; clients held through the pooled URL, an open transaction and a
client queued behind a PAUSE show up in `metrics.pooler`, and a pooler that does not answer
makes the service `degraded` ("pooler not answering", `pooler: null`), never `down`."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import docker
import httpx
import pytest
from temps_monitor.settings import MonitorSettings
from temps_shared.crypto import KeyRing
from temps_shared.engines import pgbouncer
from temps_shared.store.services import get_service

from tests.integration.conftest import Platform
from tests.integration.monitoring import health, wait_for_status
from tests.integration.pooled_service import linked_postgres
from tests.support import RUN_PREFIX as P
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")
CYCLE = 2.0
ONE_CYCLE = CYCLE + 4.0


@pytest.fixture(scope="module")
async def monitor(platform: Platform) -> MonitorSettings:
    return await platform.start_monitor(
        monitor_period_s=CYCLE, monitor_probe_timeout_s=1.8, monitor_storage_unit_mb=1
    )


@pytest.fixture(scope="module")
async def service(
    api: httpx.AsyncClient, monitor: MonitorSettings, database_url: str, data_dir: Path
) -> dict[str, Any]:
    """A PostgreSQL service with one link: the pooled URL (loopback), TLS, the admin console."""
    linked = await linked_postgres(api, f"{P}mpool", f"{P}mpoolapp", storage_gb=65536)
    body, variables = linked["service"], linked["variables"]
    pooler = body["connection_info"]["pooler"]
    control = await asyncpg.connect(database_url)
    try:
        record = await get_service(control, UUID(body["id"]))
    finally:
        await control.close()
    assert record is not None
    ca_pem = variables["TEMPS_CA_CERT"]
    return {
        "id": body["id"],
        "pooler": pooler,
        "url": linked["pooled"],
        "ssl": linked["ssl"],
        "console": pgbouncer.Console(
            ("127.0.0.1", pooler["local_port"]),
            record.credentials(KeyRing.from_data_dir(data_dir)),
            ca_pem,
        ),
    }


async def _pooler_figures(
    api: httpx.AsyncClient, service_id: str, wanted: dict[str, int], what: str
) -> dict[str, Any]:
    """The first check whose pooler figures reach `wanted` (each at least)."""

    async def probe() -> dict[str, Any] | None:
        figures = (await health(api, service_id, limit=1))["metrics"]["pooler"]
        if figures is None or any(figures[k] < v for k, v in wanted.items()):
            return None
        return dict(figures)

    return await eventually(probe, 3 * ONE_CYCLE, what)


async def test_pooler_figures_show_held_clients_and_server_connections(
    api: httpx.AsyncClient, service: dict[str, Any]
) -> None:
    clients = [
        await asyncpg.connect(service["url"], ssl=service["ssl"], timeout=10) for _ in range(4)
    ]
    try:
        busy = clients[0].transaction()
        await busy.start()  # a transaction holds its server connection (transaction pooling)
        await clients[0].fetchval("SELECT 1")
        figures = await _pooler_figures(
            api,
            service["id"],
            {"clients_active": 4, "servers_active": 1},
            "4 clients and an open transaction in the pooler's figures",
        )
        assert figures["clients_waiting"] == 0
        assert figures["servers_idle"] >= 0
        await busy.rollback()
        body = await health(api, service["id"], limit=1)
        assert body["status"] == "operational"
    finally:
        for conn in clients:
            await conn.close(timeout=5)

    # A client queued behind a PAUSE: waiting, and for how long.
    conn = await asyncpg.connect(service["url"], ssl=service["ssl"], timeout=10)
    await service["console"].command("PAUSE", 10)
    try:
        query = asyncio.create_task(conn.fetchval("SELECT 42", timeout=60))
        figures = await _pooler_figures(
            api, service["id"], {"clients_waiting": 1}, "a client waiting behind PAUSE"
        )
        assert figures["max_wait_ms"] > 0
        assert not query.done()
    finally:
        await service["console"].command("RESUME")
    assert await asyncio.wait_for(query, 30) == 42
    await conn.close(timeout=5)

    async def drained() -> dict[str, Any] | None:
        figures = (await health(api, service["id"], limit=1))["metrics"]["pooler"]
        return figures if figures and figures["clients_waiting"] == 0 else None

    await eventually(drained, 3 * ONE_CYCLE, "no client waiting after RESUME")


async def test_a_pooler_that_does_not_answer_degrades_not_down(
    api: httpx.AsyncClient, service: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    # Frozen (docker pause): its port still accepts at the loopback publication but nothing
    # answers, and Docker still calls it running (the resync leaves it alone).
    container = docker_client.containers.get(service["pooler"]["host"])
    await asyncio.to_thread(container.pause)
    try:
        reason = await wait_for_status(api, service["id"], "degraded", 3 * ONE_CYCLE, "pooler")
        assert reason == "pooler not answering"
        latest = await health(api, service["id"], limit=1)
        assert latest["metrics"]["pooler"] is None
        assert latest["metrics"]["connections"] is not None  # the server itself answers
        assert "pooler not answering" in (latest["history"][0]["error"] or "")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            await asyncio.to_thread(container.unpause)
    await wait_for_status(api, service["id"], "operational", 3 * ONE_CYCLE)
    figures = (await health(api, service["id"], limit=1))["metrics"]["pooler"]
    assert figures is not None
