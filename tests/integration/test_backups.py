"""Backups end to end (issue 11, first slice): the API asks, the backup worker dumps inside the
service's container, compresses, encrypts (age) and uploads to a real S3 (SeaweedFS); a restore
checks every artifact before it changes anything. Real NATS, PostgreSQL, Docker, S3."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import zstandard
from temps_shared.backups.identity import backup_identity
from temps_shared.crypto import load_or_create_master_key

from tests.integration.backup_store import SeaweedStore, store_with_worker
from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUCKET = "temps-backups"


@pytest.fixture(scope="module")
async def store(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SeaweedStore]:
    """The backup store and a backup worker using it, for this module."""
    async with store_with_worker(platform.env, tmp_path_factory.mktemp("backup-store")) as (
        running,
        _,
    ):
        yield running


async def _create(api: httpx.AsyncClient, name: str, service_type: str, **extra: Any) -> str:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": service_type, **extra}
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=120)
    return service_id


async def _entry(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    """The backup as the catalogue lists it (checked to be what GET …/backups/{id} says)."""
    response = await api.get(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 200, response.text
    (entry,) = [b for b in response.json()["backups"] if b["id"] == backup_id]
    one = await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")
    assert one.status_code == 200, one.text
    assert one.json()["id"] == backup_id
    return dict(entry)


async def _backup(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    """Ask for a backup and wait (bounded) until it completed."""
    response = await api.post(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]
    assert response.json()["state"] == "requested"

    async def done() -> dict[str, Any] | None:
        entry = await _entry(api, service_id, backup_id)
        assert entry["state"] != "failed", entry["reason"]
        return entry if entry["state"] == "completed" else None

    return await eventually(done, 120, f"backup {backup_id} to complete")


async def _restore(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    """Ask for an in-place restore; the backup's restore record once it ended (either way)."""
    response = await api.post(f"/api/external-services/{service_id}/backups/{backup_id}/restore")
    assert response.status_code == 202, response.text
    restore_id = response.json()["restore"]["id"]

    async def ended() -> dict[str, Any] | None:
        restore = (await _entry(api, service_id, backup_id))["restore"]
        assert restore["id"] == restore_id
        return dict(restore) if restore["state"] in ("completed", "failed") else None

    return await eventually(ended, 120, f"restore {restore_id} to end")


def _manifest_and_keys(
    store: SeaweedStore, engine: str, name: str, backup_id: str
) -> tuple[dict[str, Any], list[str]]:
    """The backup's manifest and the keys of its folder (checked to follow the layout)."""
    s3 = store.client()
    prefix = f"external_services/{engine}/{name}/"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    keys = [o["Key"] for o in listed if f"/{backup_id}/" in o["Key"]]
    day = r"\d{4}/\d{2}/\d{2}"
    assert keys
    assert all(re.fullmatch(f"{prefix}{day}/{backup_id}/[^/]+", k) for k in keys), keys
    (manifest_key,) = [k for k in keys if k.endswith("/manifest.json")]
    body = s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read()
    return json.loads(body), keys


async def _decrypt_with_age(store: SeaweedStore, key: str, data_dir: Path, workdir: Path) -> Path:
    """The artifact at `key`, decrypted by Debian's `age` with the identity derived from the
    master key alone, then decompressed: the plain file."""
    identity_file = workdir / "identity.txt"
    identity_file.write_text(backup_identity(load_or_create_master_key(data_dir)) + "\n")
    stored = workdir / "artifact.age"
    store.client().download_file(BUCKET, key, str(stored))
    decrypted = workdir / "artifact.zst"
    await asyncio.to_thread(
        subprocess.run,
        ["age", "-d", "-i", str(identity_file), "-o", str(decrypted), str(stored)],
        timeout=60,
        check=True,
    )
    plain = workdir / "artifact"
    with decrypted.open("rb") as compressed, plain.open("wb") as out:
        zstandard.ZstdDecompressor().copy_stream(compressed, out)
    return plain


async def _redis(api: httpx.AsyncClient, service_id: str) -> aioredis.Redis:
    creds = await credentials(api, service_id)
    return aioredis.Redis.from_url(
        creds["local_connection_url"], decode_responses=True, socket_timeout=30
    )


@pytest.fixture(scope="module")
async def redis_service(api: httpx.AsyncClient, store: SeaweedStore) -> str:
    return await _create(api, f"{P}bkr", "redis")


async def test_redis_round_trip_keys_and_ttls(
    api: httpx.AsyncClient, store: SeaweedStore, redis_service: str, data_dir: Path, tmp_path: Path
) -> None:
    client = await _redis(api, redis_service)
    try:
        await client.flushall()
        await client.set("plain", "value")
        await client.set("expiring", "soon", ex=3600)
        await client.hset("hash", mapping={"a": "1", "b": "2"})
        await client.rpush("list", "x", "y", "z")
        backup = await _backup(api, redis_service)
        assert backup["size_bytes"] > 0
        await client.flushall()
        assert await client.dbsize() == 0
        restore = await _restore(api, redis_service, backup["id"])
        assert restore["state"] == "completed", restore["reason"]
    finally:
        await client.aclose()
    client = await _redis(api, redis_service)
    try:
        assert await client.get("plain") == "value"
        assert await client.get("expiring") == "soon"
        assert 3000 < await client.ttl("expiring") <= 3600
        assert await client.ttl("plain") == -1
        assert await client.hgetall("hash") == {"a": "1", "b": "2"}
        assert await client.lrange("list", 0, -1) == ["x", "y", "z"]
    finally:
        await client.aclose()

    # The layout, the manifest, and an artifact Debian's `age` decrypts with the identity
    # derived from the master key alone.
    manifest, keys = _manifest_and_keys(store, "redis", f"{P}bkr", backup["id"])
    assert manifest["engine"] == "redis"
    assert manifest["size_bytes"] == backup["size_bytes"]
    (artifact,) = manifest["artifacts"]
    assert len(artifact["sha256"]) == 64
    artifact_key = next(k for k in keys if k.endswith(artifact["name"]))
    plain = await _decrypt_with_age(store, artifact_key, data_dir, tmp_path)
    assert plain.read_bytes()[:5] == b"REDIS"


