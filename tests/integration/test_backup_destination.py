"""PUT/GET/DELETE /api/backup-destination against real stores: the built-in one (SeaweedFS, the
backup worker's default) and a second SeaweedFS serving HTTPS with its own CA, an owner and a
read-only identity. A destination is accepted only after a probe write/read/delete; new
backups go there while older ones are restored from where they were written. Real NATS,
PostgreSQL, Docker, S3."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import boto3
import httpx
import pytest
import redis.asyncio as aioredis
from botocore.config import Config
from temps_shared.backups.destination import (
    Destination,
    destination_secret_aad,
    self_backup_reason,
)
from temps_shared.crypto import KeyRing
from temps_shared.store.certificate_authority import CA_CERT_FILE
from temps_shared.tls import create_ca, issue_server_certificate

from tests.integration.backup_store import SeaweedStore, store_with_worker
from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, free_port, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUILTIN_BUCKET = "temps-backups"
BUCKET = "offsite-backups"
READY_WAIT_S = 60.0
# A dead or silent endpoint is answered within about this long (the check's deadline, 15 s).
ANSWER_WITHIN_S = 17.0


@dataclass(frozen=True)
class TlsStore:
    """A second SeaweedFS, HTTPS only from outside its process, with its own CA."""

    endpoint: str
    ca_pem: str
    ca_file: Path
    owner: tuple[str, str]  # access key, secret key: everything
    reader: tuple[str, str]  # Read and List on BUCKET only

    def client(self, key: tuple[str, str] | None = None) -> Any:
        access, secret = key or self.owner
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            verify=str(self.ca_file),
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]


@contextlib.contextmanager
def tls_seaweedfs(directory: Path) -> Iterator[TlsStore]:
    ca = create_ca("destination test CA")
    server = issue_server_certificate(ca, ["localhost"], ["127.0.0.1"])
    (directory / "server.pem").write_text(server.cert_pem + ca.cert_pem)
    (directory / "server.key").write_text(server.key_pem)
    (directory / "ca.pem").write_text(ca.cert_pem)
    owner = ("dest-owner", secrets.token_hex(16))
    reader = ("dest-reader", secrets.token_hex(16))
    identities = [
        {"name": "owner", "credentials": [{"accessKey": owner[0], "secretKey": owner[1]}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader", "credentials": [{"accessKey": reader[0], "secretKey": reader[1]}],
         "actions": [f"Read:{BUCKET}", f"List:{BUCKET}"]},
    ]  # fmt: skip
    (directory / "identities.json").write_text(json.dumps({"identities": identities}))
    (directory / "data").mkdir()
    https_port = free_port()
    ports = {
        f"-{flag}": str(free_port())
        for flag in (
            "s3.port", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
            "debug.port", "s3.debug.port", "webdav.port",
        )
    }  # fmt: skip
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    argv = [
        weed, "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={directory / 'identities.json'}", f"-s3.port.https={https_port}",
        f"-s3.cert.file={directory / 'server.pem'}", f"-s3.key.file={directory / 'server.key'}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    log = (directory / "weed.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    store = TlsStore(
        f"https://127.0.0.1:{https_port}", ca.cert_pem, directory / "ca.pem", owner, reader
    )
    try:
        deadline = time.monotonic() + READY_WAIT_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"weed exited: {(directory / 'weed.log').read_text()[-2000:]}")
            try:
                store.client().create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
        yield store
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@pytest.fixture(scope="module")
async def builtin(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SeaweedStore]:
    """The built-in store and a backup worker using it, for this module."""
    async with store_with_worker(platform.env, tmp_path_factory.mktemp("builtin-store")) as (
        running,
        _,
    ):
        yield running


@pytest.fixture(scope="module")
def offsite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStore]:
    with tls_seaweedfs(tmp_path_factory.mktemp("offsite-store")) as running:
        yield running


@pytest.fixture(scope="module")
async def db(platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(platform.env["TEMPS_DATABASE_URL"])
    yield conn
    await conn.close()


def _body(store: TlsStore, key: tuple[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    access, secret = key or store.owner
    return {
        "endpoint": store.endpoint,
        "bucket": BUCKET,
        "access_key_id": access,
        "secret_access_key": secret,
        "ca_pem": store.ca_pem,
        **extra,
    }


async def _audit_text(db: asyncpg.Connection) -> str:
    rows = await db.fetch("SELECT action, target, details::text AS details FROM audit_log")
    return json.dumps([dict(r) for r in rows])


async def _create(api: httpx.AsyncClient, name: str, service_type: str) -> str:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": service_type}
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=120)
    return service_id


async def _backup(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    response = await api.post(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]

    async def done() -> dict[str, Any] | None:
        entry = (await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")).json()
        assert entry["state"] != "failed", entry["reason"]
        return dict(entry) if entry["state"] == "completed" else None

    return await eventually(done, 120, f"backup {backup_id} to complete")


async def _restore(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    response = await api.post(f"/api/external-services/{service_id}/backups/{backup_id}/restore")
    assert response.status_code == 202, response.text

    async def ended() -> dict[str, Any] | None:
        entry = (await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")).json()
        restore = entry["restore"]
        return dict(restore) if restore["state"] in ("completed", "failed") else None

    return await eventually(ended, 120, f"restore of {backup_id} to end")


async def _redis_value(api: httpx.AsyncClient, service_id: str, value: str | None = None) -> Any:
    """Set `key` to `value` (when given) and return what it holds."""
    creds = await credentials(api, service_id)
    client = aioredis.Redis.from_url(
        creds["local_connection_url"], decode_responses=True, socket_timeout=30
    )
    try:
        if value is not None:
            await client.set("key", value)
        return await client.get("key")
    finally:
        await client.aclose()


async def test_backups_go_to_the_built_in_store_until_a_destination_is_set(
    api: httpx.AsyncClient, builtin: SeaweedStore
) -> None:
    response = await api.get("/api/backup-destination")
    assert response.status_code == 200, response.text
    assert response.json()["built_in"] is True
    assert response.json()["bucket"] == BUILTIN_BUCKET


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


async def test_a_destination_failing_the_check_is_refused_naming_the_step(
    api: httpx.AsyncClient, offsite: TlsStore, db: asyncpg.Connection, silent_port: int
) -> None:
    closed = free_port()
    wrong_secret = ("dest-owner", "not-the-secret-" + secrets.token_hex(8))
    cases = [
        # (what, body, failed step, what the store's error says)
        ("wrong secret", _body(offsite, wrong_secret), "write",
         "access denied (SignatureDoesNotMatch)"),
        ("read-only identity", _body(offsite, offsite.reader), "write",
         "access denied (AccessDenied)"),
        ("untrusted certificate", _body(offsite, ca_pem=None), "write",
         "TLS verification failed"),
        ("dead endpoint", _body(offsite, endpoint=f"http://127.0.0.1:{closed}"), "write",
         "could not connect"),
        ("silent endpoint", _body(offsite, endpoint=f"http://127.0.0.1:{silent_port}"), None, ""),
    ]  # fmt: skip
    before = (await api.get("/api/backup-destination")).json()
    for what, body, step, error in cases:
        started = time.monotonic()
        response = await api.put("/api/backup-destination", json=body)
        took = time.monotonic() - started
        assert response.status_code == 422, (what, response.text)
        problem = response.json()["error"]
        assert problem["code"] == "destination_check_failed", (what, problem)
        if step is not None:
            assert problem["details"]["step"] == step, (what, problem)
        else:  # a read that never ends: the client's read timeout or the check's deadline
            assert problem["details"]["step"] in ("write", "timeout"), (what, problem)
        assert error in problem["details"]["error"], (what, problem)
        # Categories of our own: none of the remote server's or the TLS library's text.
        for remote in ("signature we calculated", "Access Denied", "CERTIFICATE_VERIFY", "Errno"):
            assert remote not in response.text, (what, response.text)
        assert problem["details"]["step"] in problem["message"]
        assert body["secret_access_key"] not in response.text
        assert took < ANSWER_WITHIN_S, (what, took)
        print(f"{what}: 422 in {took:.2f} s, step {problem['details']['step']}")
    # Nothing stored, nothing changed, nothing audited, no probe left behind.
    assert (await api.get("/api/backup-destination")).json() == before
    assert await db.fetchval("SELECT count(*) FROM backup_destinations") == 0
    assert "backup_destination." not in await _audit_text(db)
    assert offsite.keys(".temps-probe/") == []


async def test_a_platform_s3_service_is_refused_as_destination(
    api: httpx.AsyncClient, platform: Platform, db: asyncpg.Connection
) -> None:
    service_id = await _create(api, f"{P}dst3", "s3")
    creds = await credentials(api, service_id)
    ca_pem = (Path(platform.env["TEMPS_DATA_DIR"]) / CA_CERT_FILE).read_text()
    installation_ca = await db.fetchval("SELECT cert_pem FROM certificate_authority")
    for endpoint in (creds["local_endpoint"], creds["endpoint"]):
        response = await api.put(
            "/api/backup-destination",
            json={
                "endpoint": endpoint,
                "bucket": "anything",
                "access_key_id": creds["access_key"],
                "secret_access_key": creds["secret_key"],
                "ca_pem": installation_ca or ca_pem,
            },
        )
        assert response.status_code == 422, (endpoint, response.text)
        problem = response.json()["error"]
        assert problem["code"] == "destination_is_platform_service", problem
        assert f"{P}dst3" in problem["message"]
        assert problem["details"]["services"] == [service_id]
    assert await db.fetchval("SELECT count(*) FROM backup_destinations") == 0

    # What the backup worker asks before writing: a backup of this service into it is refused.
    into_itself = Destination(
        endpoint=creds["local_endpoint"], bucket="b", access_key_id="k", secret_access_key="s"
    )
    reason = await self_backup_reason(db, into_itself, UUID(service_id))
    assert reason is not None
    assert "itself" in reason
    elsewhere = Destination(
        endpoint="https://s3.example.com", bucket="b", access_key_id="k", secret_access_key="s"
    )
    assert await self_backup_reason(db, elsewhere, UUID(service_id)) is None


async def test_new_backups_go_to_the_destination_and_old_ones_stay_readable(
    api: httpx.AsyncClient,
    builtin: SeaweedStore,
    offsite: TlsStore,
    db: asyncpg.Connection,
    data_dir: Path,
) -> None:
    name = f"{P}dstr"
    service_id = await _create(api, name, "redis")
    assert await _redis_value(api, service_id, "before the switch") == "before the switch"
    old = await _backup(api, service_id)
    assert await db.fetchval(
        "SELECT destination_id FROM backups WHERE backup_id = $1", UUID(old["id"])
    ) is None  # fmt: skip

    secret = offsite.owner[1]
    response = await api.put("/api/backup-destination", json=_body(offsite))
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["built_in"] is False
    assert (shown["endpoint"], shown["bucket"], shown["access_key_id"]) == (
        offsite.endpoint, BUCKET, offsite.owner[0],
    )  # fmt: skip
    assert secret not in response.text
    assert "secret_access_key" not in shown
    got = await api.get("/api/backup-destination")
    assert got.json() == shown
    assert secret not in got.text
    # At rest: encrypted with the master key, bound to the row.
    row = await db.fetchrow("SELECT * FROM backup_destinations WHERE active")
    assert row is not None
    assert str(row["id"]) == shown["id"]
    assert secret not in row["secret_ciphertext"]
    keyring = KeyRing.from_data_dir(data_dir)
    plain = keyring.decrypt(row["secret_ciphertext"], destination_secret_aad(row["id"]))
    assert plain.decode() == secret
    audit = await _audit_text(db)
    assert "backup_destination.set" in audit
    assert secret not in audit

    assert await _redis_value(api, service_id, "after the switch") == "after the switch"
    new = await _backup(api, service_id)
    assert await db.fetchval(
        "SELECT destination_id FROM backups WHERE backup_id = $1", UUID(new["id"])
    ) == row["id"]  # fmt: skip
    offsite_keys = offsite.keys(f"external_services/redis/{name}/")
    assert any(k.endswith(f"/{new['id']}/manifest.json") for k in offsite_keys), offsite_keys
    assert not any(old["id"] in k for k in offsite_keys)
    listed = builtin.client().list_objects_v2(
        Bucket=BUILTIN_BUCKET, Prefix=f"external_services/redis/{name}/"
    )
    builtin_keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(k.endswith(f"/{old['id']}/manifest.json") for k in builtin_keys), builtin_keys
    assert not any(new["id"] in k for k in builtin_keys)
    assert offsite.keys(".temps-probe/") == []  # the check cleaned up after itself

    # The older backup is read from the built-in store, the newer from the destination.
    restored = await _restore(api, service_id, old["id"])
    assert restored["state"] == "completed", restored["reason"]
    assert await _redis_value(api, service_id) == "before the switch"
    restored = await _restore(api, service_id, new["id"])
    assert restored["state"] == "completed", restored["reason"]
    assert await _redis_value(api, service_id) == "after the switch"

    # Back to the built-in store; the row stays (the newer backup names it).
    response = await api.delete("/api/backup-destination")
    assert response.status_code == 200, response.text
    assert response.json()["built_in"] is True
    assert (await api.get("/api/backup-destination")).json()["built_in"] is True
    assert await db.fetchval(
        "SELECT active FROM backup_destinations WHERE id = $1", row["id"]
    ) is False  # fmt: skip
    audit = await _audit_text(db)
    assert "backup_destination.reset" in audit
    assert secret not in audit
    latest = await _backup(api, service_id)
    assert await db.fetchval(
        "SELECT destination_id FROM backups WHERE backup_id = $1", UUID(latest["id"])
    ) is None  # fmt: skip


async def test_only_an_administrator_changes_the_destination(
    api: httpx.AsyncClient, offsite: TlsStore, db: asyncpg.Connection
) -> None:
    """`backups:write` is not enough: the check dials any endpoint from the gateway, and every
    later backup goes where the destination says."""
    made = await api.post(
        "/api/tokens",
        json={"name": "dest-backups-writer", "permissions": ["backups:read", "backups:write"]},
    )
    assert made.status_code == 201, made.text
    headers = {"Authorization": f"Bearer {made.json()['token']}"}
    before = (await api.get("/api/backup-destination")).json()
    put = await api.put("/api/backup-destination", json=_body(offsite), headers=headers)
    assert put.status_code == 403, put.text
    assert put.json()["error"]["details"]["required"] == "admin"
    delete = await api.delete("/api/backup-destination", headers=headers)
    assert delete.status_code == 403, delete.text
    assert (await api.get("/api/backup-destination", headers=headers)).json() == before
    assert offsite.keys(".temps-probe/") == []
    await api.delete(f"/api/tokens/{made.json()['id']}")
