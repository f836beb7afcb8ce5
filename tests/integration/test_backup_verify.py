"""Verification by a test restore (issue 11, point 5): after a backup, the backup worker
restores it into a throw-away container on an internal network and compares the restored data
with the figures the backup took in its own snapshot. A backup whose dump was replaced by a
validly encrypted dump of other data (so only the figures can tell) fails its verification,
naming the table, and degrades the service; a later verified backup lifts that. Real NATS,
PostgreSQL, Redis, Docker and S3 (SeaweedFS)."""

from __future__ import annotations

import asyncio
import io
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import boto3
import docker
import httpx
import pytest
import redis.asyncio as aioredis
from temps_backup.scratch_service import LABEL_SCRATCH
from temps_shared.backups import layout
from temps_shared.backups.codec import encode
from temps_shared.bus.publish import publish_command, publish_event
from temps_shared.crypto import KeyRing, load_or_create_master_key
from temps_shared.ids import container_name
from temps_shared.messages import MONITOR_SOURCE, Role, ServiceStatusChanged, VerifyBackup
from temps_shared.runtime.container_io import exec_output

from tests.integration.backup_store import SeaweedStore, store_with_worker
from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUCKET = "temps-backups"
VERIFY_WAIT_S = 240.0
T = TypeVar("T")


@pytest.fixture(scope="module")
async def store(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SeaweedStore]:
    """The backup store and a backup worker using it, for this module."""
    async with store_with_worker(
        platform.env, tmp_path_factory.mktemp("verify-store"), backup_bucket=BUCKET
    ) as (running, _):
        yield running


@pytest.fixture(scope="module")
def keyring(platform: Platform) -> KeyRing:
    """The installation's master key (it opens the manifests' figures and seals)."""
    return KeyRing(load_or_create_master_key(Path(platform.env["TEMPS_DATA_DIR"])))


async def _create(api: httpx.AsyncClient, name: str, service_type: str) -> str:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": service_type}
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=180)
    return service_id