async def test_a_flipped_byte_is_refused_and_nothing_changes(
    api: httpx.AsyncClient, store: SeaweedStore, redis_service: str
) -> None:
    client = await _redis(api, redis_service)
    try:
        await client.flushall()
        await client.set("before", "1")
        backup = await _backup(api, redis_service)
        await client.set("after", "2")  # written after the backup: a restore would drop it
        _, keys = _manifest_and_keys(store, "redis", f"{P}bkr", backup["id"])
        artifact_key = next(k for k in keys if k.endswith(".age"))
        s3 = store.client()
        original = s3.get_object(Bucket=BUCKET, Key=artifact_key)["Body"].read()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        for damaged in (bytes(flipped), original[: len(original) // 2]):  # flipped, truncated
            s3.put_object(Bucket=BUCKET, Key=artifact_key, Body=damaged)
            restore = await _restore(api, redis_service, backup["id"])
            assert restore["state"] == "failed"
            assert "damaged" in restore["reason"]
            assert "nothing was restored" in restore["reason"]
            assert await client.get("after") == "2"
            assert await client.get("before") == "1"
        entries = (await api.get("/api/audit-log", params={"service_id": redis_service})).json()
        assert any(
            e["action"] == "backup.restore_requested" and e["details"]["backup_id"] == backup["id"]
            for e in entries
        )
    finally:
        await client.aclose()


async def _pg(creds: dict[str, Any], database: str | None = None) -> asyncpg.Connection:
    context = ssl.create_default_context(cadata=creds["ca_certificate"])
    url = creds["local_connection_url"].split("?")[0]
    if database is not None:
        url = url.rsplit("/", 1)[0] + f"/{database}"
    return await asyncpg.connect(url, ssl=context)


async def test_postgres_round_trip_two_databases(
    api: httpx.AsyncClient, store: SeaweedStore, data_dir: Path, tmp_path: Path
) -> None:
    service_id = await _create(api, f"{P}bkp", "postgres", version="15", parameters={"replicas": 0})
    creds = await credentials(api, service_id)
    conn = await _pg(creds)
    try:
        await conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")
        await conn.execute(
            "INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 500) g"
        )
        await conn.execute("CREATE DATABASE second")
    finally:
        await conn.close()
    second = await _pg(creds, "second")
    try:
        await second.execute("CREATE TABLE notes (body text)")
        await second.execute("INSERT INTO notes VALUES ('one'), ('two')")
    finally:
        await second.close()

    backup = await _backup(api, service_id)
    manifest, keys = _manifest_and_keys(store, "postgres", f"{P}bkp", backup["id"])
    assert {a.get("database") for a in manifest["artifacts"]} >= {creds["database"], "second"}
    (second_dump,) = [a["name"] for a in manifest["artifacts"] if a.get("database") == "second"]
    plain = await _decrypt_with_age(
        store, next(k for k in keys if k.endswith(second_dump)), data_dir, tmp_path
    )
    listing = await asyncio.to_thread(
        subprocess.run, ["pg_restore", "-l", str(plain)], capture_output=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert b"TABLE public notes" in listing.stdout

    conn = await _pg(creds)
    try:
        await conn.execute("DROP TABLE orders")
        await conn.execute("DROP DATABASE second")
    finally:
        await conn.close()
    restore = await _restore(api, service_id, backup["id"])
    assert restore["state"] == "completed", restore["reason"]

    conn = await _pg(creds)
    try:
        rows = await conn.fetch("SELECT id, item FROM orders ORDER BY id")
        assert [(r["id"], r["item"]) for r in rows] == [(i, f"item {i}") for i in range(1, 501)]
        assert await conn.fetchval("SELECT nextval('orders_id_seq')") == 501
    finally:
        await conn.close()
    second = await _pg(creds, "second")
    try:
        assert [r["body"] for r in await second.fetch("SELECT body FROM notes ORDER BY 1")] == [
            "one",
            "two",
        ]
    finally:
        await second.close()


async def test_unknown_ids_and_the_audit_trail(
    api: httpx.AsyncClient, store: SeaweedStore, redis_service: str
) -> None:
    unknown = uuid4()
    response = await api.post(f"/api/external-services/{redis_service}/backups/{unknown}/restore")
    assert response.status_code == 404, response.text
    assert str(unknown) in response.json()["error"]["message"]
    response = await api.post(f"/api/external-services/{unknown}/backups")
    assert response.status_code == 404, response.text
    response = await api.get(f"/api/external-services/{unknown}/backups")
    assert response.status_code == 404, response.text
    response = await api.get(f"/api/external-services/{redis_service}/backups/{unknown}")
    assert response.status_code == 404, response.text

    entries = (await api.get("/api/audit-log", params={"service_id": redis_service})).json()
    requested = [e for e in entries if e["action"] == "backup.requested"]
    assert requested
    assert all(e["details"]["backup_id"] for e in requested)
