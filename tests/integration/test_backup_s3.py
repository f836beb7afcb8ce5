"""Backups of S3 services end to end: an S3 service (SeaweedFS) made through the API, backed
up by the backup worker into a real S3 store, wiped and changed, restored in place through the
API — every bucket, object, version (content and order), delete marker, metadata, tag and
bucket setting back. A malformed archive is refused and changes nothing. Real NATS,
PostgreSQL, Docker, S3."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import docker
import httpx
import pyrage
import pytest
import zstandard
from boto3.s3.transfer import TransferConfig
from temps_shared.backups import layout
from temps_shared.backups.codec import encode
from temps_shared.backups.identity import backup_identity
from temps_shared.backups.protocol import ServiceHandle
from temps_shared.backups.s3 import S3Backup
from temps_shared.crypto import KeyRing, load_or_create_master_key

from tests.integration.backup_store import SeaweedStore, store_with_worker
from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
STORE_BUCKET = "temps-backups"
MiB = 1024 * 1024
SERVICE = f"{P}bks3"
VERSIONED = f"{P}ver"
PLAIN = f"{P}plain"
EXTRA = f"{P}extra"
CORS = [{"AllowedMethods": ["GET"], "AllowedOrigins": ["https://app.example"], "MaxAgeSeconds": 60}]
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "PublicRead",
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{VERSIONED}/*"],
        }
    ],
}
LIFECYCLE = [
    {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 3}}
]


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


class Service:
    """The S3 service under test: its id, an admin boto3 client, and a handle as the worker
    builds one (for the figures)."""

    def __init__(self, service_id: str, creds: dict[str, Any], ca_file: Path, handle: Any) -> None:
        self.id = service_id
        self.creds = creds
        self.handle: ServiceHandle = handle
        self.s3: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=creds["local_endpoint"],
            aws_access_key_id=creds["access_key"],
            aws_secret_access_key=creds["secret_key"],
            region_name=creds["region"],
            verify=str(ca_file),
            config=botocore.config.Config(
                signature_version="s3v4", s3={"addressing_style": "path"}
            ),
        )


@pytest.fixture(scope="module")
async def service(
    api: httpx.AsyncClient,
    store: SeaweedStore,
    data_dir: Path,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    response = await api.post(
        "/api/external-services", json={"name": SERVICE, "service_type": "s3", "parameters": {}}
    )
    assert response.status_code == 202, response.text
    service_id = response.json()["id"]
    body = await wait_status(api, service_id, "operational", timeout_s=120)
    creds = await credentials(api, service_id)
    ca_file = tmp_path_factory.mktemp("s3-ca") / "ca.pem"
    ca_file.write_text(creds["ca_certificate"])
    # The restore tests leave the worker's test restores out (the last test turns them on).
    response = await api.patch(
        f"/api/external-services/{service_id}/backups", json={"verify": "off"}
    )
    assert response.status_code == 200, response.text
    handle = ServiceHandle(
        client=docker_client,
        container=body["connection_info"]["host"],
        credentials={"access_key": creds["access_key"], "secret_key": creds["secret_key"]},
        endpoints={"s3": ("127.0.0.1", body["connection_info"]["local_port"])},
        ca_pem=creds["ca_certificate"],
        identity=backup_identity(load_or_create_master_key(data_dir)),
    )
    yield Service(service_id, creds, ca_file, handle)
    await api.delete(f"/api/external-services/{service_id}")


async def _backup(api: httpx.AsyncClient, service_id: str) -> dict[str, Any]:
    response = await api.post(f"/api/external-services/{service_id}/backups")
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]

    async def done() -> dict[str, Any] | None:
        entry = (await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")).json()
        assert entry["state"] != "failed", entry.get("reason")
        return dict(entry) if entry["state"] == "completed" else None

    return await eventually(done, 180, f"backup {backup_id} to complete")


async def _restore(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    response = await api.post(f"/api/external-services/{service_id}/backups/{backup_id}/restore")
    assert response.status_code == 202, response.text
    restore_id = response.json()["restore"]["id"]

    async def ended() -> dict[str, Any] | None:
        entry = (await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")).json()
        restore = entry["restore"]
        assert restore["id"] == restore_id
        return dict(restore) if restore["state"] in ("completed", "failed") else None

    return await eventually(ended, 180, f"restore {restore_id} to end")


async def _verification(api: httpx.AsyncClient, service_id: str, backup_id: str) -> dict[str, Any]:
    """The backup's verification (a test restore the worker runs after it) once it ended."""

    async def outcome() -> dict[str, Any] | None:
        entry = (await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")).json()
        verification = entry["verification"]
        if verification and verification["state"] in ("verified", "verification_failed"):
            return dict(verification)
        return None

    return await eventually(outcome, 240, f"backup {backup_id}'s verification", 1.0)


# --- what the service holds, as a test reads it ----------------------------------------------


def _versions(s3: Any, bucket: str) -> dict[str, list[dict[str, Any]]]:
    """Per key, its versions oldest first: content, content type, metadata, tags, or a delete
    marker. SeaweedFS' version ids sort newest first (its listing's order)."""
    listing = s3.list_object_versions(Bucket=bucket)
    assert not listing.get("IsTruncated")
    items = [(v["Key"], v["VersionId"], False) for v in listing.get("Versions", [])]
    items += [(m["Key"], m["VersionId"], True) for m in listing.get("DeleteMarkers", [])]
    result: dict[str, list[dict[str, Any]]] = {}
    for key, version_id, marker in sorted(items, key=lambda i: (i[0], i[1]), reverse=True):
        if marker:
            result.setdefault(key, []).append({"delete_marker": True})
            continue
        by_version = {"VersionId": version_id} if version_id != "null" else {}
        got = s3.get_object(Bucket=bucket, Key=key, **by_version)
        tags = s3.get_object_tagging(Bucket=bucket, Key=key, **by_version)["TagSet"]
        result.setdefault(key, []).append(
            {
                "sha256": hashlib.sha256(got["Body"].read()).hexdigest(),
                "etag": got["ETag"],
                "content_type": got["ContentType"],
                "metadata": got["Metadata"],
                "cache_control": got.get("CacheControl"),
                "tags": {t["Key"]: t["Value"] for t in tags},
            }
        )
    return result


def _settings(s3: Any, bucket: str) -> dict[str, Any]:
    def absent(call: Any) -> Any:
        try:
            return call(Bucket=bucket)
        except s3.exceptions.ClientError:
            return None

    tags = absent(s3.get_bucket_tagging)
    cors = absent(s3.get_bucket_cors)
    lifecycle = absent(s3.get_bucket_lifecycle_configuration)
    policy = absent(s3.get_bucket_policy)
    return {
        "versioning": s3.get_bucket_versioning(Bucket=bucket).get("Status"),
        "tags": tags and tags["TagSet"],
        "cors": cors and cors["CORSRules"],
        "lifecycle": lifecycle and lifecycle["Rules"],
        "policy": policy and json.loads(policy["Policy"]),
    }


def _state(s3: Any) -> dict[str, Any]:
    buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    return {b: {"settings": _settings(s3, b), "versions": _versions(s3, b)} for b in buckets}


def _fill(s3: Any) -> None:
    """Two buckets besides the service's own: one versioned (3 versions of a key then a delete
    marker, a multipart object, tags, CORS, a policy, lifecycle), one plain (metadata, headers,
    odd keys, an empty object, a multipart object)."""
    s3.put_object(Bucket=SERVICE, Key="readme.txt", Body=b"the default bucket")
    s3.create_bucket(Bucket=VERSIONED)
    s3.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    for n in range(3):
        s3.put_object(
            Bucket=VERSIONED,
            Key="doc.txt",
            Body=f"version {n}".encode() * (n + 1),
            ContentType=f"text/x-v{n}",
            Metadata={"revision": str(n), "author": "ada"},
        )
    s3.delete_object(Bucket=VERSIONED, Key="doc.txt")
    s3.put_object(
        Bucket=VERSIONED, Key="live.json", Body=b'{"a": 1}', ContentType="application/json"
    )
    s3.put_object(
        Bucket=VERSIONED, Key="live.json", Body=b'{"a": 2}', Tagging="stage=final&owner=team%20b"
    )
    s3.upload_fileobj(
        io.BytesIO(bytes(range(256)) * (16 * MiB // 256)),
        VERSIONED,
        "big/blob.bin",
        Config=TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB),
    )
    s3.put_bucket_tagging(Bucket=VERSIONED, Tagging={"TagSet": [{"Key": "team", "Value": "data"}]})
    s3.put_bucket_cors(Bucket=VERSIONED, CORSConfiguration={"CORSRules": CORS})
    s3.put_bucket_policy(Bucket=VERSIONED, Policy=json.dumps(POLICY))
    s3.put_bucket_lifecycle_configuration(
        Bucket=VERSIONED, LifecycleConfiguration={"Rules": LIFECYCLE}
    )
    s3.create_bucket(Bucket=PLAIN)
    s3.put_object(
        Bucket=PLAIN,
        Key="images/ünïcode name+1.png",
        Body=b"\x89PNG" + bytes(1000),
        ContentType="image/png",
        CacheControl="max-age=600",
        Metadata={"origin": "upload"},
    )
    s3.put_object(Bucket=PLAIN, Key="empty/", Body=b"")
    s3.put_object(Bucket=PLAIN, Key="notes.txt", Body=b"plain notes")
    # SeaweedFS lists this one's version with another ETag than HEAD gives (see s3._etag).
    s3.upload_fileobj(
        io.BytesIO(os.urandom(16 * MiB)),
        PLAIN,
        "big/plain.bin",
        Config=TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB),
    )


def _wipe_and_change(s3: Any) -> None:
    """Everything the restore must undo: versions and markers gone, new objects and a new
    bucket, changed settings, an object overwritten."""
    listing = s3.list_object_versions(Bucket=VERSIONED)
    for item in [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])]:
        s3.delete_object(Bucket=VERSIONED, Key=item["Key"], VersionId=item["VersionId"])
    s3.put_object(Bucket=VERSIONED, Key="intruder.txt", Body=b"not in the backup")
    s3.put_bucket_tagging(Bucket=VERSIONED, Tagging={"TagSet": [{"Key": "team", "Value": "x"}]})
    s3.delete_bucket_cors(Bucket=VERSIONED)
    s3.delete_bucket_policy(Bucket=VERSIONED)
    s3.put_object(Bucket=PLAIN, Key="notes.txt", Body=b"overwritten")
    s3.delete_object(Bucket=PLAIN, Key="empty/")
    s3.put_bucket_versioning(Bucket=PLAIN, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=PLAIN, Key="notes.txt", Body=b"a version of later")
    s3.create_bucket(Bucket=EXTRA)
    s3.put_object(Bucket=EXTRA, Key="x", Body=b"x")
    s3.delete_object(Bucket=SERVICE, Key="readme.txt")


