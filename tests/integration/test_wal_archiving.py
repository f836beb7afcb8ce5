"""WAL archiving with pgBackRest, end to end on real parts: the gateway's request, the backup
worker's steps, the provisioner's recreate with archive_mode on, pgBackRest inside the
PostgreSQL container pushing WAL over HTTPS to a SeaweedFS store on the services' network under
the service's own prefix-limited identity, a first full backup. Then off, on again, and a
Stop → Start that keeps archiving on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import docker
import httpx
import pytest
from temps_shared.backups import pgbackrest
from temps_shared.engines.postgres import ARCHIVE_CONFIG

from tests.integration.backup_platform import pg_connect, running_platform
from tests.integration.conftest import Platform, forget_services
from tests.integration.wal_store import WalStore, wal_store
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENABLE_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def store(
    docker_client: docker.DockerClient, data_dir: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WalStore]:
    with wal_store(docker_client, data_dir, tmp_path_factory.mktemp("wal-store")) as running:
        yield running


@pytest.fixture(scope="module")
async def platform(
    base_env: dict[str, str], docker_client: docker.DockerClient, store: WalStore
) -> AsyncIterator[Platform]:
    async with running_platform({**base_env, **store.env()}) as running:
        yield running
    await forget_services(base_env["TEMPS_DATABASE_URL"], docker_client)


async def _create(api: httpx.AsyncClient, name: str, version: str) -> str:
    response = await api.post(
        "/api/external-services",
        json={
            "name": name,
            "service_type": "postgres",
            "version": version,
            "parameters": {"replicas": 0, "memory_mb": 256},
        },
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=180)
    return service_id


async def _archiving(api: httpx.AsyncClient, service_id: str, enabled: bool) -> dict[str, Any]:
    """Ask, and wait until the worker reports the end state."""
    response = await api.post(
        f"/api/external-services/{service_id}/wal-archiving", json={"enabled": enabled}
    )
    assert response.status_code == 202, response.text
    assert response.json()["state"] == ("enabling" if enabled else "disabling")
    wanted = "on" if enabled else "off"

    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (
            await api.get(f"/api/external-services/{service_id}/wal-archiving")
        ).json()
        if body["state"] == "failed":
            raise AssertionError(f"archiving failed: {body['reason']}")
        return body if body["state"] == wanted else None

    return await eventually(done, ENABLE_TIMEOUT_S, f"archiving to be {wanted}")


async def _window(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/external-services/{service_id}/recovery-window")
    assert response.status_code == 200, response.text
    return {
        k: datetime.fromisoformat(v) if v is not None else None for k, v in response.json().items()
    }


async def _settings(conn: asyncpg.Connection) -> tuple[str, str]:
    return await conn.fetchval("SHOW archive_mode"), await conn.fetchval("SHOW archive_command")


def _info(docker_client: docker.DockerClient, container: str, stanza: str) -> Any:
    """pgBackRest's own view of the stanza, asked inside the container as postgres."""
    result = docker_client.containers.get(container).exec_run(
        pgbackrest.command(stanza, "info", "--output=json"), user="postgres"
    )
    assert result.exit_code == 0, result.output
    info = pgbackrest.parse_info(result.output.decode(), stanza)
    assert info is not None
    return info


async def _archived_after_switch(conn: asyncpg.Connection) -> None:
    """A forced segment switch reaches the archive (the archiver's counter moves)."""
    before = await conn.fetchval("SELECT archived_count FROM pg_stat_archiver")
    await conn.execute("CREATE TABLE IF NOT EXISTS marks (at timestamptz DEFAULT now())")
    await conn.execute("INSERT INTO marks DEFAULT VALUES")
    await conn.execute("SELECT pg_switch_wal()")

    async def archived() -> bool:
        return bool(await conn.fetchval("SELECT archived_count FROM pg_stat_archiver") > before)

    await eventually(archived, 30, "the switched segment to be archived")
    assert await conn.fetchval("SELECT failed_count FROM pg_stat_archiver") == 0


@pytest.mark.parametrize("version", ["13", "15"])  # pgBackRest 2.33 and 2.45; 17 below
async def test_enable_archives_wal_under_the_service_prefix_and_takes_a_full_backup(
    api: httpx.AsyncClient, docker_client: docker.DockerClient, store: WalStore, version: str
) -> None:
    name = f"{P}wal{version}"
    service_id = await _create(api, name, version)
    container = f"temps-postgres-{name}"
    body = await _archiving(api, service_id, True)
    assert body["enabled"] is True
    assert body["step"] == "first full backup taken"
    window = await _window(api, service_id)
    assert window["earliest"] is not None
    assert window["latest"] is not None
    assert window["earliest"] <= window["latest"]
    conn = await pg_connect(await credentials(api, service_id))
    try:
        mode, command = await _settings(conn)
        assert mode == "on"
        assert command.startswith("timeout 60 pgbackrest")
        assert "archive-push" in command
        # The next segment lands in a later second than the window's end (S3 times are whole
        # seconds, and the end may be the first backup's end + 1 s).
        ahead = (window["latest"] - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(0.0, ahead) + 1.1)
        await _archived_after_switch(conn)
    finally:
        await conn.close()
    # The window's end advances as WAL arrives; its start stays at the first backup.
    advanced = await _window(api, service_id)
    assert advanced["earliest"] == window["earliest"]
    assert advanced["latest"] > window["latest"]
    info = _info(docker_client, container, name)
    assert [b.type for b in info.backups] == ["full"]
    # Everything lies under the service's own prefix; its key reaches nothing else.
    listed = store.client().list_objects_v2(Bucket=store.bucket, Prefix=f"pgbackrest/{service_id}/")
    assert listed.get("KeyCount", 0) > 0, listed
    config = docker_client.containers.get(container).exec_run(["cat", ARCHIVE_CONFIG]).output
    values = dict(line.split("=", 1) for line in config.decode().splitlines() if "=" in line)
    own = store.client(values["repo1-s3-key"], values["repo1-s3-key-secret"])
    with pytest.raises(Exception, match=r"AccessDenied|Forbidden|403"):
        own.list_objects_v2(Bucket=store.bucket)
    # No secret in the container's environment or command line.
    attrs = docker_client.containers.get(container).attrs["Config"]
    assert values["repo1-s3-key-secret"] not in json.dumps([attrs["Env"], attrs["Cmd"]])


