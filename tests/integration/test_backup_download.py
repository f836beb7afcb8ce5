"""GET …/backups/{id}/download: the gateway reads the backup from the real S3 store, decrypts and
decompresses it as it streams; `pg_restore -l` reads the PostgreSQL dump it gives. Needs
`backups:read` and `secrets:read`; audited; a damaged artifact ends the download with an error,
never a silently short file. Real NATS, PostgreSQL, Docker, SeaweedFS."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from temps_shared.backups.codec import encode
from temps_shared.ids import container_name

from tests.integration.backup_platform import (  # noqa: F401  (the module's fixtures)
    BUCKET,
    create_service,
    module_store,
    pg_connect,
    platform_with_store,
    running_platform,
    store_env,
    take_backup,
)
from tests.integration.backup_store import SeaweedStore
from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _download(
    api: httpx.AsyncClient, url: str, target: Path, **params: str
) -> httpx.Response:
    """Stream the download into `target`; the response (its body already consumed)."""
    async with api.stream("GET", url, params=params, timeout=120) as response:
        if response.status_code == 200:
            with target.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
        else:
            await response.aread()
    return response


async def _token(api: httpx.AsyncClient, name: str, permissions: list[str]) -> str:
    response = await api.post("/api/tokens", json={"name": name, "permissions": permissions})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def test_a_postgres_dump_downloads_decrypted_and_pg_restore_reads_it(
    platform: Platform, api: httpx.AsyncClient, store: SeaweedStore, tmp_path: Path
) -> None:
    name = f"{P}dl"
    service_id = await create_service(
        api, name, "postgres", version="15", parameters={"replicas": 0}
    )
    conn = await pg_connect(await credentials(api, service_id))
    try:
        await conn.execute("CREATE TABLE downloaded_rows (id serial PRIMARY KEY, note text)")
        await conn.execute(
            "INSERT INTO downloaded_rows (note) SELECT md5(g::text) FROM generate_series(1, 2000) g"
        )
    finally:
        await conn.close()
    backup = await take_backup(api, service_id)
    url = f"/api/external-services/{service_id}/backups/{backup['id']}/download"

    # The default artifact: the service's own database, as `pg_dump -Fc` wrote it.
    dump = tmp_path / "main.dump"
    response = await _download(api, url, dump)
    assert response.status_code == 200, response.text
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    assert name in disposition
    main = response.headers["x-backup-artifact"]
    assert main.endswith(".dump")
    assert dump.read_bytes()[:5] == b"PGDMP"
    # pg_restore of the server's own version, in the service's container.
    listing = await asyncio.to_thread(
        subprocess.run,
        ["docker", "exec", "-i", container_name("postgres", name), "pg_restore", "-l"],
        stdin=dump.open("rb"),
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"TABLE public downloaded_rows" in listing.stdout
    assert b"TABLE DATA public downloaded_rows" in listing.stdout

    # Another artifact by name; an unknown one is 404 naming those there are.
    globals_sql = tmp_path / "globals.sql"
    response = await _download(api, url, globals_sql, artifact="globals.sql")
    assert response.status_code == 200, response.text
    assert b"CREATE ROLE" in globals_sql.read_bytes()
    missing = await api.get(url, params={"artifact": "nope.dump"})
    assert missing.status_code == 404, missing.text
    assert "globals.sql" in missing.json()["error"]["message"]
    unknown = await api.get(f"/api/external-services/{service_id}/backups/{service_id}/download")
    assert unknown.status_code == 404, unknown.text

    # A backup that did not complete has nothing to download or restore: 409.
    failed_id = uuid4()
    conn = await asyncpg.connect(platform.env["TEMPS_DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO backups (backup_id, service_id, state, reason)"
            " VALUES ($1, $2, 'failed', 'test')",
            failed_id,
            UUID(service_id),
        )
        base = f"/api/external-services/{service_id}/backups/{failed_id}"
        unfinished = await api.get(f"{base}/download")
        assert unfinished.status_code == 409, unfinished.text
        unfinished = await api.post(f"{base}/restore", json={"as_new_service": f"{P}never"})
        assert unfinished.status_code == 409, unfinished.text
    finally:
        await conn.execute("DELETE FROM backups WHERE backup_id = $1", failed_id)
        await conn.close()

    # backups:read alone (or secrets:read alone) is not enough.
    for permissions in (["backups:read"], ["secrets:read"]):
        token = await _token(api, f"{P}dl-{permissions[0].split(':')[0]}", permissions)
        async with platform.client(token) as limited:
            refused = await limited.get(url)
        assert refused.status_code == 403, refused.text
    token = await _token(api, f"{P}dl-both", ["backups:read", "secrets:read"])
    async with platform.client(token) as reader:
        allowed = await _download(reader, url, tmp_path / "again.dump")
    assert allowed.status_code == 200, allowed.text
    assert (tmp_path / "again.dump").read_bytes() == dump.read_bytes()

    # Every download is audited, with the artifact.
    entries = (await api.get("/api/audit-log", params={"service_id": service_id})).json()
    downloads = [e for e in entries if e["action"] == "backup.downloaded"]
    assert len(downloads) == 3, downloads
    assert sorted(e["details"]["artifact"] for e in downloads) == sorted(
        [main, "globals.sql", main]
    )


async def test_a_damaged_artifact_ends_the_download_with_an_error(
    api: httpx.AsyncClient, store: SeaweedStore, tmp_path: Path
) -> None:
    name = f"{P}dl"
    (service_id,) = [
        s["id"] for s in (await api.get("/api/external-services")).json() if s["name"] == name
    ]
    backup = (await api.get(f"/api/external-services/{service_id}/backups")).json()["backups"][0]
    url = f"/api/external-services/{service_id}/backups/{backup['id']}/download"
    s3 = store.client()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"external_services/postgres/{name}/")
    key = next(o["Key"] for o in listed["Contents"] if o["Key"].endswith("/globals.sql.zst.age"))
    original = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    damaged = bytearray(original)
    damaged[-20] ^= 0x01
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(damaged))
    try:
        with pytest.raises(httpx.HTTPError):
            await _download(api, url, tmp_path / "damaged.sql", artifact="globals.sql")
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=original)


async def test_a_forged_artifact_with_its_sha256_in_the_manifest_is_not_downloaded(
    api: httpx.AsyncClient, store: SeaweedStore, tmp_path: Path
) -> None:
    """Anyone who can write the bucket can encrypt a `globals.sql` of their own to the
    installation's recipient (the manifest names it) and put its SHA-256 in the manifest: the
    manifest's seal, made with the master key, no longer holds, and nothing is streamed."""
    name = f"{P}dl"
    (service_id,) = [
        s["id"] for s in (await api.get("/api/external-services")).json() if s["name"] == name
    ]
    backup = (await api.get(f"/api/external-services/{service_id}/backups")).json()["backups"][0]
    url = f"/api/external-services/{service_id}/backups/{backup['id']}/download"
    s3 = store.client()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"external_services/postgres/{name}/")
    keys = [o["Key"] for o in listed["Contents"] if f"/{backup['id']}/" in o["Key"]]
    manifest_key = next(k for k in keys if k.endswith("/manifest.json"))
    globals_key = next(k for k in keys if k.endswith("/globals.sql.zst.age"))
    manifest = s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read()
    original = s3.get_object(Bucket=BUCKET, Key=globals_key)["Body"].read()
    forged = json.loads(manifest)
    sink = io.BytesIO()
    encoded = encode(
        iter([b"ALTER ROLE attacker SUPERUSER;\n"]), forged["encryption"]["recipient"], sink
    )
    (entry,) = [a for a in forged["artifacts"] if a["name"] == "globals.sql.zst.age"]
    entry["sha256"], entry["size"] = encoded.sha256, encoded.size
    s3.put_object(Bucket=BUCKET, Key=globals_key, Body=sink.getvalue())
    s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=json.dumps(forged).encode())
    try:
        refused = await _download(api, url, tmp_path / "forged.sql", artifact="globals.sql")
        assert refused.status_code == 409, refused.text
        problem = refused.json()["error"]
        assert problem["code"] == "backup_not_sealed", problem
        assert "not sealed by this installation's key" in problem["message"], problem
        assert not (tmp_path / "forged.sql").exists()
    finally:
        s3.put_object(Bucket=BUCKET, Key=globals_key, Body=original)
        s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=manifest)
    restored = await _download(api, url, tmp_path / "globals.sql", artifact="globals.sql")
    assert restored.status_code == 200, restored.text


async def test_restoring_as_a_new_service_also_needs_the_right_to_create_one(
    platform: Platform, api: httpx.AsyncClient
) -> None:
    name = f"{P}dl"
    (service_id,) = [
        s["id"] for s in (await api.get("/api/external-services")).json() if s["name"] == name
    ]
    backup = (await api.get(f"/api/external-services/{service_id}/backups")).json()["backups"][0]
    url = f"/api/external-services/{service_id}/backups/{backup['id']}/restore"
    token = await _token(api, f"{P}dl-backups-writer", ["backups:read", "backups:write"])
    async with platform.client(token) as writer:
        refused = await writer.post(url, json={"as_new_service": f"{P}dl-copy"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["details"]["required"] == "external_services:write"
    names = [s["name"] for s in (await api.get("/api/external-services")).json()]
    assert f"{P}dl-copy" not in names
    after = (await api.get(f"/api/external-services/{service_id}/backups/{backup['id']}")).json()
    assert after["restore"] == backup.get("restore"), after