def _decrypt(store: SeaweedStore, key: str, identity: str, workdir: Path) -> bytes:
    """The artifact at `key` decrypted by Debian's `age`, then decompressed."""
    identity_file = workdir / "identity.txt"
    identity_file.write_text(identity + "\n")
    stored = workdir / "artifact.age"
    store.client().download_file(STORE_BUCKET, key, str(stored))
    decrypted = workdir / "artifact.zst"
    subprocess.run(
        ["age", "-d", "-i", str(identity_file), "-o", str(decrypted), str(stored)],
        timeout=60,
        check=True,
    )
    with decrypted.open("rb") as compressed:
        return zstandard.ZstdDecompressor().stream_reader(compressed).read()


def _artifact_keys(store: SeaweedStore, backup: dict[str, Any]) -> dict[str, str]:
    listed = store.client().list_objects_v2(
        Bucket=STORE_BUCKET, Prefix=f"external_services/s3/{SERVICE}/"
    )["Contents"]
    keys = [o["Key"] for o in listed if f"/{backup['id']}/" in o["Key"]]
    return {k.rsplit("/", 1)[1]: k for k in keys}


# --- tests -----------------------------------------------------------------------------------


async def test_round_trip_every_object_version_metadata_and_setting(
    api: httpx.AsyncClient, store: SeaweedStore, service: Service, tmp_path: Path
) -> None:
    s3 = service.s3
    await asyncio.to_thread(_fill, s3)
    before = await asyncio.to_thread(_state, s3)
    figures_before = await asyncio.to_thread(S3Backup().figures, service.handle)
    assert set(before) == {SERVICE, VERSIONED, PLAIN}
    doc = before[VERSIONED]["versions"]["doc.txt"]
    assert [v.get("content_type") for v in doc] == ["text/x-v0", "text/x-v1", "text/x-v2", None]
    assert doc[-1] == {"delete_marker": True}
    blob = before[VERSIONED]["versions"]["big/blob.bin"][0]
    assert blob["etag"].endswith('-2"')  # two parts of 8 MiB
    assert figures_before["buckets"][VERSIONED]["objects"] == 6
    assert figures_before["buckets"][VERSIONED]["delete_markers"] == 1

    started = time.monotonic()
    backup = await _backup(api, service.id)
    print(f"backup: {time.monotonic() - started:.1f}s, {backup['size_bytes']} bytes stored")

    # The artifacts are standard: `age -d`, zstd, then tar and JSON.
    keys = _artifact_keys(store, backup)
    assert set(keys) == {"manifest.json", "objects.tar.zst.age", "buckets.json.zst.age"}
    plain_tar = await asyncio.to_thread(
        _decrypt, store, keys["objects.tar.zst.age"], service.handle.identity, tmp_path
    )
    with tarfile.open(fileobj=io.BytesIO(plain_tar), mode="r:") as tar:
        members = {m.name: m.size for m in tar.getmembers()}
    assert len(members) == 6 + 1 + 4  # versioned objects, the default bucket's, plain's
    assert 16 * MiB in members.values()
    index = json.loads(
        await asyncio.to_thread(
            _decrypt, store, keys["buckets.json.zst.age"], service.handle.identity, tmp_path
        )
    )
    (versioned,) = [b for b in index["buckets"] if b["name"] == VERSIONED]
    assert versioned["settings"]["versioning"] == "Enabled"
    assert versioned["settings"]["tags"] == {"team": "data"}
    assert json.loads(versioned["settings"]["policy"])["Statement"][0]["Sid"] == "PublicRead"
    assert before[VERSIONED]["settings"]["cors"]
    assert before[VERSIONED]["settings"]["lifecycle"]
    assert [e["delete_marker"] for e in versioned["entries"] if e["key"] == "doc.txt"] == [
        False, False, False, True,
    ]  # fmt: skip

    await asyncio.to_thread(_wipe_and_change, s3)
    assert await asyncio.to_thread(_state, s3) != before

    started = time.monotonic()
    restore = await _restore(api, service.id, backup["id"])
    assert restore["state"] == "completed", restore["reason"]
    print(f"restore: {time.monotonic() - started:.1f}s")

    after = await asyncio.to_thread(_state, s3)
    # The bucket made after the backup is emptied, not deleted (it could be a link's).
    assert after.pop(EXTRA)["versions"] == {}
    assert set(after) == set(before)
    for bucket in (SERVICE, VERSIONED):
        assert after[bucket] == before[bucket], bucket
    # The plain bucket was versioned since: it cannot be unversioned again, it is suspended;
    # its objects are the backup's (one version each).
    assert after[PLAIN]["settings"] == {**before[PLAIN]["settings"], "versioning": "Suspended"}
    assert after[PLAIN]["versions"] == before[PLAIN]["versions"]
    figures_after = await asyncio.to_thread(S3Backup().figures, service.handle)
    assert figures_after["buckets"].pop(EXTRA)["objects"] == 0
    assert figures_after["buckets"] == figures_before["buckets"]
    head = await asyncio.to_thread(s3.head_object, Bucket=VERSIONED, Key="live.json")
    assert head["ContentLength"] == len(b'{"a": 2}')


