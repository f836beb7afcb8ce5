"""Issue 13's acceptance loop beyond the memory change (test_pooler.py): a client doing one small
transaction every 20 ms through `DATABASE_URL` (the pooler) loses none during a memory cap set
and lifted, a CPU cap set and lifted (the lift recreates the primary), a replica added and
removed, an archive_mode change (the archive configuration appearing on, then leaving, the
primary's volume) and a Stop-free minor recreate (the same major version under another image
tag); the longest wait of each is printed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import docker
import httpx
import pytest
from temps_provisioner.main import serve
from temps_provisioner.settings import ProvisionerSettings
from temps_shared.engines.postgres import ARCHIVE_CONFIG

from tests.integration.client_loops import Loop
from tests.integration.conftest import Platform
from tests.integration.pooled_service import linked_postgres
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_converged

pytestmark = pytest.mark.asyncio(loop_scope="session")
NAME = f"{P}poolops"
PRIMARY = f"temps-postgres-{NAME}"
MINOR_TAG = f"15-{P}minor"  # the same image under another tag: a minor update to the platform


class Provisioner:
    """The provisioner (with its host agent) in this process, restartable with other settings."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.settings: ProvisionerSettings | None = None

    def start(self, **overrides: Any) -> None:
        kwargs = {k.removeprefix("TEMPS_").lower(): v for k, v in self.env.items()}
        self.settings = ProvisionerSettings(**{**kwargs, **overrides})
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(serve(self.settings, self._stop))

    async def stop(self) -> None:
        if self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 30)
            self._task = None


@pytest.fixture(scope="module")
async def provisioner(base_env: dict[str, str]) -> AsyncIterator[Provisioner]:
    running = Provisioner(base_env)
    running.start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def platform(base_env: dict[str, str], provisioner: Provisioner) -> AsyncIterator[Platform]:
    """The API alone: the provisioner is the `provisioner` fixture's, restartable."""
    running = Platform(base_env)
    await running.start_api()
    yield running
    with contextlib.suppress(asyncio.CancelledError):
        await running.stop()


