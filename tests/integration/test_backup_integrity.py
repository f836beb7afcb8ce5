"""Issue 11 acceptance on the artifacts of a PostgreSQL backup, beyond test_backups.py (a Redis
artifact through `age`, a flipped or truncated Redis artifact, two PostgreSQL databases with a
serial):

- every artifact (globals and each database) opens with Debian's `age` and the identity derived
  from the master key alone, then `zstd -d`, and `pg_restore -l` of the service's own version
  reads each dump;
- a truncated dump, and a dump encrypted for another installation (its SHA-256 fixed in the
  manifest, so only the key check can catch it), are refused with a reason naming the artifact,
  and no database changes — not even those whose artifacts were sound;
- a round trip keeps every table's rows and checksum, every sequence's position (standalone,
  serial, identity), two databases (one with a name that needs quoting), and the ownership and
  grants of a role the user created.

Real NATS, PostgreSQL, Docker, SeaweedFS, backup worker; the `age` and `zstd` commands."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pyrage
import pytest
import zstandard
from temps_backup.main import serve as serve_backup
from temps_backup.settings import BackupSettings
from temps_shared.backups.identity import backup_identity
from temps_shared.crypto import load_or_create_master_key

from tests.integration.backup_store import SeaweedStore, seaweedfs_store
from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUCKET = "temps-backups"
NAME = f"{P}bki"
REPORTS = 'Reports "2026"'  # a database name that needs quoting everywhere
ROLE = "app_reader"
ROLE_PASSWORD = "reader-Secret-1"
COMMAND_TIMEOUT_S = 120


@pytest.fixture(scope="module")
async def store(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SeaweedStore]:
    """The backup store and a backup worker using it, for this module."""
    with seaweedfs_store(tmp_path_factory.mktemp("backup-store")) as running:
        settings = BackupSettings(
            **{k.removeprefix("TEMPS_").lower(): v for k, v in platform.env.items()},
            backup_store_endpoint=running.endpoint,
            backup_store_access_key=running.access_key,
            backup_store_secret_key=running.secret_key,
            backup_progress_s=0.5,
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(serve_backup(settings, stop))
        try:
            yield running
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(worker, 30)


# --- the service and its data ---------------------------------------------------------------


async def _pg(
    creds: dict[str, Any],
    database: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> Any:
    """A connection to `database` (the service's own by default), as the admin by default."""
    context = ssl.create_default_context(cadata=creds["ca_certificate"])
    return await asyncpg.connect(
        creds["local_connection_url"].split("?")[0],
        ssl=context,
        database=database or creds["database"],
        user=user,
        password=password,
        command_timeout=COMMAND_TIMEOUT_S,
    )


SEED_MAIN = f"""
CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}';
CREATE SEQUENCE invoice_numbers START 1000 INCREMENT 7;
SELECT nextval('invoice_numbers') FROM generate_series(1, 5);
CREATE TABLE customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text,
    tags text[],
    profile jsonb,
    balance numeric(12, 2),
    joined timestamptz,
    avatar bytea
);
INSERT INTO customers (name, tags, profile, balance, joined, avatar)
SELECT CASE WHEN g % 10 = 0 THEN NULL
            ELSE 'Zoë "Ünïcode" 東京, line' || E'\\n' || g END,
       ARRAY['t' || g % 3, 'comma,inside'],
       jsonb_build_object('g', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
       g * 1.25,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 hour',
       decode(md5(g::text), 'hex')
FROM generate_series(1, 300) g;
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer bigint NOT NULL REFERENCES customers,
    invoice bigint NOT NULL DEFAULT nextval('invoice_numbers'),
    note text
);
INSERT INTO orders (customer, note)
SELECT 1 + g % 300, repeat('x', g % 50) FROM generate_series(1, 1000) g;
DELETE FROM orders WHERE id % 97 = 0;  -- gaps: the sequence is ahead of max(id)
GRANT SELECT ON customers TO {ROLE};
ALTER TABLE orders OWNER TO {ROLE};
"""
SEED_REPORTS = f"""
CREATE TABLE daily (
    day date PRIMARY KEY,
    total numeric NOT NULL,
    n bigint GENERATED BY DEFAULT AS IDENTITY (START 50 INCREMENT 5)
);
INSERT INTO daily (day, total)
SELECT date '2026-01-01' + g, g * 3.5 FROM generate_series(0, 199) g;
CREATE SEQUENCE report_runs;
SELECT setval('report_runs', 41);
GRANT SELECT, INSERT ON daily TO {ROLE};
"""

USER_TABLES = """
SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"""
SEQUENCES = """
SELECT format('%I.%I', schemaname, sequencename), last_value, increment_by FROM pg_sequences
ORDER BY 1"""
OWNERS_AND_GRANTS = """
SELECT format('%I.%I', schemaname, tablename) AS t, tableowner,
       ARRAY(SELECT privilege_type FROM information_schema.role_table_grants g
             WHERE g.table_schema = schemaname AND g.table_name = tablename
               AND g.grantee = $1 ORDER BY 1) AS granted
FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"""


async def _database_figures(conn: Any) -> dict[str, Any]:
    """Every table's row count and checksum, every sequence's position, owners and grants."""
    tables = {}
    for (table,) in await conn.fetch(USER_TABLES):
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
            f" AS sum FROM {table} t"
        )
        tables[table] = (row["n"], row["sum"])
    return {
        "tables": tables,
        "sequences": {r[0]: (r[1], r[2]) for r in await conn.fetch(SEQUENCES)},
        "owners_and_grants": [tuple(r) for r in await conn.fetch(OWNERS_AND_GRANTS, ROLE)],
    }