async def test_a_malformed_archive_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, store: SeaweedStore, service: Service, tmp_path: Path, data_dir: Path
) -> None:
    s3 = service.s3
    await asyncio.to_thread(s3.put_object, Bucket=SERVICE, Key="kept.txt", Body=b"kept")
    backup = await _backup(api, service.id)
    await asyncio.to_thread(s3.put_object, Bucket=SERVICE, Key="later.txt", Body=b"later")
    before = await asyncio.to_thread(_state, s3)

    # The index re-encrypted with the installation's key and the manifest's SHA-256 updated and
    # sealed again with the master key, so only the S3 engine can notice: a tar member name
    # that escapes its bucket.
    keys = _artifact_keys(store, backup)
    index = json.loads(
        await asyncio.to_thread(
            _decrypt, store, keys["buckets.json.zst.age"], service.handle.identity, tmp_path
        )
    )
    entry = next(e for b in index["buckets"] for e in b["entries"] if not e["delete_marker"])
    entry["member"] = "../../etc/passwd"
    recipient = str(pyrage.x25519.Identity.from_str(service.handle.identity).to_public())
    sink = io.BytesIO()
    encoded = encode(iter([json.dumps(index).encode()]), recipient, sink)
    client = store.client()
    client.put_object(Bucket=STORE_BUCKET, Key=keys["buckets.json.zst.age"], Body=sink.getvalue())
    manifest = json.loads(
        client.get_object(Bucket=STORE_BUCKET, Key=keys["manifest.json"])["Body"].read()
    )
    for artifact in manifest["artifacts"]:
        if artifact["name"] == "buckets.json.zst.age":
            artifact["sha256"], artifact["size"] = encoded.sha256, encoded.size
    manifest = layout.seal(manifest, KeyRing(load_or_create_master_key(data_dir)))
    client.put_object(
        Bucket=STORE_BUCKET, Key=keys["manifest.json"], Body=json.dumps(manifest).encode()
    )

    restore = await _restore(api, service.id, backup["id"])
    assert restore["state"] == "failed"
    assert "malformed S3 backup index" in restore["reason"]
    assert "invalid tar member name '../../etc/passwd'" in restore["reason"]
    assert await asyncio.to_thread(_state, s3) == before


