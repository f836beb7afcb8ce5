"""Self-healing woken by the monitor: a container that exits is repaired as soon as the monitor
reports the service `down`, long before the resync period (its own module: another module's
provisioner with a short period would repair it too)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import docker
import pytest

from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_monitors_down_verdict_repairs_at_once(
    base_env: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """With a period far away, only the monitor's `down` (container exited) can explain a
    repair within seconds."""
    slow = Platform(
        {
            **base_env,
            "TEMPS_RESYNC_PERIOD_S": "600",
            "TEMPS_RESYNC_POLL_S": "0.5",
            "TEMPS_RESYNC_ON_DOWN": "true",
        }
    )
    await slow.start_api()
    await slow.start_provisioner()
    await slow.start_monitor(monitor_period_s=2, monitor_probe_timeout_s=1.5)
    try:
        async with slow.client() as api:
            created = await api.post(
                "/api/external-services",
                json={
                    "name": f"{P}woken",
                    "service_type": "redis",
                    "parameters": {"memory_mb": 64},
                },
            )
            assert created.status_code == 202, created.text
            service = await wait_status(api, created.json()["id"], "operational", 120)
            container = docker_client.containers.get(f"temps-redis-{P}woken")
            await asyncio.to_thread(container.stop, timeout=2)
            stopped = time.monotonic()
            await wait_status(api, service["id"], "down", 30)
            await wait_status(api, service["id"], "operational", 30)
            container.reload()
            assert container.status == "running"
            assert time.monotonic() - stopped < 60  # far less than the 600 s period
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await slow.stop()
