"""S3 storage on SeaweedFS through the platform: API → bus → provisioner → Docker, then boto3
(path-style, HTTPS verified with the installation CA) against the service.

One service (`store`) carries most tests; quota gets its own small one. The provisioner runs
with a 1 MiB quota unit (`size_gb: 3` means 3 MiB) and a 1 s job period.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import botocore.config
import botocore.exceptions
import docker
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from temps_provisioner.context import Provisioner
from temps_provisioner.settings import ProvisionerSettings
from temps_provisioner.storage_jobs import lifecycle_pass
from temps_shared.bus.connect import connect_nats
from temps_shared.crypto import KeyRing
from temps_shared.engines.s3 import S3Identity, S3Parameters, scoped_actions
from temps_shared.engines.s3_jobs import apply_identities, run_lifecycle
from temps_shared.messages import Role
from temps_shared.runtime import DockerRuntime
from temps_shared.store.certificate_authority import ensure_installation_ca
from temps_shared.store.pool import create_pool
from temps_shared.store.services import get_service, installation_id

from tests.integration.conftest import Platform, admin_token
from tests.support import RUN_PORT_RANGE_S3, TEST_LABEL, eventually, wait_status
from tests.support import RUN_PREFIX as P

pytestmark = pytest.mark.asyncio(loop_scope="session")
MiB = 1024 * 1024
JOBS_ENV = {
    "TEMPS_S3_QUOTA_UNIT_MB": "1",
    "TEMPS_S3_QUOTA_PERIOD_S": "1",
    # Away from the range other modules use.
    "TEMPS_LOCAL_PORT_RANGE": "{}-{}".format(*RUN_PORT_RANGE_S3),
}


@pytest.fixture(scope="module")
async def platform(
    base_env: dict[str, str], docker_client: docker.DockerClient
) -> AsyncIterator[Platform]:
    """The conftest's platform, with a tiny quota unit and a fast job period."""
    running = Platform({**base_env, **JOBS_ENV})
    await running.start_api()
    await running.start_provisioner()
    yield running
    with contextlib.suppress(asyncio.CancelledError):
        await running.stop()