async def test_disable_then_enable_again_converges_and_survives_stop_start(
    api: httpx.AsyncClient, docker_client: docker.DockerClient
) -> None:
    name = f"{P}wal17"
    service_id = await _create(api, name, "17")
    container = f"temps-postgres-{name}"
    await _archiving(api, service_id, True)
    off = await _archiving(api, service_id, False)
    assert off["enabled"] is False
    conn = await pg_connect(await credentials(api, service_id))
    try:
        assert (await _settings(conn))[0] == "off"
    finally:
        await conn.close()
    exists = docker_client.containers.get(container).exec_run(["test", "-e", ARCHIVE_CONFIG])
    assert exists.exit_code != 0, "the configuration (with the S3 key) stayed on the volume"
    await _archiving(api, service_id, True)
    # Stop → Start: the configuration on the volume turns archiving back on by itself.
    assert (await api.post(f"/api/external-services/{service_id}/stop")).status_code == 202
    await wait_status(api, service_id, "stopped", timeout_s=120)
    assert (await api.post(f"/api/external-services/{service_id}/start")).status_code == 202
    await wait_status(api, service_id, "operational", timeout_s=180)
    conn = await pg_connect(await credentials(api, service_id))
    try:
        assert (await _settings(conn))[0] == "on"
        await _archived_after_switch(conn)
    finally:
        await conn.close()
    assert len(_info(docker_client, container, name).backups) >= 1


async def test_archiving_is_refused_for_other_engines_and_answers_its_state(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post(
        "/api/external-services", json={"name": f"{P}walredis", "service_type": "redis"}
    )
    assert response.status_code == 202, response.text
    redis_id = response.json()["id"]
    refused = await api.post(
        f"/api/external-services/{redis_id}/wal-archiving", json={"enabled": True}
    )
    assert refused.status_code == 422, refused.text
    bad = await api.post(f"/api/external-services/{redis_id}/wal-archiving", json={"enabled": 1})
    assert bad.status_code == 422, bad.text


async def _restore_ended(api: httpx.AsyncClient, answer: dict[str, Any]) -> dict[str, Any]:
    new_id, restore_id = answer["new_service"]["id"], answer["id"]

    async def ended() -> dict[str, Any] | None:
        response = await api.get(f"/api/external-services/{new_id}/restores/{restore_id}")
        body: dict[str, Any] = response.json()
        return body if body.get("state") in ("completed", "failed") else None

    return await eventually(ended, 300, "the point-in-time restore to end")


async def test_restore_to_a_time_brings_what_was_committed_before_it_and_nothing_after(
    api: httpx.AsyncClient,
) -> None:
    """Write A, note T, write B; restored to T (as a new service): A present, B absent."""
    name = f"{P}walpitr"
    service_id = await _create(api, name, "15")
    await _archiving(api, service_id, True)
    conn = await pg_connect(await credentials(api, service_id))
    try:
        await conn.execute("CREATE TABLE notes (body text)")
        await conn.execute("INSERT INTO notes VALUES ('A')")
        target = await conn.fetchval("SELECT clock_timestamp()")
        await asyncio.sleep(1.5)
        await conn.execute("INSERT INTO notes VALUES ('B')")
        await _archived_after_switch(conn)
    finally:
        await conn.close()
    window = await _window(api, service_id)
    # Outside the window: 422 naming it, nothing created.
    early = await api.post(
        f"/api/external-services/{service_id}/restore",
        json={"target_time": "2020-01-01T00:00:00Z", "as_new_service": f"{P}walearly"},
    )
    assert early.status_code == 422, early.text
    assert early.json()["error"]["details"]["earliest"] == window["earliest"].isoformat()
    assert (await api.get("/api/external-services")).text.count(f"{P}walearly") == 0
    bad_name = await api.post(
        f"/api/external-services/{service_id}/restore", json={"as_new_service": "Not A Name"}
    )
    assert bad_name.status_code == 422, bad_name.text
    response = await api.post(
        f"/api/external-services/{service_id}/restore",
        json={"target_time": target.isoformat(), "as_new_service": f"{P}walpitr2"},
    )
    assert response.status_code == 202, response.text
    ended = await _restore_ended(api, response.json())
    assert ended["state"] == "completed", ended
    new_id = response.json()["new_service"]["id"]
    await wait_status(api, new_id, "operational", timeout_s=120)
    restored = await pg_connect(await credentials(api, new_id))
    try:
        assert [r["body"] for r in await restored.fetch("SELECT body FROM notes")] == ["A"]
        assert not await restored.fetchval("SELECT pg_is_in_recovery()")
        assert await restored.fetchval("SHOW restore_command") == ""  # reset after promotion
    finally:
        await restored.close()
