"""A read replica's state and lag are what the primary's pg_stat_replication says at each monitor
check (issue 18): after `PATCH replicas: 1`, `/health` and the service view show the replica
streaming within one cycle, and a replica that stops and comes back between reconciles is shown
as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import docker
import httpx
import pytest
from temps_monitor.settings import MonitorSettings
from temps_shared.ids import container_name

from tests.integration.conftest import Platform
from tests.integration.monitoring import converged, create_postgres, health
from tests.support import RUN_PREFIX as P
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")
CYCLE = 3.0
# Within one cycle of the default 30 s period: here two short periods (a probe under load may
# spend its budget before the replication figure) plus slack for the bus and the projector.
ONE_CYCLE = 2 * CYCLE + 4.0
SMALL_LAG = 1024 * 1024  # a disconnected replica shows at least a whole 16 MiB segment


@pytest.fixture(scope="module")
async def monitor(platform: Platform) -> MonitorSettings:
    return await platform.start_monitor(
        monitor_period_s=CYCLE, monitor_probe_timeout_s=2.5, monitor_storage_unit_mb=1
    )


def replica_1(replication: list[dict[str, Any]] | None, state: str) -> dict[str, Any] | None:
    """replica-1's entry when it is in `state` (and, streaming, with a small lag)."""
    for replica in replication or []:
        if replica["member"] != "replica-1" or replica["state"] != state:
            continue
        if state != "streaming" or (replica["lag_bytes"] or 0) < SMALL_LAG:
            return replica
    return None


async def shown(api: httpx.AsyncClient, service_id: str, state: str) -> None:
    """Within one cycle, /health and the service view both show replica-1 in `state`."""

    async def in_health() -> dict[str, Any] | None:
        return replica_1((await health(api, service_id))["metrics"]["replication"], state)

    async def in_view() -> dict[str, Any] | None:
        view = (await api.get(f"/api/external-services/{service_id}")).json()
        return replica_1(view["replication"], state)

    replica = await eventually(in_health, ONE_CYCLE, f"/health: replica-1 {state}")
    assert replica["lag_seconds"] >= 0
    await eventually(in_view, ONE_CYCLE, f"the service view: replica-1 {state}")


async def test_a_new_replica_shows_streaming_within_one_cycle(
    api: httpx.AsyncClient, monitor: MonitorSettings, docker_client: docker.DockerClient
) -> None:
    service_id = await create_postgres(api, f"{P}replstat", {"replicas": 0, "storage_gb": 1000})
    response = await api.patch(
        f"/api/external-services/{service_id}", json={"parameters": {"replicas": 1}}
    )
    assert response.status_code == 202, response.text
    await converged(api, service_id)
    await shown(api, service_id, "streaming")

    # No reconcile runs when the replica stops and comes back: only the monitor's checks can
    # tell (the reconcile's figure would say streaming throughout).
    replica = docker_client.containers.get(container_name("postgres", f"{P}replstat", 1))
    await asyncio.to_thread(replica.stop, timeout=5)
    await shown(api, service_id, "disconnected")
    await asyncio.to_thread(replica.start)
    await shown(api, service_id, "streaming")

    # Scaled back down: the next check shows no replica in either place.
    response = await api.patch(
        f"/api/external-services/{service_id}", json={"parameters": {"replicas": 0}}
    )
    assert response.status_code == 202, response.text
    await converged(api, service_id)

    async def none_left() -> bool:
        view = (await api.get(f"/api/external-services/{service_id}")).json()
        checked = (await health(api, service_id))["metrics"]["replication"]
        return checked == [] and view["replication"] == []

    await eventually(none_left, ONE_CYCLE, "no replica left in /health and the view")
