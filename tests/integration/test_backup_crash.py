"""A backup worker SIGKILLed in the middle of a backup leaves no backup listed as complete and no
manifest in the store; the redelivered command completes it with a consistent artifact."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.backup_store import SeaweedStore, seaweedfs_store
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUCKET = "temps-backups"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedStore]:
    with seaweedfs_store(tmp_path_factory.mktemp("backup-store")) as running:
        yield running


def _start_worker(env: dict[str, str], store: SeaweedStore, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "temps_backup"],
            env={
                **os.environ,
                **env,
                "TEMPS_BACKUP_STORE_ENDPOINT": store.endpoint,
                "TEMPS_BACKUP_STORE_ACCESS_KEY": store.access_key,
                "TEMPS_BACKUP_STORE_SECRET_KEY": store.secret_key,
                "TEMPS_BACKUP_PROGRESS_S": "0.2",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _entry(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/external-services/{service_id}/backups")
    (entry,) = [b for b in response.json()["backups"] if b["id"] == backup_id]
    return dict(entry)


def _manifests(store: SeaweedStore, backup_id: str) -> list[str]:
    listed = store.client().list_objects_v2(Bucket=BUCKET, Prefix="external_services/redis/")
    return [
        o["Key"]
        for o in listed.get("Contents", [])
        if f"/{backup_id}/" in o["Key"] and o["Key"].endswith("manifest.json")
    ]


async def test_a_killed_worker_leaves_no_complete_backup_and_the_retry_completes(
    api: httpx.AsyncClient, store: SeaweedStore, base_env: dict[str, str], tmp_path: Path
) -> None:
    response = await api.post(
        "/api/external-services", json={"name": f"{P}bkk", "service_type": "redis"}
    )
    assert response.status_code == 202, response.text
    service_id = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=120)
    creds = await credentials(api, service_id)
    client = aioredis.Redis.from_url(creds["local_connection_url"], socket_timeout=60)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(200):  # incompressible: the backup takes seconds, not milliseconds
                pipe.set(f"blob:{i}", os.urandom(MB))
            await pipe.execute()
    finally:
        await client.aclose()

    first = _start_worker(base_env, store, tmp_path / "worker-1.log")
    try:
        response = await api.post(f"/api/external-services/{service_id}/backups")
        assert response.status_code == 202, response.text
        backup_id = response.json()["id"]

        async def running() -> dict[str, Any] | None:
            entry = await _entry(api, service_id, backup_id)
            assert entry["state"] in ("requested", "running"), entry
            return entry if entry["state"] == "running" else None

        await eventually(running, 60, "the backup to start", interval_s=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        _stop(first)
    entry = await _entry(api, service_id, backup_id)
    assert entry["state"] == "running", entry
    assert _manifests(store, backup_id) == []

    second = _start_worker(base_env, store, tmp_path / "worker-2.log")
    progress: list[int] = []  # bytes so far, as the catalogue showed them while running
    try:

        async def completed() -> dict[str, Any] | None:
            entry = await _entry(api, service_id, backup_id)
            assert entry["state"] != "failed", entry["reason"]
            if entry["state"] == "running" and entry["bytes_done"]:
                progress.append(entry["bytes_done"])
            return entry if entry["state"] == "completed" else None

        # The command comes back once its ack wait (30 s) ran out.
        done = await eventually(
            completed, 120, "the redelivered backup to complete", interval_s=0.05
        )
    finally:
        _stop(second)
    (manifest_key,) = _manifests(store, backup_id)
    s3 = store.client()
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    (artifact,) = manifest["artifacts"]
    folder = manifest_key.rsplit("/", 1)[0]
    body = s3.get_object(Bucket=BUCKET, Key=f"{folder}/{artifact['name']}")["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(MB), b""):
        digest.update(chunk)
    assert digest.hexdigest() == artifact["sha256"]
    assert done["size_bytes"] == artifact["size"] > 200 * MB
    # Progress (BackupProgress → catalogue) was visible during the upload, and only grew.
    assert progress, "no progress was shown while the backup ran"
    assert progress == sorted(progress)
    assert progress[-1] <= done["size_bytes"]
    assert (await api.delete(f"/api/external-services/{service_id}")).status_code == 202