async def test_restore_as_a_new_service(
    api: httpx.AsyncClient, store: SeaweedStore, service: Service, tmp_path: Path
) -> None:
    """The backup restored into a fresh SeaweedFS (a new service): the same versions, in the
    same order, the same figures; the original untouched."""
    backup = await _backup(api, service.id)
    original = await asyncio.to_thread(_state, service.s3)
    figures = await asyncio.to_thread(S3Backup().figures, service.handle)
    new_name = f"{P}bks3copy"
    response = await api.post(
        f"/api/external-services/{service.id}/backups/{backup['id']}/restore",
        json={"as_new_service": new_name},
    )
    assert response.status_code == 202, response.text
    new_id = response.json()["new_service"]["id"]
    restore_id = response.json()["restore"]["id"]
    try:

        async def ended() -> dict[str, Any] | None:
            entry = (
                await api.get(f"/api/external-services/{service.id}/backups/{backup['id']}")
            ).json()
            restore = entry["restore"]
            assert restore["id"] == restore_id
            return dict(restore) if restore["state"] in ("completed", "failed") else None

        restore = await eventually(ended, 240, f"restore {restore_id} into {new_name}", 0.5)
        assert restore["state"] == "completed", restore["reason"]
        new = await wait_status(api, new_id, "operational", timeout_s=60)
        creds = await credentials(api, new_id)
        assert creds["access_key"] != service.creds["access_key"]
        ca_file = tmp_path / "ca.pem"
        ca_file.write_text(creds["ca_certificate"])
        copy = Service(
            new_id,
            creds,
            ca_file,
            ServiceHandle(
                client=service.handle.client,
                container=new["connection_info"]["host"],
                credentials={"access_key": creds["access_key"], "secret_key": creds["secret_key"]},
                endpoints={"s3": ("127.0.0.1", new["connection_info"]["local_port"])},
                ca_pem=creds["ca_certificate"],
                identity=service.handle.identity,
            ),
        )
        copied = await asyncio.to_thread(_state, copy.s3)
        # The new service's own bucket is there too (empty, unless the restore came first).
        own = copied.pop(new_name, None)
        assert own is None or own["versions"] == {}
        assert copied == original
        copied_figures = await asyncio.to_thread(S3Backup().figures, copy.handle)
        copied_figures["buckets"].pop(new_name, None)
        assert copied_figures["buckets"] == figures["buckets"]
        assert await asyncio.to_thread(_state, service.s3) == original
    finally:
        await api.delete(f"/api/external-services/{new_id}")


async def test_the_backup_is_verified_by_a_test_restore(
    api: httpx.AsyncClient, store: SeaweedStore, service: Service
) -> None:
    """The worker restores the backup into a scratch SeaweedFS (dialled over TLS on its internal
    network) and finds the figures the backup recorded."""
    response = await api.patch(
        f"/api/external-services/{service.id}/backups", json={"verify": "every"}
    )
    assert response.status_code == 200, response.text
    figures = await asyncio.to_thread(S3Backup().figures, service.handle)
    backup = await _backup(api, service.id)
    verification = await _verification(api, service.id, backup["id"])
    assert verification["state"] == "verified", verification["reason"]
    assert verification["reason"] == figures["_summary"]
    print(f"verified: {verification['reason']}")