async def _figures(creds: dict[str, Any]) -> dict[str, Any]:
    figures = {}
    for database in (creds["database"], REPORTS):
        conn = await _pg(creds, database)
        try:
            figures[database] = await _database_figures(conn)
        finally:
            await conn.close()
    return figures


@dataclass(frozen=True)
class Seeded:
    service_id: str
    creds: dict[str, Any]
    backup: dict[str, Any]  # the catalogue entry of the backup taken right after seeding
    figures: dict[str, Any]  # the data as it was backed up


@pytest.fixture(scope="module")
async def seeded(api: httpx.AsyncClient, store: SeaweedStore) -> Seeded:
    response = await api.post(
        "/api/external-services",
        json={
            "name": NAME,
            "service_type": "postgres",
            "version": "15",
            "parameters": {"replicas": 0},
        },
    )
    assert response.status_code == 202, response.text
    service_id = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=120)
    creds = await credentials(api, service_id)
    conn = await _pg(creds)
    try:
        await conn.execute(SEED_MAIN)
        # The platform's database admits only those granted CONNECT: a database-level ACL
        # the restore must keep too.
        await conn.execute(f'GRANT CONNECT ON DATABASE "{creds["database"]}" TO {ROLE}')
        await conn.execute(f'CREATE DATABASE "{REPORTS.replace(chr(34), chr(34) * 2)}"')
    finally:
        await conn.close()
    conn = await _pg(creds, REPORTS)
    try:
        await conn.execute(SEED_REPORTS)
    finally:
        await conn.close()
    figures = await _figures(creds)
    backup = await _backup(api, service_id)
    return Seeded(service_id, creds, backup, figures)


# --- the API and the store ------------------------------------------------------------------


