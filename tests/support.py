"""Helpers shared by the test tiers: deadlines, free ports, cleanup by label."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import docker
import httpx

T = TypeVar("T")
TEST_LABEL = "io.temps.test"


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


def service_containers(client: docker.DockerClient, service_id: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"io.temps.service-id={service_id}"})
    return [c.name or "" for c in found]


@contextmanager
def docker_for_tests(prefix: str) -> Iterator[docker.DockerClient]:
    """A Docker client; services named `prefix…` are removed before and after."""
    client = docker.from_env()
    remove_services_named(client, prefix)
    try:
        yield client
    finally:
        remove_services_named(client, prefix)
        client.close()


def remove_services_named(client: docker.DockerClient, prefix: str) -> None:
    """Remove managed containers and volumes whose service name starts with `prefix`."""
    for container in client.containers.list(all=True, filters={"label": "io.temps.managed=true"}):
        if (container.name or "").startswith(f"temps-postgres-{prefix}"):
            container.remove(force=True)
    for volume in client.volumes.list(filters={"label": "io.temps.managed=true"}):
        if (volume.name or "").startswith(f"temps-postgres-{prefix}"):
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
