"""A platform whose gateway and backup worker share a real S3 backup store (SeaweedFS): the
gateway reads it for downloads, the worker writes and restores. Helpers the backup download,
restore-as-new-service and `temps backup` tests share."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx
import pytest
from temps_backup.settings import BackupSettings
from temps_shared.bus.credentials import ServerLayout, ensure_bus_files, server_dir
from testcontainers.community.postgres import PostgresContainer

from tests.integration.backup_store import SeaweedStore, running_backup_worker, seaweedfs_store
from tests.integration.conftest import Platform, forget_services
from tests.support import RUN_PORT_BASE, TEST_LABEL, eventually, free_port, wait_status

BUCKET = "temps-backups"


def store_env(store: SeaweedStore, bucket: str = BUCKET) -> dict[str, str]:
    return {
        "TEMPS_BACKUP_STORE_ENDPOINT": store.endpoint,
        "TEMPS_BACKUP_STORE_ACCESS_KEY": store.access_key,
        "TEMPS_BACKUP_STORE_SECRET_KEY": store.secret_key,
        "TEMPS_BACKUP_BUCKET": bucket,
    }


@contextlib.asynccontextmanager
async def running_platform(env: dict[str, str]) -> AsyncIterator[Platform]:
    """API, provisioner and backup worker on `env` (which names the backup store)."""
    platform = Platform(env)
    await platform.start_api()
    await platform.start_provisioner()
    values = {k.removeprefix("TEMPS_").lower(): v for k, v in env.items()}
    try:
        async with running_backup_worker(BackupSettings(**values, backup_progress_s=0.5)):
            yield platform
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await platform.stop()


@pytest.fixture(scope="module", name="store")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedStore]:
    """A module's own backup store (import with `platform_with_store` to use it)."""
    with seaweedfs_store(tmp_path_factory.mktemp("backup-store")) as running:
        yield running


@pytest.fixture(scope="module", name="platform")
async def platform_with_store(
    base_env: dict[str, str], docker_client: docker.DockerClient, store: SeaweedStore
) -> AsyncIterator[Platform]:
    """The `platform` fixture with a backup worker and the module's store; the module's
    services go with it, as with conftest's."""
    async with running_platform({**base_env, **store_env(store)}) as running:
        yield running
    await forget_services(base_env["TEMPS_DATABASE_URL"], docker_client)


async def create_service(api: httpx.AsyncClient, name: str, service_type: str, **extra: Any) -> str:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": service_type, **extra}
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=180)
    return service_id


async def backup_entry(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()
    return entry


async def take_backup(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    """Ask for a backup and wait (bounded) until it completed."""
    response = await api.post(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]

    async def done() -> dict[str, Any] | None:
        entry = await backup_entry(api, service_id, backup_id)
        assert entry["state"] != "failed", entry["reason"]
        return entry if entry["state"] == "completed" else None

    return await eventually(done, 180, f"backup {backup_id} to complete", interval_s=0.5)


async def restore_ended(
    api: httpx.AsyncClient, service_id: str, backup_id: str, restore_id: str, timeout_s: float
) -> dict[str, Any]:
    """The backup's restore record once it ended (either way)."""

    async def ended() -> dict[str, Any] | None:
        restore = (await backup_entry(api, service_id, backup_id))["restore"]
        assert restore is not None
        assert restore["id"] == restore_id
        return dict(restore) if restore["state"] in ("completed", "failed") else None

    return await eventually(ended, timeout_s, f"restore {restore_id} to end", interval_s=0.5)


async def pg_connect(creds: dict[str, Any], database: str | None = None) -> asyncpg.Connection:
    context = ssl.create_default_context(cadata=creds["ca_certificate"])
    url = creds["local_connection_url"].split("?")[0]
    if database is not None:
        url = url.rsplit("/", 1)[0] + f"/{database}"
    return await asyncpg.connect(url, ssl=context)


def copy_master_key(source: Path, target: Path) -> None:
    """A fresh installation's data dir holding only the master key the user kept."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = target / "encryption_key"
    key.write_text((source / "encryption_key").read_text())
    key.chmod(0o600)


@contextlib.contextmanager
def fresh_control_plane(
    workdir: Path, original_data_dir: Path
) -> Iterator[tuple[dict[str, str], str]]:
    """What a freshly installed platform starts from: its own control-plane database, its own
    NATS (with its own bus credentials) and a data dir holding only the master key the user
    kept. Yields the settings env (without the backup store) and its database URL."""
    data_dir = workdir / "data"
    copy_master_key(original_data_dir, data_dir)
    port = free_port()
    layout = ServerLayout(
        listen=f"127.0.0.1:{port}",
        store_dir=str(workdir / "jetstream"),
        files_dir=str(server_dir(data_dir)),
    )
    ensure_bus_files(data_dir, layout)
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    nats = subprocess.Popen(
        [binary, "-c", str(server_dir(data_dir) / "nats-server.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = PostgresContainer(
        "temps/postgres:15",
        username="temps",
        password=secrets.token_hex(16),
        dbname="temps",
        driver=None,
    ).with_kwargs(labels={TEST_LABEL: "control-plane-fresh"})
    database.ports["5432"] = ("127.0.0.1", free_port())
    try:
        with database:
            url = database.get_connection_url()
            yield (
                {
                    "TEMPS_DATABASE_URL": url,
                    "TEMPS_NATS_URL": f"tls://127.0.0.1:{port}",
                    "TEMPS_DATA_DIR": str(data_dir),
                    "TEMPS_SERVICE_ADDRESSING": "loopback",
                    # Apart from the first installation's (each picks at random in its own).
                    "TEMPS_LOCAL_PORT_RANGE": f"{RUN_PORT_BASE + 900}-{RUN_PORT_BASE + 999}",
                    "TEMPS_COMMAND_ACK_WAIT_S": "5",
                    "TEMPS_LOG_LEVEL": "WARNING",
                    "TEMPS_RESYNC_PERIOD_S": "3600",
                    "TEMPS_RESYNC_ON_DOWN": "false",
                },
                url,
            )
    finally:
        nats.terminate()
        nats.wait(timeout=10)
