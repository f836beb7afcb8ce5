"""Real parts for integration tests: a nats-server process, a control-plane PostgreSQL container
(testcontainers, the project's own image), the local Docker engine, and the platform's services
started in-process (or as subprocesses where a test kills them)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx
import pytest
import uvicorn
from nats.aio.client import Client
from temps_api.audit import uvicorn_proxy_options
from temps_api.main import create_app
from temps_api.settings import ApiSettings
from temps_monitor.main import serve as serve_monitor
from temps_monitor.settings import MonitorSettings
from temps_provisioner.main import serve
from temps_provisioner.settings import ProvisionerSettings
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.credentials import ServerLayout, ensure_bus_files, server_dir
from temps_shared.messages import Role
from temps_shared.store.migrations import apply_migrations
from temps_shared.store.pool import create_pool
from testcontainers.community.postgres import PostgresContainer

from tests.support import (
    RUN_PORT_RANGE,
    RUN_PREFIX,
    TEST_LABEL,
    docker_for_tests,
    eventually,
    free_port,
    remove_test_services,
)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    with docker_for_tests(RUN_PREFIX) as client:
        yield client


def _nats_server(args: list[str]) -> subprocess.Popen[bytes]:
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    return subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[str]:
    """The platform's NATS as `make up` configures it: TLS from the installation CA, a user per
    role with its permissions (credentials in `data_dir`)."""
    port = free_port()
    layout = ServerLayout(
        listen=f"127.0.0.1:{port}",
        store_dir=str(tmp_path_factory.mktemp("jetstream")),
        files_dir=str(server_dir(data_dir)),
    )
    ensure_bus_files(data_dir, layout)
    proc = _nats_server(["-c", str(server_dir(data_dir) / "nats-server.conf")])
    yield f"tls://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def bare_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS without authentication, for the delivery-rule tests on private streams."""
    port = free_port()
    store = tmp_path_factory.mktemp("jetstream-bare")
    proc = _nats_server(["-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)])
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def database_url(docker_client: docker.DockerClient) -> Iterator[str]:
    """The control-plane database: on loopback only, with a password of this session's."""
    password = secrets.token_hex(16)
    container = PostgresContainer(
        "temps/postgres:15", username="temps", password=password, dbname="temps", driver=None
    ).with_kwargs(labels={TEST_LABEL: "control-plane"})
    container.ports["5432"] = ("127.0.0.1", free_port())  # docker's (address, port) binding
    with container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("temps-data")


@pytest.fixture(scope="session")
def base_env(database_url: str, nats_url: str, data_dir: Path) -> dict[str, str]:
    """The settings every in-process or subprocess service of the tests shares."""
    return {
        "TEMPS_DATABASE_URL": database_url,
        "TEMPS_NATS_URL": nats_url,
        "TEMPS_DATA_DIR": str(data_dir),
        "TEMPS_SERVICE_ADDRESSING": "loopback",
        "TEMPS_LOCAL_PORT_RANGE": "{}-{}".format(*RUN_PORT_RANGE),
        "TEMPS_COMMAND_ACK_WAIT_S": "5",
        "TEMPS_LOG_LEVEL": "WARNING",
        # Self-healing would undo the faults these tests make on purpose; test_resync.py and
        # the fault suite turn it on.
        "TEMPS_RESYNC_PERIOD_S": "3600",
        "TEMPS_RESYNC_ON_DOWN": "false",
        # No scheduled backups, retention or deadline rounds unless a test asks for them
        # (test_backup_schedule.py): the first round comes one period after start.
        "TEMPS_BACKUP_SCHEDULER_PERIOD_S": "3600",
    }


def _settings_kwargs(env: dict[str, str]) -> dict[str, Any]:
    return {k.removeprefix("TEMPS_").lower(): v for k, v in env.items()}


class Platform:
    """The API and the provisioner, in this process, on the real NATS/PostgreSQL/Docker."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.base_url = ""

    def api_settings(self, **overrides: Any) -> ApiSettings:
        return ApiSettings(**_settings_kwargs(self.env), **overrides)

    async def start_api(self, **overrides: Any) -> str:
        port = free_port()
        settings = self.api_settings(**overrides)
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            **uvicorn_proxy_options(settings.api_trusted_proxies),  # as `temps-api` runs
        )
        self._server = uvicorn.Server(config)
        self._tasks.append(asyncio.create_task(self._server.serve()))
        server = self._server
        await eventually(lambda: _true(server.started), 60, "the API to start")
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop_api(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    async def start_provisioner(self) -> None:
        settings = ProvisionerSettings(**_settings_kwargs(self.env))
        self._tasks.append(asyncio.create_task(serve(settings, self._stop)))

    async def start_monitor(self, **overrides: Any) -> MonitorSettings:
        """A health monitor replica (several may run); `overrides` are MonitorSettings fields."""
        settings = MonitorSettings(**{**_settings_kwargs(self.env), **overrides})
        self._tasks.append(asyncio.create_task(serve_monitor(settings, self._stop)))
        return settings

    async def stop(self) -> None:
        self._stop.set()
        await self.stop_api()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
            for task in self._tasks:
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]

    async def bus(self, role: Role) -> Client:
        """A NATS connection as `role`, as that service connects (close it when done)."""
        data_dir = Path(self.env["TEMPS_DATA_DIR"])
        return await connect_nats(self.env["TEMPS_NATS_URL"], role, data_dir, name=f"test-{role}")

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        token = token or admin_token(Path(self.env["TEMPS_DATA_DIR"]))
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            # uvicorn closes idle connections after 5 s; expire ours first, so a request never
            # goes out on a connection the server is closing.
            limits=httpx.Limits(keepalive_expiry=1),
        )


async def _true(value: bool) -> bool:
    return value


def admin_token(data_dir: Path) -> str:
    return (data_dir / "admin_token").read_text().strip()


@pytest.fixture(scope="module")
async def platform(
    base_env: dict[str, str], docker_client: docker.DockerClient
) -> AsyncIterator[Platform]:
    running = Platform(base_env)
    await running.start_api()
    await running.start_provisioner()
    yield running
    with contextlib.suppress(asyncio.CancelledError):
        await running.stop()
    await forget_services(base_env["TEMPS_DATABASE_URL"], docker_client)


async def forget_services(database_url: str, client: docker.DockerClient) -> None:
    """A module's services go with it: purged in the control plane (later modules' monitors
    and workers leave them alone) and their containers and volumes removed (idle databases,
    replicas and poolers of earlier modules would otherwise slow every later one down)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE services SET purged = true, desired_state = 'deleted' WHERE NOT purged"
        )
    finally:
        await conn.close()
    await asyncio.to_thread(
        remove_test_services, client, re.compile(rf"^temps-[a-z0-9]+-{re.escape(RUN_PREFIX)}")
    )


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Any]:
    """A control-plane connection inside a transaction rolled back at the end: tests of the
    projections' SQL on rows never committed."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    await apply_migrations(pool)
    async with pool.acquire() as connection:
        tx = connection.transaction()
        await tx.start()
        try:
            yield connection
        finally:
            await tx.rollback()
    await pool.close()


@pytest.fixture(scope="module")
async def api(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with platform.client() as client:
        yield client