@pytest.fixture(scope="module")
async def pooled(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> AsyncIterator[dict[str, Any]]:
    """A PostgreSQL 15 service linked to a project: the pooled and direct URLs of the link."""
    linked = await linked_postgres(api, NAME, f"{P}poolopsapp")
    service, project_id, context = linked["service"], linked["project_id"], linked["ssl"]
    urls: dict[str, Any] = {**linked, "admin": await credentials(api, service["id"])}
    conn = await asyncpg.connect(urls["pooled"], ssl=context)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS ticks (n int, at timestamptz)")
    finally:
        await conn.close()
    yield urls
    response = await api.delete(f"/api/external-services/{service['id']}/projects/{project_id}")
    assert response.status_code == 202, response.text
    response = await api.delete(f"/api/external-services/{service['id']}")
    assert response.status_code == 202, response.text

    async def gone() -> bool:
        return (await api.get(f"/api/external-services/{service['id']}")).status_code == 404

    await eventually(gone, 120, "the service to be deleted")


async def _held_through(
    pooled: dict[str, Any], label: str, operation: Callable[[], Awaitable[None]]
) -> Loop:
    """Run `operation` with a pooled client loop going; zero failed transactions."""
    loop = Loop(pooled["pooled"], pooled["ssl"], label)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(1)
        assert loop.ok > 10, loop
        started = time.monotonic()
        await operation()
        took_s = time.monotonic() - started
        await asyncio.sleep(1)
    finally:
        loop.stop.set()
        await asyncio.wait_for(task, 30)
    print(
        f"\n{label}: took {took_s:.1f} s; pooled: {loop.ok} ok, {len(loop.failures)} failed,"
        f" longest wait {loop.longest_s * 1000:.0f} ms"
    )
    assert loop.failures == [], (label, loop.failures[:3])
    return loop


async def _resources(api: httpx.AsyncClient, service_id: str, body: dict[str, Any]) -> None:
    response = await api.patch(f"/api/external-services/{service_id}/resources", json=body)
    assert response.status_code == 200, response.text
    await wait_converged(api, service_id)


async def _parameters(api: httpx.AsyncClient, service_id: str, body: dict[str, Any]) -> None:
    response = await api.patch(f"/api/external-services/{service_id}", json={"parameters": body})
    assert response.status_code == 202, response.text
    await wait_converged(api, service_id)


def _primary_id(client: docker.DockerClient) -> str:
    return str(client.containers.get(PRIMARY).id)


async def _show(pooled: dict[str, Any], setting: str) -> str:
    admin = pooled["admin"]["local_connection_url"].split("?")[0]
    conn = await asyncpg.connect(admin, ssl=pooled["ssl"])
    try:
        value: str = await conn.fetchval(f"SHOW {setting}")
        return value
    finally:
        await conn.close()


async def test_memory_cap_set_and_lifted(
    api: httpx.AsyncClient, pooled: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    service_id = pooled["service"]["id"]
    before = _primary_id(docker_client)

    async def operation() -> None:
        await _resources(api, service_id, {"memory_mb": 512})
        await _resources(api, service_id, {"memory_mb": None})

    await _held_through(pooled, "memory cap set and lifted", operation)
    assert _primary_id(docker_client) == before  # both live


async def test_cpu_cap_set_and_lifted(
    api: httpx.AsyncClient, pooled: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    service_id = pooled["service"]["id"]
    before = _primary_id(docker_client)

    async def operation() -> None:
        await _resources(api, service_id, {"cpus": 0.5})
        await _resources(api, service_id, {"cpus": None})

    await _held_through(pooled, "CPU cap set and lifted", operation)
    # The lift recreated the primary (Docker cannot unset NanoCpus): the pooler held it.
    assert _primary_id(docker_client) != before
    host_config = docker_client.containers.get(PRIMARY).attrs["HostConfig"]
    assert not host_config["NanoCpus"]


async def test_replica_added_and_removed(
    api: httpx.AsyncClient, pooled: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    service_id = pooled["service"]["id"]

    async def operation() -> None:
        await _parameters(api, service_id, {"replicas": 1})
        docker_client.containers.get(f"{PRIMARY}-replica-1")  # it was there
        await _parameters(api, service_id, {"replicas": 0})

    await _held_through(pooled, "replica added and removed", operation)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(f"{PRIMARY}-replica-1")


async def test_archive_mode_change(
    api: httpx.AsyncClient, pooled: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    """archive_mode follows the archive configuration on the primary's volume: its appearance
    and its removal each recreate the primary (a reconcile decides it)."""
    service_id = pooled["service"]["id"]
    assert await _show(pooled, "archive_mode") == "off"
    before = _primary_id(docker_client)
    folder = ARCHIVE_CONFIG.rsplit("/", 1)[0]

    def sh(script: str) -> None:
        code, output = docker_client.containers.get(PRIMARY).exec_run(["sh", "-c", script])
        assert code == 0, output

    async def on() -> None:
        sh(f"mkdir -p {folder} && echo '[global]' > {ARCHIVE_CONFIG}")
        await _parameters(api, service_id, {"replicas": 0})  # unchanged: a reconcile

    await _held_through(pooled, "archive_mode off → on", on)
    assert await _show(pooled, "archive_mode") == "on"
    middle = _primary_id(docker_client)
    assert middle != before

    async def off() -> None:
        sh(f"rm -f {ARCHIVE_CONFIG}")
        await _parameters(api, service_id, {"replicas": 0})

    await _held_through(pooled, "archive_mode on → off", off)
    assert await _show(pooled, "archive_mode") == "off"
    assert _primary_id(docker_client) != middle


@pytest.fixture
def minor_tag(docker_client: docker.DockerClient) -> Iterator[str]:
    image = docker_client.images.get("temps/postgres:15")
    assert image.tag("temps/postgres", MINOR_TAG)
    yield f"temps/postgres:{MINOR_TAG}"
    # Untagging only (the image keeps its other tags); a container using it may still exist
    # until the module's service is deleted.
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove(f"temps/postgres:{MINOR_TAG}", noprune=True)


async def test_minor_image_recreate_without_stop(
    api: httpx.AsyncClient,
    pooled: dict[str, Any],
    docker_client: docker.DockerClient,
    provisioner: Provisioner,
    minor_tag: str,
) -> None:
    """The operator points PostgreSQL 15 at another image (a minor update): the primary is
    recreated on it with no Stop, and the pooled clients never notice."""
    service_id = pooled["service"]["id"]
    before = _primary_id(docker_client)
    assert provisioner.settings is not None
    default = provisioner.settings.images
    images = {**default, "postgres": {**default["postgres"], "15": minor_tag}}

    def with_images(chosen: dict[str, dict[str, str]]) -> Callable[[], Awaitable[None]]:
        async def operation() -> None:
            await provisioner.stop()
            provisioner.start(images=chosen)
            await _parameters(api, service_id, {"replicas": 0})  # unchanged: a reconcile

        return operation

    await _held_through(pooled, "minor image update", with_images(images))
    container = docker_client.containers.get(PRIMARY)
    assert container.id != before
    assert container.attrs["Config"]["Image"] == minor_tag
    assert (await _show(pooled, "server_version")).startswith("15.")
    # And back to the default image (so the tag can go).
    await _held_through(pooled, "image back to the default", with_images(default))
    assert docker_client.containers.get(PRIMARY).attrs["Config"]["Image"] == "temps/postgres:15"