@pytest.fixture(scope="module")
async def api(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """The conftest's API client, dropping idle connections after 1 s: uvicorn closes them
    after 5 s, and httpx (also 5 s) can reuse one as it closes (httpx.ReadError)."""
    token = admin_token(Path(platform.env["TEMPS_DATA_DIR"]))
    async with httpx.AsyncClient(
        base_url=platform.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        limits=httpx.Limits(keepalive_expiry=1.0),
    ) as client:
        yield client


@pytest.fixture(scope="module")
async def jobs(platform: Platform) -> AsyncIterator[Provisioner]:
    """What the provisioner's job loop works with, to run a job on demand (e.g. as of a later
    date)."""
    settings = ProvisionerSettings(
        **{k.removeprefix("TEMPS_").lower(): v for k, v in platform.env.items()}
    )
    pool = await create_pool(settings.database_dsn(), max_size=2)
    nc = await connect_nats(
        settings.nats_url, Role.PROVISIONER, settings.data_dir, name="test-s3-jobs"
    )
    docker_client = docker.from_env()
    keyring = KeyRing.from_data_dir(settings.data_dir)
    yield Provisioner(
        pool=pool,
        js=nc.jetstream(),
        runtime=DockerRuntime(docker_client, settings.docker_network),
        keyring=keyring,
        ca=await ensure_installation_ca(pool, keyring, settings.data_dir),
        settings=settings,
        installation=await installation_id(pool),
    )
    await nc.close()
    await pool.close()
    docker_client.close()


def _client(creds: dict[str, Any], ca_file: Path, **keys: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=creds["local_endpoint"],
        aws_access_key_id=keys.get("access_key", creds["access_key"]),
        aws_secret_access_key=keys.get("secret_key", creds["secret_key"]),
        region_name=creds["region"],
        verify=str(ca_file),
        config=botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


class Store:
    """A running S3 service as a test sees it."""

    def __init__(self, service: dict[str, Any], creds: dict[str, Any], ca_file: Path) -> None:
        self.id: str = service["id"]
        self.service = service
        self.creds = creds
        self.ca_file = ca_file
        self.bucket: str = creds["bucket"]
        self.s3 = _client(creds, ca_file)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


async def _create(api: httpx.AsyncClient, name: str, **parameters: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/external-services",
        json={"name": name, "service_type": "s3", "parameters": parameters},
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def _store(
    api: httpx.AsyncClient, name: str, tmp: Path, **parameters: Any
) -> tuple[Store, float]:
    started = time.monotonic()
    created = await _create(api, name, **parameters)
    service = await wait_status(api, created["id"], "operational")
    elapsed = time.monotonic() - started
    response = await api.get(f"/api/external-services/{created['id']}/credentials")
    assert response.status_code == 200, response.text
    creds = response.json()
    ca_file = tmp / f"{name}-ca.pem"
    ca_file.write_text(creds["ca_certificate"])
    return Store(service, creds, ca_file), elapsed


@pytest.fixture(scope="module")
async def store(
    api: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Store]:
    made, elapsed = await _store(api, f"{P}store", tmp_path_factory.mktemp("s3"), size_gb=1000)
    made.service["time_to_operational_s"] = elapsed
    yield made
    await api.delete(f"/api/external-services/{made.id}")


async def _patch(api: httpx.AsyncClient, store: Store, **parameters: Any) -> dict[str, Any]:
    response = await api.patch(
        f"/api/external-services/{store.id}", json={"parameters": parameters}
    )
    assert response.status_code == 202, response.text

    async def converged() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/external-services/{store.id}")).json()
        done = body["status"] == "operational" and body["observed_generation"] == body["generation"]
        return body if done else None

    return await eventually(converged, 60, f"{store.service['name']} to apply {parameters}")


async def test_create_is_operational_with_its_bucket(api: httpx.AsyncClient, store: Store) -> None:
    print(f"time to operational: {store.service['time_to_operational_s']:.2f}s")
    info = store.service["connection_info"]
    assert info["host"] == f"temps-s3-{P}store"
    assert info["port"] == 8443
    assert info["bucket"] == f"{P}store"
    assert info["scheme"] == "https"
    assert store.service["version"] == "4"
    assert store.service["parameters"] == S3Parameters(size_gb=1000).model_dump()
    assert set(store.creds) == {
        "access_key",
        "secret_key",
        "endpoint",
        "local_endpoint",
        "bucket",
        "region",
        "ca_certificate",
    }
    assert store.creds["endpoint"] == f"https://temps-s3-{P}store:8443"
    assert store.creds["local_endpoint"] == f"https://127.0.0.1:{info['local_port']}"
    buckets = await asyncio.to_thread(store.s3.list_buckets)
    assert [b["Name"] for b in buckets["Buckets"]] == [store.bucket]

    # The certificate really is checked: without the installation CA, TLS fails.
    system_cas = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    with pytest.raises(botocore.exceptions.SSLError):
        await asyncio.to_thread(_client(store.creds, system_cas).list_buckets)


async def test_objects_round_trip(store: Store) -> None:
    small = os.urandom(10 * MiB)
    await asyncio.to_thread(store.s3.put_object, Bucket=store.bucket, Key="ten.bin", Body=small)
    got = await asyncio.to_thread(store.s3.get_object, Bucket=store.bucket, Key="ten.bin")
    assert got["Body"].read() == small

    large = os.urandom(50 * MiB)
    multipart = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    await asyncio.to_thread(
        store.s3.upload_fileobj, io.BytesIO(large), store.bucket, "fifty.bin", Config=multipart
    )
    head = await asyncio.to_thread(store.s3.head_object, Bucket=store.bucket, Key="fifty.bin")
    assert head["ETag"].strip('"').endswith("-7")  # 7 parts of 8 MiB
    out = io.BytesIO()
    await asyncio.to_thread(store.s3.download_fileobj, store.bucket, "fifty.bin", out)
    assert out.getvalue() == large
    for key in ("ten.bin", "fifty.bin"):
        await asyncio.to_thread(store.s3.delete_object, Bucket=store.bucket, Key=key)


async def test_presigned_get(store: Store) -> None:
    await asyncio.to_thread(
        store.s3.put_object, Bucket=store.bucket, Key="signed.txt", Body=b"signed"
    )
    params = {"Bucket": store.bucket, "Key": "signed.txt"}
    url = store.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
    short = store.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=1)
    async with httpx.AsyncClient(verify=store.ssl_context()) as http:
        response = await http.get(url)
        assert response.status_code == 200
        assert response.content == b"signed"

        signature = url.rsplit("X-Amz-Signature=", 1)[1][:64]
        tampered = url.replace(signature, signature[::-1])
        assert (await http.get(tampered)).status_code == 403
        assert (await http.get(url.replace("signed.txt", "other.txt"))).status_code == 403

        await asyncio.sleep(2.5)
        assert (await http.get(short)).status_code == 403


async def test_public_read_follows_patch(api: httpx.AsyncClient, store: Store) -> None:
    other = f"{P}other"
    await asyncio.to_thread(store.s3.create_bucket, Bucket=other)
    for bucket in (store.bucket, other):
        await asyncio.to_thread(store.s3.put_object, Bucket=bucket, Key="pub.txt", Body=b"hi")
    base = store.creds["local_endpoint"]
    async with httpx.AsyncClient(base_url=base, verify=store.ssl_context()) as anonymous:
        assert (await anonymous.get(f"/{store.bucket}/pub.txt")).status_code == 403

        body = await _patch(api, store, **{"public-read": True})
        assert body["parameters"]["public_read"] is True
        response = await anonymous.get(f"/{store.bucket}/pub.txt")
        assert response.status_code == 200
        assert response.content == b"hi"
        assert (await anonymous.get(f"/{store.bucket}?list-type=2")).status_code == 200
        assert (await anonymous.get(f"/{other}/pub.txt")).status_code == 403
        assert (await anonymous.put(f"/{store.bucket}/x.txt", content=b"no")).status_code == 403

        await _patch(api, store, public_read=False)
        assert (await anonymous.get(f"/{store.bucket}/pub.txt")).status_code == 403
        assert (await anonymous.get(f"/{store.bucket}?list-type=2")).status_code == 403


async def test_versioning_keeps_every_version(api: httpx.AsyncClient, store: Store) -> None:
    await _patch(api, store, versioning=True)
    status = await asyncio.to_thread(store.s3.get_bucket_versioning, Bucket=store.bucket)
    assert status["Status"] == "Enabled"
    for n in range(3):
        await asyncio.to_thread(
            store.s3.put_object, Bucket=store.bucket, Key="doc.txt", Body=f"v{n}".encode()
        )
    await asyncio.to_thread(store.s3.delete_object, Bucket=store.bucket, Key="doc.txt")

    listed = await asyncio.to_thread(
        store.s3.list_object_versions, Bucket=store.bucket, Prefix="doc.txt"
    )
    versions, markers = listed.get("Versions", []), listed.get("DeleteMarkers", [])
    assert len(versions) == 3
    assert len(markers) == 1
    assert markers[0]["IsLatest"]
    contents = set()
    for version in versions:
        got = await asyncio.to_thread(
            store.s3.get_object, Bucket=store.bucket, Key="doc.txt", VersionId=version["VersionId"]
        )
        contents.add(got["Body"].read())
    assert contents == {b"v0", b"v1", b"v2"}

    await _patch(api, store, versioning=False)  # suspended: a versioned bucket cannot go back
    status = await asyncio.to_thread(store.s3.get_bucket_versioning, Bucket=store.bucket)
    assert status["Status"] == "Suspended"


async def test_lifecycle_expires_as_of_a_later_date(
    api: httpx.AsyncClient, store: Store, jobs: Provisioner
) -> None:
    rules = [{"prefix": "tmp/", "expire_days": 1}]
    await _patch(api, store, lifecycle=rules)
    configured = await asyncio.to_thread(
        store.s3.get_bucket_lifecycle_configuration, Bucket=store.bucket
    )
    assert [(r["Filter"]["Prefix"], r["Expiration"]["Days"]) for r in configured["Rules"]] == [
        ("tmp/", 1)
    ]
    for key in ("tmp/a.txt", "tmp/deep/b.txt", "keep/c.txt", "tmpfile.txt"):
        await asyncio.to_thread(store.s3.put_object, Bucket=store.bucket, Key=key, Body=b"x")

    # The job the provisioner runs on its period, on the stored service, as of a given time.
    service = await get_service(jobs.pool, UUID(store.id))
    assert service is not None
    now = datetime.now(UTC)
    assert await lifecycle_pass(jobs, service, now) == []
    expired = await lifecycle_pass(jobs, service, now + timedelta(days=2))
    assert sorted(expired) == ["tmp/a.txt", "tmp/deep/b.txt"]
    parsed = S3Parameters.model_validate({"lifecycle": rules}).lifecycle
    assert await run_lifecycle(store.s3, store.bucket, parsed, now + timedelta(days=2)) == []
    listed = await asyncio.to_thread(store.s3.list_objects_v2, Bucket=store.bucket)
    keys = {o["Key"] for o in listed.get("Contents", [])}
    assert not {k for k in keys if k.startswith("tmp/")}
    assert {"keep/c.txt", "tmpfile.txt"} <= keys

    await _patch(api, store, lifecycle=[])
    with pytest.raises(botocore.exceptions.ClientError):
        await asyncio.to_thread(store.s3.get_bucket_lifecycle_configuration, Bucket=store.bucket)


class SlowBody(io.BytesIO):
    """An upload body that trickles out, so the request is in flight for a few seconds."""

    def read(self, size: int | None = -1) -> bytes:
        time.sleep(0.01)
        return super().read(64 * 1024 if size is None or size < 0 else min(size, 64 * 1024))


async def test_adding_an_identity_does_not_fail_an_upload_in_flight(
    store: Store, jobs: Provisioner
) -> None:
    data = os.urandom(24 * MiB)
    outcome: dict[str, Any] = {}

    def upload() -> None:
        try:
            store.s3.put_object(Bucket=store.bucket, Key="inflight.bin", Body=SlowBody(data))
            outcome["ok"] = True
        except Exception as exc:
            outcome["error"] = exc

    # A multipart upload spans the reload too.
    multipart = await asyncio.to_thread(
        store.s3.create_multipart_upload, Bucket=store.bucket, Key="parts.bin"
    )
    part_args = {"Bucket": store.bucket, "Key": "parts.bin", "UploadId": multipart["UploadId"]}
    first = await asyncio.to_thread(
        store.s3.upload_part, PartNumber=1, Body=data[: 5 * MiB], **part_args
    )

    thread = threading.Thread(target=upload)
    thread.start()
    await asyncio.sleep(0.5)
    identity = S3Identity(
        "link-test", "TEMPSLINKTEST0000001", "s" * 40, scoped_actions(store.bucket)
    )
    await apply_identities(jobs.runtime, f"temps-s3-{P}store", [identity])
    assert thread.is_alive(), "the upload finished before the identity was added"
    await asyncio.to_thread(thread.join, 60)
    assert outcome == {"ok": True}
    got = await asyncio.to_thread(store.s3.get_object, Bucket=store.bucket, Key="inflight.bin")
    assert got["Body"].read() == data

    second = await asyncio.to_thread(
        store.s3.upload_part, PartNumber=2, Body=data[5 * MiB : 6 * MiB], **part_args
    )
    await asyncio.to_thread(
        store.s3.complete_multipart_upload,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": first["ETag"]},
                {"PartNumber": 2, "ETag": second["ETag"]},
            ]
        },
        **part_args,
    )

    # The new identity works at once, in its bucket only; the admin still works.
    linked = _client(
        store.creds, store.ca_file, access_key=identity.access_key, secret_key=identity.secret_key
    )
    await asyncio.to_thread(linked.put_object, Bucket=store.bucket, Key="linked.txt", Body=b"l")
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        await asyncio.to_thread(linked.list_objects_v2, Bucket=f"{P}other")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    await asyncio.to_thread(store.s3.list_buckets)