async def _entry(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _backup(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    response = await api.post(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]

    async def done() -> dict[str, Any] | None:
        entry = await _entry(api, service_id, backup_id)
        assert entry["state"] != "failed", entry["reason"]
        return entry if entry["state"] == "completed" else None

    return await eventually(done, 120, f"backup {backup_id} to complete")


async def _restore(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    """An in-place restore; its record once it ended, either way."""
    response = await api.post(f"/api/external-services/{service_id}/backups/{backup_id}/restore")
    assert response.status_code == 202, response.text
    restore_id = response.json()["restore"]["id"]

    async def ended() -> dict[str, Any] | None:
        restore = (await _entry(api, service_id, backup_id))["restore"]
        assert restore["id"] == restore_id
        return dict(restore) if restore["state"] in ("completed", "failed") else None

    return await eventually(ended, 180, f"restore {restore_id} to end")


@dataclass(frozen=True)
class Stored:
    """A backup's folder in the bucket and its manifest."""

    folder: str
    manifest: dict[str, Any]

    def key(self, artifact: dict[str, Any]) -> str:
        return f"{self.folder}/{artifact['name']}"

    @property
    def manifest_key(self) -> str:
        return f"{self.folder}/manifest.json"


def _stored(store: SeaweedStore, backup_id: str) -> Stored:
    listed = store.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"external_services/postgres/{NAME}/"
    )
    (key,) = [
        o["Key"]
        for o in listed.get("Contents", [])
        if f"/{backup_id}/" in o["Key"] and o["Key"].endswith("/manifest.json")
    ]
    body = store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return Stored(key.rsplit("/", 1)[0], json.loads(body))


def _get(store: SeaweedStore, key: str) -> bytes:
    data: bytes = store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def _put(store: SeaweedStore, key: str, data: bytes) -> None:
    store.client().put_object(Bucket=BUCKET, Key=key, Body=data)


def _identity(data_dir: Path) -> str:
    return backup_identity(load_or_create_master_key(data_dir))


def _run(argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=COMMAND_TIMEOUT_S)


async def _unchanged(seeded: Seeded, expected: dict[str, Any]) -> None:
    assert await _figures(seeded.creds) == expected


async def _write_after_backup(seeded: Seeded) -> dict[str, Any]:
    """Changes in both databases that a restore of the backup would undo; the figures then."""
    conn = await _pg(seeded.creds)
    try:
        await conn.execute("INSERT INTO customers (name) VALUES ('written after the backup')")
        await conn.execute("SELECT nextval('invoice_numbers')")
    finally:
        await conn.close()
    conn = await _pg(seeded.creds, REPORTS)
    try:
        await conn.execute("INSERT INTO daily (day, total) VALUES ('2030-01-01', 1)")
    finally:
        await conn.close()
    figures = await _figures(seeded.creds)
    assert figures != seeded.figures
    return figures


# --- the tests ------------------------------------------------------------------------------


async def test_every_artifact_opens_with_age_zstd_and_pg_restore(
    seeded: Seeded, store: SeaweedStore, data_dir: Path, tmp_path: Path
) -> None:
    age = shutil.which("age")
    assert age, "Debian's `age` command is missing (deploy/prepare-tests.sh installs it)"
    stored = _stored(store, seeded.backup["id"])
    manifest = stored.manifest
    identity = _identity(data_dir)
    # The manifest names the recipient the master key's identity answers for.
    recipient = str(pyrage.x25519.Identity.from_str(identity).to_public())
    assert manifest["encryption"]["format"] == "age"
    assert manifest["encryption"]["recipient"] == recipient
    assert manifest["compression"] == "zstd"
    identity_file = tmp_path / "identity.txt"
    identity_file.write_text(identity + "\n")
    identity_file.chmod(0o600)

    databases = {a["database"]: a for a in manifest["artifacts"] if a.get("database")}
    assert set(databases) >= {seeded.creds["database"], REPORTS, "postgres"}
    assert [a["name"] for a in manifest["artifacts"] if not a.get("database")] == [
        "globals.sql.zst.age"
    ]
    assert (
        manifest["size_bytes"]
        == seeded.backup["size_bytes"]
        == sum(a["size"] for a in manifest["artifacts"])
    )
    container = f"temps-postgres-{NAME}"
    for artifact in manifest["artifacts"]:
        encrypted = tmp_path / artifact["name"]
        encrypted.write_bytes(_get(store, stored.key(artifact)))
        assert encrypted.stat().st_size == artifact["size"]
        assert hashlib.sha256(encrypted.read_bytes()).hexdigest() == artifact["sha256"]
        decrypted = await asyncio.to_thread(
            _run, [age, "-d", "-i", str(identity_file), str(encrypted)]
        )
        assert decrypted.returncode == 0, decrypted.stderr
        plain = _zstd_decompress(decrypted.stdout)
        if artifact.get("database") is None:
            text = plain.decode()
            assert f"CREATE ROLE {ROLE};" in text
            assert ROLE_PASSWORD not in text  # pg_dumpall keeps the hash, not the password
            continue
        assert plain[:5] == b"PGDMP"  # pg_dump's custom format
        # The service's own pg_restore (same version as the server) reads the dump.
        listing = await asyncio.to_thread(
            _run, ["docker", "exec", "-i", container, "pg_restore", "-l"], plain
        )
        assert listing.returncode == 0, listing.stderr
        toc = listing.stdout.decode()
        assert f"dbname: {artifact['database']}" in toc
        if artifact["database"] == seeded.creds["database"]:
            for entry in (
                "TABLE public customers",
                "TABLE DATA public orders",
                "SEQUENCE SET public invoice_numbers",
                f"ACL public TABLE customers {seeded.creds['username']}",
            ):
                assert entry in toc, toc
        if artifact["database"] == REPORTS:
            assert "TABLE DATA public daily" in toc, toc
            assert "SEQUENCE SET public report_runs" in toc, toc


def _zstd_decompress(data: bytes) -> bytes:
    """`zstd -d` (the command a user has) where there is one, else the same format in Python."""
    binary = shutil.which("zstd")
    if binary is None:
        out = io.BytesIO()
        zstandard.ZstdDecompressor().copy_stream(io.BytesIO(data), out)
        return out.getvalue()
    result = _run([binary, "-d", "-c"], data)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_a_truncated_dump_is_refused_by_name_and_nothing_changes(
    api: httpx.AsyncClient, seeded: Seeded, store: SeaweedStore
) -> None:
    expected = await _write_after_backup(seeded)
    stored = _stored(store, seeded.backup["id"])
    # The last artifact: a restore that went artifact by artifact would already have replaced
    # the databases before it.
    last = stored.manifest["artifacts"][-1]
    assert last.get("database")
    original = _get(store, stored.key(last))
    try:
        for truncated in (original[: len(original) // 2], original[:-1]):
            _put(store, stored.key(last), truncated)
            restore = await _restore(api, seeded.service_id, seeded.backup["id"])
            assert restore["state"] == "failed", restore
            reason = restore["reason"]
            assert last["name"] in reason, reason
            assert "damaged" in reason, reason
            assert "nothing was restored" in reason, reason
            await _unchanged(seeded, expected)
    finally:
        _put(store, stored.key(last), original)
    # The store holds the backup as it was: the manifest was never rewritten.
    assert _stored(store, seeded.backup["id"]).manifest == stored.manifest


async def test_a_dump_for_another_installation_is_refused_and_nothing_changes(
    api: httpx.AsyncClient, seeded: Seeded, store: SeaweedStore, data_dir: Path
) -> None:
    """Another installation's master key → another age recipient. The artifact is re-encrypted
    to a recipient of a fresh identity and its size and SHA-256 put in the manifest, so every
    check but the key one passes."""
    expected = await _figures(seeded.creds)
    stored = _stored(store, seeded.backup["id"])
    (target,) = [
        a for a in stored.manifest["artifacts"] if a.get("database") == seeded.creds["database"]
    ]
    original = _get(store, stored.key(target))
    plain = io.BytesIO()
    with zstandard.ZstdDecompressor().stream_writer(plain, closefd=False) as sink:
        pyrage.decrypt_io(
            io.BytesIO(original), sink, [pyrage.x25519.Identity.from_str(_identity(data_dir))]
        )
    compressed = zstandard.ZstdCompressor(level=3).compress(plain.getvalue())
    elsewhere = pyrage.encrypt(compressed, [pyrage.x25519.Identity.generate().to_public()])
    forged = json.loads(json.dumps(stored.manifest))
    (entry,) = [a for a in forged["artifacts"] if a["name"] == target["name"]]
    entry["sha256"] = hashlib.sha256(elsewhere).hexdigest()
    entry["size"] = len(elsewhere)
    forged["size_bytes"] = sum(a["size"] for a in forged["artifacts"])
    try:
        _put(store, stored.key(target), elsewhere)
        _put(store, stored.manifest_key, json.dumps(forged).encode())
        restore = await _restore(api, seeded.service_id, seeded.backup["id"])
        assert restore["state"] == "failed", restore
        reason = restore["reason"]
        assert target["name"] in reason, reason
        assert "key" in reason, reason
        assert "nothing was restored" in reason, reason
        await _unchanged(seeded, expected)
    finally:
        _put(store, stored.key(target), original)
        _put(store, stored.manifest_key, json.dumps(stored.manifest).encode())


async def test_round_trip_keeps_rows_checksums_sequences_and_the_users_role(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    conn = await _pg(seeded.creds)
    try:
        await conn.execute("DROP TABLE orders, customers")
        await conn.execute("DROP SEQUENCE invoice_numbers")
        await conn.execute("CREATE TABLE stray (x int)")  # not in the backup: must go
        await conn.execute(f'DROP DATABASE "{REPORTS.replace(chr(34), chr(34) * 2)}"')
    finally:
        await conn.close()

    restore = await _restore(api, seeded.service_id, seeded.backup["id"])
    assert restore["state"] == "completed", restore["reason"]
    # Every table's rows and checksum, every sequence's position, owners and grants.
    assert await _figures(seeded.creds) == seeded.figures

    main = seeded.figures[seeded.creds["database"]]["sequences"]
    conn = await _pg(seeded.creds)
    try:
        # Sequences continue where they were, not from their start or from max(id).
        last_invoice, step = main["public.invoice_numbers"]
        assert await conn.fetchval("SELECT nextval('invoice_numbers')") == last_invoice + step
        last_order, _ = main["public.orders_id_seq"]
        inserted = await conn.fetchval(
            "INSERT INTO orders (customer) VALUES (1) RETURNING id", timeout=30
        )
        assert inserted == last_order + 1
        last_customer, _ = main["public.customers_id_seq"]
        assert (
            await conn.fetchval("INSERT INTO customers (name) VALUES ('new') RETURNING id")
            == last_customer + 1
        )
    finally:
        await conn.close()
    conn = await _pg(seeded.creds, REPORTS)
    try:
        assert await conn.fetchval("SELECT nextval('report_runs')") == 42
        assert (
            await conn.fetchval(
                "INSERT INTO daily (day, total) VALUES ('2031-01-01', 0) RETURNING n"
            )
            == 50 + 5 * 200
        )
    finally:
        await conn.close()
    # The role the user created still logs in and holds its grants on the restored tables.
    conn = await _pg(seeded.creds, user=ROLE, password=ROLE_PASSWORD)
    try:
        assert await conn.fetchval("SELECT count(*) FROM customers") == 301
        assert await conn.fetchval("SELECT count(*) FROM orders") > 0  # its own table
    finally:
        await conn.close()
    conn = await _pg(seeded.creds, REPORTS, user=ROLE, password=ROLE_PASSWORD)
    try:
        assert await conn.fetchval("SELECT count(*) FROM daily") == 201
    finally:
        await conn.close()
