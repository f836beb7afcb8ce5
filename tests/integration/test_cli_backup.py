"""`temps backup` as a user runs it (the console script in a subprocess): create, download and
restore through the API; `list` and `restore-service` from the bucket alone — the latter onto a
FRESHLY INSTALLED platform (its own control-plane database, NATS and data dir holding only the
kept master key), which brings the service back with its data and credentials. Real NATS,
PostgreSQL, Docker, SeaweedFS."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration.backup_platform import (  # noqa: F401  (the module's fixtures)
    BUCKET,
    create_service,
    fresh_control_plane,
    module_store,
    pg_connect,
    platform_with_store,
    running_platform,
    store_env,
)
from tests.integration.backup_store import SeaweedStore
from tests.integration.conftest import Platform, admin_token
from tests.support import RUN_PREFIX as P
from tests.support import credentials, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEMPS = str(Path(sys.executable).parent / "temps")


async def temps(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 600
) -> tuple[int, str, str]:
    """Exit code, stdout, stderr (not subprocess.run: the API answers from this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        TEMPS,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _api_env(platform: Platform) -> dict[str, str]:
    return {
        "TEMPS_API_URL": platform.base_url,
        "TEMPS_TOKEN": admin_token(Path(platform.env["TEMPS_DATA_DIR"])),
    }


def _bucket_flags(store: SeaweedStore) -> tuple[list[str], dict[str, str]]:
    """The spec's flags; the secret key through its variable, out of the process list."""
    flags = ["--bucket-name", BUCKET, "--endpoint", store.endpoint,
             "--access-key-id", store.access_key]  # fmt: skip
    return flags, {"TEMPS_BACKUP_SECRET_ACCESS_KEY": store.secret_key}


def _manifest(store: SeaweedStore, backup_id: str) -> tuple[str, bytes]:
    """The key and the stored bytes of the backup's manifest."""
    listed = store.client().list_objects_v2(Bucket=BUCKET, Prefix="external_services/")
    (key,) = [
        o["Key"] for o in listed.get("Contents", [])
        if o["Key"].endswith(f"/{backup_id}/manifest.json")
    ]  # fmt: skip
    body: bytes = store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return str(key), body


@pytest.fixture(scope="module")
async def original(platform: Platform, api: httpx.AsyncClient) -> dict[str, Any]:
    """A PostgreSQL service with data, backed up with `temps backup create`."""
    name = f"{P}dr"
    service_id = await create_service(api, name, "postgres", version="15")
    creds = await credentials(api, service_id)
    conn = await pg_connect(creds)
    try:
        await conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric)")
        await conn.execute("INSERT INTO ledger SELECT g, g * 1.5 FROM generate_series(1, 400) g")
        rows = await conn.fetch("SELECT * FROM ledger ORDER BY id")
    finally:
        await conn.close()
    code, out, err = await temps("backup", "create", name, env=_api_env(platform))
    assert code == 0, err
    backup_id = out.strip()
    entry = (await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")).json()
    assert entry["state"] == "completed"
    return {"name": name, "id": service_id, "creds": creds, "rows": rows, "backup_id": backup_id}


async def test_create_download_and_restore_through_the_api(
    platform: Platform, api: httpx.AsyncClient, original: dict[str, Any], tmp_path: Path
) -> None:
    env = _api_env(platform)
    code, _, err = await temps(
        "backup", "download", original["name"], original["backup_id"], env=env, cwd=tmp_path
    )
    assert code == 0, err
    (dump,) = await asyncio.to_thread(lambda: list(tmp_path.glob("*.dump")))
    assert dump.read_bytes()[:5] == b"PGDMP"
    assert original["name"] in dump.name
    code, _, err = await temps(
        "backup", "download", original["name"], original["backup_id"],
        "--artifact", "globals.sql", "-o", str(tmp_path / "g.sql"), env=env,
    )  # fmt: skip
    assert code == 0, err
    assert b"CREATE ROLE" in (tmp_path / "g.sql").read_bytes()
    code, _, err = await temps(
        "backup", "download", original["name"], original["backup_id"], "--artifact", "x", env=env
    )
    assert code == 3, err  # not found

    conn = await pg_connect(original["creds"])
    try:
        await conn.execute("DELETE FROM ledger WHERE id > 100")
    finally:
        await conn.close()
    code, _, err = await temps(
        "backup", "restore", original["name"], original["backup_id"], env=env
    )
    assert code == 0, err
    assert "completed" in err
    conn = await pg_connect(original["creds"])
    try:
        assert await conn.fetch("SELECT * FROM ledger ORDER BY id") == original["rows"]
    finally:
        await conn.close()


async def test_list_reads_the_bucket_alone(store: SeaweedStore, original: dict[str, Any]) -> None:
    flags, secret = _bucket_flags(store)
    # No API: an address nothing answers at.
    env = {**secret, "TEMPS_API_URL": "http://127.0.0.1:9", "TEMPS_TOKEN": "none"}
    code, out, err = await temps("backup", "list", *flags, "--json", env=env)
    assert code == 0, err
    (listed,) = [b for b in json.loads(out) if b["id"] == original["backup_id"]]
    assert listed["engine"] == "postgres"
    assert listed["service"] == original["name"]
    assert listed["version"] == "15"
    assert listed["size_bytes"] > 0
    code, out, err = await temps("backup", "list", *flags, env=env)
    assert code == 0, err
    assert original["backup_id"] in out
    # A wrong secret: one line, not a traceback.
    code, _, err = await temps(
        "backup", "list", *flags, env={**env, "TEMPS_BACKUP_SECRET_ACCESS_KEY": "wrong"}
    )
    assert code == 1
    assert "Traceback" not in err


async def test_restore_service_onto_a_fresh_installation(
    store: SeaweedStore,
    original: dict[str, Any],
    base_env: dict[str, str],
    tmp_path: Path,
) -> None:
    flags, secret = _bucket_flags(store)
    key = (Path(base_env["TEMPS_DATA_DIR"]) / "encryption_key").read_text().strip()
    name = f"{P}back"
    with fresh_control_plane(tmp_path, Path(base_env["TEMPS_DATA_DIR"])) as (env, database_url):
        # The fresh installation's own built-in store is another bucket: the restore reads the
        # one named on the command line.
        async with running_platform({**env, **store_env(store, "fresh-backups")}) as fresh:
            args = [*flags, "--backup-id", original["backup_id"], "--service-name", name]
            base = {**secret, **_api_env(fresh), "TEMPS_DATABASE_URL": database_url}

            # The wrong key: refused before anything is written.
            code, _, err = await temps(
                "backup", "restore-service", *args,
                env={**base, "TEMPS_ENCRYPTION_KEY": "00" * 32},
            )  # fmt: skip
            assert code == 2, err
            assert "does not open" in err
            conn = await asyncpg.connect(database_url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM services") == 0
            finally:
                await conn.close()

            # The right key, but a manifest someone rewrote (an artifact's SHA-256): its seal
            # no longer holds; refused before anything is written.
            manifest_key, manifest = _manifest(store, original["backup_id"])
            forged = json.loads(manifest)
            forged["artifacts"][0]["sha256"] = "0" * 64
            store.client().put_object(
                Bucket=BUCKET, Key=manifest_key, Body=json.dumps(forged).encode()
            )
            try:
                code, _, err = await temps(
                    "backup", "restore-service", *args, env={**base, "TEMPS_ENCRYPTION_KEY": key}
                )
            finally:
                store.client().put_object(Bucket=BUCKET, Key=manifest_key, Body=manifest)
            assert code == 2, err
            assert "not sealed by this installation's key" in err
            conn = await asyncpg.connect(database_url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM services") == 0
                assert await conn.fetchval("SELECT count(*) FROM backup_destinations") == 0
            finally:
                await conn.close()

            code, out, err = await temps(
                "backup", "restore-service", *args, env={**base, "TEMPS_ENCRYPTION_KEY": key}
            )
            assert code == 0, err
            service_id = out.strip()
            assert "restore" in err
            assert "completed" in err

            async with fresh.client() as api:
                service = await wait_status(api, service_id, "operational", timeout_s=60)
                assert service["name"] == name
                assert (service["service_type"], service["version"]) == ("postgres", "15")
                creds = await credentials(api, service_id)
                backups = (await api.get(f"/api/external-services/{service_id}/backups")).json()
            # The same admin credentials as the service that was backed up.
            assert creds["password"] == original["creds"]["password"]
            assert [b["id"] for b in backups["backups"]] == [original["backup_id"]]
            assert backups["backups"][0]["restore"]["state"] == "completed"
            conn = await pg_connect(creds, database=original["creds"]["database"])
            try:
                assert await conn.fetch("SELECT * FROM ledger ORDER BY id") == original["rows"]
            finally:
                await conn.close()

            # The same backup twice: a conflict, not a second service.
            code, _, err = await temps(
                "backup", "restore-service", *args[:-1], f"{name}2",
                env={**base, "TEMPS_ENCRYPTION_KEY": key},
            )  # fmt: skip
            assert code == 5, err