async def _entry(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()
    return entry


async def _backup(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    response = await api.post(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]

    async def done() -> dict[str, Any] | None:
        entry = await _entry(api, service_id, backup_id)
        assert entry["state"] != "failed", entry["reason"]
        return entry if entry["state"] == "completed" else None

    return await eventually(done, 180, f"backup {backup_id} to complete", interval_s=0.5)


async def _verification(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    """The backup's verification once it has an outcome (bounded wait)."""

    async def outcome() -> dict[str, Any] | None:
        verification = (await _entry(api, service_id, backup_id))["verification"]
        if verification and verification["state"] in ("verified", "verification_failed"):
            return dict(verification)
        return None

    return await eventually(outcome, VERIFY_WAIT_S, f"backup {backup_id}'s verification", 1.0)


def _manifest_key(store: SeaweedStore, backup_id: str) -> str:
    listed = store.client().list_objects_v2(Bucket=BUCKET, Prefix="external_services/")
    (key,) = [
        o["Key"] for o in listed.get("Contents", [])
        if o["Key"].endswith(f"/{backup_id}/manifest.json")
    ]  # fmt: skip
    return str(key)


def _manifest(store: SeaweedStore, backup_id: str) -> dict[str, Any]:
    body = store.client().get_object(Bucket=BUCKET, Key=_manifest_key(store, backup_id))["Body"]
    document: dict[str, Any] = json.loads(body.read())
    return document


def _figures(store: SeaweedStore, backup_id: str, keyring: KeyRing) -> dict[str, Any]:
    """The manifest's figures: encrypted in the bucket (table names, row counts and hashed
    key names are not for whoever reads it)."""
    document = _manifest(store, backup_id)
    assert "figures" not in document
    layout.check_seal(document, keyring, UUID(backup_id))
    return layout.open_figures(document, keyring)


async def _while_writing(
    write: Callable[[], Awaitable[None]], work: Callable[[], Awaitable[T]]
) -> T:
    """`work()`'s result, while `write()` runs over and over (from a moment before)."""
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await write()
            await asyncio.sleep(0.005)

    task = asyncio.create_task(writer())
    try:
        await asyncio.sleep(0.3)
        return await work()
    finally:
        stop.set()
        await task


def _no_scratch_left(client: docker.DockerClient, backup_id: str) -> bool:
    """Nothing of this backup's scratch (other suites' verifications may be running)."""
    label = {"label": f"{LABEL_SCRATCH}={backup_id}"}
    return not (
        client.api.containers(all=True, filters=label)
        or client.api.volumes(filters=label).get("Volumes")
        or client.api.networks(filters=label)
    )


async def _pg(creds: dict[str, Any], database: str | None = None) -> asyncpg.Connection:
    context = ssl.create_default_context(cadata=creds["ca_certificate"])
    url = creds["local_connection_url"].split("?")[0]
    if database is not None:
        url = url.rsplit("/", 1)[0] + f"/{database}"
    return await asyncpg.connect(url, ssl=context)


async def _pg_data(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    """Two databases, tables of several types, a sequence moved along."""
    creds = await credentials(api, service_id)
    conn = await _pg(creds)
    try:
        await conn.execute("CREATE DATABASE second")
        await conn.execute(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, item text, price numeric,"
            " at timestamptz DEFAULT now(), tags text[], doc jsonb);"
            "INSERT INTO orders (item, price, tags, doc) SELECT 'item ' || n, n * 1.5,"
            " ARRAY['a', 'b'], jsonb_build_object('n', n) FROM generate_series(1, 500) n;"
            "CREATE SEQUENCE invoice_no START 1000;"
            "SELECT nextval('invoice_no') FROM generate_series(1, 7);"
            "CREATE TABLE empty_one (x int)"
        )
    finally:
        await conn.close()
    second = await _pg(creds, "second")
    try:
        await second.execute(
            "CREATE SCHEMA billing; CREATE TABLE billing.lines (n int, label text);"
            "INSERT INTO billing.lines SELECT n, md5(n::text) FROM generate_series(1, 200) n"
        )
    finally:
        await second.close()
    return creds


async def test_postgres_backup_is_verified_by_a_test_restore(
    api: httpx.AsyncClient,
    store: SeaweedStore,
    docker_client: docker.DockerClient,
    keyring: KeyRing,
) -> None:
    service_id = await _create(api, f"{P}-vpg", "postgres")
    creds = await _pg_data(api, service_id)
    conn = await _pg(creds)
    await conn.execute("CREATE TABLE busy (id bigserial PRIMARY KEY, at timestamptz)")

    async def write() -> None:
        await conn.execute("INSERT INTO busy (at) VALUES (clock_timestamp())")

    try:
        # Rows keep arriving while the backup runs: figures and dump must share a snapshot.
        entry = await _while_writing(write, lambda: _backup(api, service_id))
        written = await conn.fetchval("SELECT count(*) FROM busy")
    finally:
        await conn.close()
    started = time.monotonic()
    verification = await _verification(api, service_id, entry["id"])
    took = time.monotonic() - started
    assert verification["state"] == "verified", verification["reason"]
    assert entry["verified"] is False  # read before the outcome
    assert (await _entry(api, service_id, entry["id"]))["verified"] is True
    # The figures: both databases, every table (row counts), the sequence's last value.
    figures = _figures(store, entry["id"], keyring)
    app = figures["databases"][creds["database"]]
    assert app["tables"]["public.orders"]["rows"] == 500
    assert app["tables"]["public.empty_one"] == {"rows": 0, "checksum": "0"}
    assert app["sequences"]["public.invoice_no"] == {"at_least": 1006}
    assert app["sequences"]["public.orders_id_seq"] == {"at_least": 500}
    assert 0 < app["tables"]["public.busy"]["rows"] < written, written
    assert figures["databases"]["second"]["tables"]["billing.lines"]["rows"] == 200
    assert "postgres" in figures["databases"]
    assert verification["reason"] == figures["_summary"]
    assert "4 tables" in verification["reason"], verification
    print(f"postgres verification took {took:.1f}s: {verification['reason']}")
    await eventually(
        lambda: asyncio.to_thread(_no_scratch_left, docker_client, entry["id"]),
        30,
        "scratch removed",
    )
    status = await api.get(f"/api/external-services/{service_id}")
    assert status.json()["status"] == "operational"


async def test_redis_backup_is_verified_by_a_test_restore(
    api: httpx.AsyncClient,
    store: SeaweedStore,
    docker_client: docker.DockerClient,
    keyring: KeyRing,
) -> None:
    service_id = await _create(api, f"{P}-vrd", "redis")
    creds = await credentials(api, service_id)
    client = aioredis.Redis.from_url(creds["local_connection_url"], decode_responses=True)
    try:
        await client.mset({f"k:{n:03}": f"value {n}" for n in range(150)})
        await client.hset("h", mapping={"a": "1", "b": "2"})
        await client.rpush("l", "x", "y", "z")
        await client.sadd("s", "p", "q")
        await client.zadd("z", {"m": 1.5, "n": 2})
        await client.set("short-lived", "v", ex=3600)
        counter = iter(range(1_000_000))

        async def write() -> None:
            await client.set(f"w:{next(counter):06}", "x")

        entry = await _while_writing(write, lambda: _backup(api, service_id))
    finally:
        await client.aclose()
    verification = await _verification(api, service_id, entry["id"])
    assert verification["state"] == "verified", verification["reason"]
    figures = _figures(store, entry["id"], keyring)
    assert 154 < figures["databases"]["0"]["keys"] < 154 + next(counter)
    assert len(figures["databases"]["0"]["sample"]) == 64
    assert figures["_volatile"] == {"0": 1}
    assert not any("k:" in key for key in figures["databases"]["0"]["sample"])  # hashed names
    assert verification["reason"] == figures["_summary"]
    await eventually(
        lambda: asyncio.to_thread(_no_scratch_left, docker_client, entry["id"]),
        30,
        "scratch removed",
    )


async def test_s3_backup_is_verified_through_the_same_protocol(
    api: httpx.AsyncClient,
    store: SeaweedStore,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
    keyring: KeyRing,
) -> None:
    """The orchestration knows no engine: S3's backup (its own figures, dialled over TLS at the
    scratch's address) verifies the same way."""
    service_id = await _create(api, f"{P}-vs3", "s3")
    creds = await credentials(api, service_id)
    ca_file = tmp_path_factory.mktemp("verify-s3-ca") / "ca.pem"
    ca_file.write_text(creds["ca_certificate"])
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=creds["local_endpoint"],
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        region_name=creds["region"],
        verify=str(ca_file),
    )

    def fill() -> None:
        s3.create_bucket(Bucket="verify-me")
        for n in range(5):
            s3.put_object(Bucket="verify-me", Key=f"docs/{n}.txt", Body=f"object {n}".encode())

    await asyncio.to_thread(fill)
    entry = await _backup(api, service_id)
    verification = await _verification(api, service_id, entry["id"])
    assert verification["state"] == "verified", verification["reason"]
    assert _figures(store, entry["id"], keyring), "S3 figures are in the manifest"
    await eventually(
        lambda: asyncio.to_thread(_no_scratch_left, docker_client, entry["id"]),
        30,
        "scratch removed",
    )


def _dump_other_data(
    client: docker.DockerClient, service_name: str, creds: dict[str, Any]
) -> bytes:
    """A `pg_dump -Fc` of the service's database as it is now (after a change)."""
    argv = ["pg_dump", "-h", "127.0.0.1", "-U", creds["username"], "-Fc", "-d", creds["database"]]
    env = {"PGPASSWORD": creds["password"]}
    return b"".join(exec_output(client, container_name("postgres", service_name), argv, env))


def _tamper(
    store: SeaweedStore, backup_id: str, database: str, dump: bytes, keyring: KeyRing
) -> None:
    """Replace the database's artifact by `dump`, validly encrypted, and fix the manifest's
    size and SHA-256, sealed again with the master key (so only a holder of the key could do
    it: without, the restore refuses the manifest): only the figures can tell."""
    s3 = store.client()
    manifest_key = _manifest_key(store, backup_id)
    document = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    (artifact,) = [a for a in document["artifacts"] if a.get("database") == database]
    sink = io.BytesIO()
    recipient = document["encryption"]["recipient"]  # public: in the manifest for anyone
    encoded = encode(iter([dump]), recipient, sink)
    folder = manifest_key.rsplit("/", 1)[0] + "/"
    s3.put_object(Bucket=BUCKET, Key=folder + artifact["name"], Body=sink.getvalue())
    artifact["sha256"], artifact["size"] = encoded.sha256, encoded.size
    document = layout.seal(document, keyring)
    s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=json.dumps(document).encode())


async def test_a_tampered_backup_fails_verification_and_degrades_the_service(
    api: httpx.AsyncClient,
    store: SeaweedStore,
    platform: Platform,
    docker_client: docker.DockerClient,
) -> None:
    name = f"{P}-vtm"
    service_id = await _create(api, name, "postgres")
    creds = await _pg_data(api, service_id)
    pool = await asyncpg.connect(platform.env["TEMPS_DATABASE_URL"])
    try:
        # No verification after this backup: the test tampers with it first.
        await pool.execute(
            "INSERT INTO backup_schedules (service_id, verify) VALUES ($1, 'off')"
            " ON CONFLICT (service_id) DO UPDATE SET verify = 'off'",
            UUID(service_id),
        )
        entry = await _backup(api, service_id)
        conn = await _pg(creds)
        try:
            await conn.execute("DELETE FROM orders WHERE id % 10 = 0")  # 50 rows fewer
        finally:
            await conn.close()
        dump = await asyncio.to_thread(_dump_other_data, docker_client, name, creds)
        master_key = load_or_create_master_key(Path(platform.env["TEMPS_DATA_DIR"]))
        keyring = KeyRing(master_key)
        await asyncio.to_thread(_tamper, store, entry["id"], creds["database"], dump, keyring)
        await asyncio.sleep(3)
        assert (await _entry(api, service_id, entry["id"]))["verification"] is None

        bus = await platform.bus(Role.API)
        try:
            await publish_command(
                bus.jetstream(),
                VerifyBackup(service_id=UUID(service_id), backup_id=UUID(entry["id"])),
                origin=Role.API,
            )
        finally:
            await bus.close()
        verification = await _verification(api, service_id, entry["id"])
        assert verification["state"] == "verification_failed"
        reason = verification["reason"]
        table = f"databases/{creds['database']}/tables/public.orders"
        assert f"{table}/rows: 500 in the backup, 450 restored" in reason, reason
        assert "checksum" in reason
        assert "billing.lines" not in reason
        assert "second" not in reason
        body = await wait_status(api, service_id, "degraded", timeout_s=30)
        assert "backup verification failed" in body["status_reason"]
        assert "public.orders" in body["status_reason"]

        # The monitor's next "operational" does not lift it …
        generation = await pool.fetchval(
            "SELECT requested_generation FROM service_status WHERE service_id = $1",
            UUID(service_id),
        )
        monitor = await platform.bus(Role.MONITOR)
        try:
            await publish_event(
                monitor.jetstream(),
                ServiceStatusChanged(
                    service_id=UUID(service_id),
                    status="operational",
                    source=MONITOR_SOURCE,
                    generation=generation,  # as the monitor stamps it (no newer request)
                ),
                origin=Role.MONITOR,
            )
        finally:
            await monitor.close()
        await asyncio.sleep(3)
        body = (await api.get(f"/api/external-services/{service_id}")).json()
        assert body["status"] == "degraded", body

        # … a later backup that verifies does.
        await pool.execute(
            "UPDATE backup_schedules SET verify = 'every' WHERE service_id = $1", UUID(service_id)
        )
        later = await _backup(api, service_id)
        assert (await _verification(api, service_id, later["id"]))["state"] == "verified"
        body = await wait_status(api, service_id, "operational", timeout_s=30)
        assert body["status_reason"] is None

        # `daily`: a backup verified less than 24 h ago spares the next one its test restore.
        await pool.execute(
            "UPDATE backup_schedules SET verify = 'daily' WHERE service_id = $1", UUID(service_id)
        )
        spared = await _backup(api, service_id)
        await asyncio.sleep(5)
        assert (await _entry(api, service_id, spared["id"]))["verification"] is None
        await eventually(
            lambda: asyncio.to_thread(_no_scratch_left, docker_client, later["id"]),
            30,
            "scratch removed",
        )
    finally:
        await pool.close()