async def test_stop_start_keeps_objects_identities_and_port(
    api: httpx.AsyncClient, store: Store
) -> None:
    await asyncio.to_thread(store.s3.put_object, Bucket=store.bucket, Key="kept", Body=b"k")
    assert (await api.post(f"/api/external-services/{store.id}/stop")).status_code == 202
    await wait_status(api, store.id, "stopped")
    assert (await api.post(f"/api/external-services/{store.id}/start")).status_code == 202
    after = await wait_status(api, store.id, "operational")
    assert after["connection_info"] == store.service["connection_info"]
    got = await asyncio.to_thread(store.s3.get_object, Bucket=store.bucket, Key="kept")
    assert got["Body"].read() == b"k"
    # Identities added through the filer live on the volume too.
    linked = _client(
        store.creds, store.ca_file, access_key="TEMPSLINKTEST0000001", secret_key="s" * 40
    )
    got = await asyncio.to_thread(linked.get_object, Bucket=store.bucket, Key="linked.txt")
    assert got["Body"].read() == b"l"


async def test_only_the_s3_port_answers_on_the_private_network(
    store: Store, docker_client: docker.DockerClient
) -> None:
    host = f"temps-s3-{P}store"
    container = docker_client.containers.get(host)
    command = container.attrs["Config"]["Cmd"]
    assert "-master.telemetry=false" in command
    assert "-ip.bind=127.0.0.1" in command

    # S3 HTTPS 8443; internal S3 8444 (https) and 8333 (http); master 9333; volume 9340;
    # filer 8888; admin 23646; and their gRPC ports (+10000).
    ports = [8443, 8444, 8333, 18333, 9333, 19333, 9340, 19340, 8888, 18888, 23646, 33646]
    probe = "; ".join(
        f"if timeout 3 bash -c '</dev/tcp/{host}/{port}' 2>/dev/null;"
        f" then echo {port}=open; else echo {port}=closed; fi"
        for port in ports
    )
    output = await asyncio.to_thread(
        docker_client.containers.run,
        "temps/base:bookworm",
        ["bash", "-c", probe],
        network="temps",
        remove=True,
        labels={TEST_LABEL: "s3-port-probe"},
    )
    answers = dict(line.split("=") for line in output.decode().split())
    assert answers == {str(p): "open" if p == 8443 else "closed" for p in ports}


