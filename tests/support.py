"""Helpers shared by the test tiers: deadlines, free ports, cleanup by label."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import string
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import docker
import httpx
import nats

T = TypeVar("T")
TEST_LABEL = "io.temps.test"
# Every service a test session creates is named with this session's prefix, so concurrent
# sessions (a developer's and a helper's) never clean up each other's containers.
RUN_PREFIX = "t" + "".join(random.choices(string.ascii_lowercase, k=4)) + "-"
# Loopback ports this session's services get: a block of its own, so concurrent sessions (each
# with its own control-plane database) never hand out the same port.
RUN_PORT_BASE = random.randrange(21000, 29000, 1000)
RUN_PORT_RANGE = (RUN_PORT_BASE, RUN_PORT_BASE + 499)
RUN_PORT_RANGE_S3 = (RUN_PORT_BASE + 500, RUN_PORT_BASE + 999)
STALE_TEST_NAME = re.compile(r"^temps-[a-z0-9]+-(t[a-z]{4}|e2e)-")
STALE_AFTER_S = 1800.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float, what: str, interval_s: float = 0.2
) -> T:
    """Poll `probe` until it returns something truthy, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def run_containers(client: docker.DockerClient) -> set[str]:
    """Names of this run's managed containers, any state: one listing call (the high-level
    list inspects each container and fails when another session removes one meanwhile)."""
    found = client.api.containers(all=True, filters={"label": "io.temps.managed=true"})
    names = {str(c["Names"][0]).lstrip("/") for c in found}
    return {n for n in names if f"-{RUN_PREFIX}" in n}


def run_volumes(client: docker.DockerClient) -> set[str]:
    found = client.api.volumes(filters={"label": "io.temps.managed=true"}).get("Volumes") or []
    return {str(v["Name"]) for v in found if f"-{RUN_PREFIX}" in str(v["Name"])}


def service_containers(client: docker.DockerClient, service_id: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"io.temps.service-id={service_id}"})
    return [c.name or "" for c in found]


@contextmanager
def docker_for_tests(prefix: str) -> Iterator[docker.DockerClient]:
    """A Docker client; services named `prefix…` are removed afterwards, and leftovers of
    earlier, crashed runs (any run prefix, older than STALE_AFTER_S) before."""
    client = docker.from_env()
    remove_test_services(client, STALE_TEST_NAME, older_than_s=STALE_AFTER_S)
    remove_stale_test_containers(client)
    try:
        yield client
    finally:
        remove_test_services(client, re.compile(rf"^temps-[a-z0-9]+-{re.escape(prefix)}"))
        client.close()


def remove_stale_test_containers(client: docker.DockerClient) -> None:
    """Helper containers (e.g. a test control-plane database) a killed session left behind:
    without testcontainers' reaper (no registry to pull it from) nothing else removes them."""
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        if _older_than(container.attrs["Created"], STALE_AFTER_S):
            container.remove(force=True, v=True)


def _older_than(created: str, seconds: float) -> bool:
    """Docker's RFC 3339 timestamps (nanoseconds, Z) against now."""
    when = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
    return when <= datetime.now(UTC) - timedelta(seconds=seconds)


def remove_test_services(
    client: docker.DockerClient, name: re.Pattern[str], older_than_s: float = 0.0
) -> None:
    """Remove managed containers and volumes whose name matches `name` (and old enough)."""
    for container in client.containers.list(all=True, filters={"label": "io.temps.managed=true"}):
        if name.match(container.name or "") and _older_than(
            container.attrs["Created"], older_than_s
        ):
            container.remove(force=True)
    for volume in client.volumes.list(filters={"label": "io.temps.managed=true"}):
        if name.match(volume.name or "") and _older_than(volume.attrs["CreatedAt"], older_than_s):
            volume.remove(force=True)


async def wait_status(
    api: httpx.AsyncClient, service_id: str, status: str, timeout_s: float = 90
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/external-services/{service_id}")).json()
        if body.get("status") == "failed" and status != "failed":
            raise AssertionError(f"service failed: {body.get('status_reason')}")
        return body if body.get("status") == status else None

    return await eventually(probe, timeout_s, f"service {service_id} to be {status}")


async def wait_converged(
    api: httpx.AsyncClient, service_id: str, timeout_s: float = 180
) -> dict[str, Any]:
    """Operational at the generation last asked for (a `failed` service fails the test)."""

    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/external-services/{service_id}")).json()
        if body["status"] == "failed":
            raise AssertionError(body["status_reason"])
        done = body["status"] == "operational" and body["observed_generation"] == body["generation"]
        return body if done else None

    return await eventually(probe, timeout_s, f"{service_id} to converge")


async def nats_refused(url: str, **options: Any) -> str:
    """Connect to NATS once; the error's text (fails the test if the connection is accepted)."""
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3, **options
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await nc.close()
    raise AssertionError(f"NATS at {url} accepted a connection with {sorted(options)}")


async def credentials(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    """A service's admin credentials, revealed."""
    response = await api.get(f"/api/external-services/{service_id}/credentials")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def revealed_variables(api: httpx.AsyncClient, project_id: str) -> dict[str, str]:
    """The variables injected into a project's production environment, revealed."""
    response = await api.get(
        f"/api/projects/{project_id}/environments/production/variables", params={"reveal": "true"}
    )
    assert response.status_code == 200, response.text
    variables: dict[str, str] = response.json()["variables"]
    return variables