async def test_quota_refuses_writes_and_degrades_then_recovers(
    api: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    small, _ = await _store(api, f"{P}quota", tmp_path_factory.mktemp("quota"), size_gb=3)
    s3 = small.s3
    await asyncio.to_thread(s3.put_object, Bucket=small.bucket, Key="a", Body=os.urandom(2 * MiB))
    await asyncio.to_thread(s3.put_object, Bucket=small.bucket, Key="b", Body=os.urandom(2 * MiB))

    async def write_refused() -> str | None:
        try:
            await asyncio.to_thread(s3.put_object, Bucket=small.bucket, Key="p", Body=b"p" * 1024)
        except botocore.exceptions.ClientError as exc:
            code = exc.response["Error"]["Code"]
            assert code == "InternalError"  # SeaweedFS answers a blocked write with 500
            return code
        return None

    # Usage reaches SeaweedFS' statistics a few seconds after the write; then one period.
    await eventually(write_refused, 30, "writes over the quota to be refused", interval_s=0.5)
    degraded = await wait_status(api, small.id, "degraded", timeout_s=15)
    assert "quota" in degraded["status_reason"]
    assert "size_gb" in degraded["status_reason"]
    # Reads and deletes still work.
    got = await asyncio.to_thread(s3.get_object, Bucket=small.bucket, Key="a")
    assert len(got["Body"].read()) == 2 * MiB
    for key in ("a", "b", "p"):
        await asyncio.to_thread(s3.delete_object, Bucket=small.bucket, Key=key)

    async def write_accepted() -> bool:
        return await write_refused() is None

    await eventually(write_accepted, 30, "writes to be accepted again", interval_s=0.5)
    recovered = await wait_status(api, small.id, "operational", timeout_s=15)
    assert recovered["status_reason"] is None
    await api.delete(f"/api/external-services/{small.id}")


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"size_gb": 0}, "size_gb"),
        ({"lifecycle": [{"prefix": "tmp/", "expire_days": 0}]}, "expire_days"),
        ({"lifecycle": [{"expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "/abs", "expire_days": 3}]}, "prefix"),
    ],
)
async def test_bad_input_is_refused(
    api: httpx.AsyncClient, store: Store, parameters: dict[str, Any], field: str
) -> None:
    response = await api.post(
        "/api/external-services",
        json={"name": f"{P}bad", "service_type": "s3", "parameters": parameters},
    )
    assert response.status_code == 422, response.text
    assert field in response.text
    response = await api.patch(
        f"/api/external-services/{store.id}", json={"parameters": parameters}
    )
    assert response.status_code == 422, response.text
    assert field in response.text
