"""Per-service archive identities on the built-in store (real SeaweedFS over TLS on the `temps`
network, real PostgreSQL with pgBackRest): each service's key opens its own
`pgbackrest/<service id>/` prefix and nothing else, the admin keeps working after the live
import, and pgBackRest inside a PostgreSQL container archives with such a key."""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import docker
import pytest
from botocore.exceptions import ClientError
from temps_shared.backups.archive_access import (
    ArchiveIdentity,
    apply_archive_identities,
    archive_identity,
    archive_prefix,
    identity_document,
)
from temps_shared.crypto import load_or_create_master_key
from temps_shared.engines.postgres import ARCHIVE_CONFIG, DATA_MOUNT, PGDATA, archive_command
from temps_shared.runtime.container_io import put_file

from tests.integration.wal_store import NETWORK, WalStore, wal_store
from tests.support import RUN_PREFIX, TEST_LABEL, eventually

SERVICE_A, SERVICE_B = uuid4(), uuid4()
STANZA = "x"
READY_WAIT_S = 60.0


@pytest.fixture(scope="module")
def store(
    docker_client: docker.DockerClient, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WalStore]:
    with wal_store(docker_client, data_dir, tmp_path_factory.mktemp("wal-store")) as running:
        yield running


def _repo_path(service_id: UUID) -> str:
    """pgBackRest's repo1-path for the service (as temps_shared.backups.pgbackrest.repo_path)."""
    return f"/pgbackrest/{service_id}"


def _identity(data_dir: Path, service_id: UUID) -> ArchiveIdentity:
    return (service_id, *archive_identity(load_or_create_master_key(data_dir), service_id))


def _denied(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    code = str(caught.value.response["Error"]["Code"])
    assert code in ("AccessDenied", "InvalidAccessKeyId", "403"), code
    return code


def test_identity_is_derived_per_service_and_stable() -> None:
    key, other_key = secrets.token_bytes(32), secrets.token_bytes(32)
    access_a, secret_a = archive_identity(key, SERVICE_A)
    assert archive_identity(key, SERVICE_A) == (access_a, secret_a)  # every replica agrees
    assert access_a == f"pitr-{SERVICE_A.hex}"
    access_b, secret_b = archive_identity(key, SERVICE_B)
    assert access_b != access_a
    assert secret_b != secret_a
    assert archive_identity(other_key, SERVICE_A)[1] != secret_a
    assert archive_prefix(SERVICE_A) == _repo_path(SERVICE_A).lstrip("/") + "/"
    document = identity_document("b", [(SERVICE_A, access_a, secret_a)])
    assert document["identities"][0]["actions"] == [
        f"Read:b/pgbackrest/{SERVICE_A}/*",
        f"Write:b/pgbackrest/{SERVICE_A}/*",
        f"List:b/pgbackrest/{SERVICE_A}/*",
    ]


async def test_each_service_reaches_only_its_own_prefix(
    store: WalStore, data_dir: Path, docker_client: docker.DockerClient
) -> None:
    a, b = _identity(data_dir, SERVICE_A), _identity(data_dir, SERVICE_B)
    await apply_archive_identities(docker_client, store.container, store.bucket, [a, b])

    bucket, mine, theirs = store.bucket, archive_prefix(SERVICE_A), archive_prefix(SERVICE_B)
    admin = store.client()
    admin.put_object(Bucket=bucket, Key=f"{theirs}archive.info", Body=b"b's")
    admin.put_object(Bucket=bucket, Key="external_services/x/manifest.json", Body=b"{}")

    s3 = store.client(a[1], a[2])
    s3.put_object(Bucket=bucket, Key=f"{mine}probe/object", Body=b"a's")
    body = s3.get_object(Bucket=bucket, Key=f"{mine}probe/object")["Body"].read()
    assert body == b"a's"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=mine)
    assert [o["Key"] for o in listed["Contents"]] == [f"{mine}probe/object"]

    _denied(lambda: s3.list_objects_v2(Bucket=bucket))
    _denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="pgbackrest/"))
    _denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=theirs))
    _denied(lambda: s3.get_object(Bucket=bucket, Key=f"{theirs}archive.info"))
    _denied(lambda: s3.put_object(Bucket=bucket, Key=f"{theirs}archive.info", Body=b"x"))
    _denied(lambda: s3.delete_object(Bucket=bucket, Key=f"{theirs}archive.info"))
    _denied(lambda: s3.get_object(Bucket=bucket, Key="external_services/x/manifest.json"))
    sibling = f"pgbackrest/{SERVICE_A}x/"  # shares the id as a string prefix, not the folder
    _denied(lambda: s3.put_object(Bucket=bucket, Key=f"{sibling}o", Body=b"x"))
    _denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=sibling))
    assert admin.get_object(Bucket=bucket, Key=f"{theirs}archive.info")["Body"].read() == b"b's"

    # The static admin from -s3.config survives the import, and no import file stays behind.
    assert admin.list_objects_v2(Bucket=bucket)["KeyCount"] >= 3
    admin.put_object(Bucket=bucket, Key="admin-after-import", Body=b"ok")
    left = docker_client.containers.get(store.container).exec_run(["ls", "/etc/temps/s3"])
    assert left.output.decode().split() == ["admin.json"]


def _tar_file(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(content), 0o600
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _pgbackrest_conf(store: WalStore, repo: str, identity: ArchiveIdentity) -> str:
    endpoint = urlsplit(store.service_endpoint)
    host, port = endpoint.hostname, endpoint.port
    return "\n".join(
        [
            "[global]",
            "repo1-type=s3",
            f"repo1-path={repo}",
            f"repo1-s3-bucket={store.bucket}",
            f"repo1-s3-endpoint={host}",
            f"repo1-storage-port={port}",
            "repo1-s3-region=us-east-1",
            "repo1-s3-uri-style=path",
            f"repo1-s3-key={identity[1]}",
            f"repo1-s3-key-secret={identity[2]}",
            f"repo1-storage-ca-file={DATA_MOUNT}/temps/s3-ca.pem",
            "repo1-bundle=y",
            "compress-type=zst",
            "process-max=1",
            "io-timeout=10",
            "log-level-console=warn",
            "log-level-file=off",
            "",
            f"[{STANZA}]",
            f"pg1-path={PGDATA}",
            "",
        ]
    )


@pytest.fixture
def postgres(docker_client: docker.DockerClient) -> Iterator[Any]:
    """A temps/postgres:15 container on `temps`, archiving to ARCHIVE_CONFIG's repository
    (the password as a file, as the engine hands it: never in the environment)."""
    name = f"{RUN_PREFIX}pitr-pg-{secrets.token_hex(3)}"
    container = docker_client.containers.create(
        "temps/postgres:15",
        command=[
            "postgres",
            *("-c", "wal_level=replica", "-c", "archive_mode=on"),
            *("-c", f"archive_command=timeout 60 {archive_command(STANZA)}"),
        ],
        name=name,
        hostname=name,
        environment={"PGDATA": PGDATA, "POSTGRES_PASSWORD_FILE": "/etc/temps/pw"},
        labels={TEST_LABEL: "pitr-postgres"},
        network=NETWORK,
    )
    try:
        container.put_archive("/etc/temps", _tar_file("pw", secrets.token_hex(16).encode()))
        container.start()
        deadline = time.monotonic() + READY_WAIT_S
        while container.exec_run(["pg_isready", "-q", "-h", "127.0.0.1"]).exit_code != 0:
            assert time.monotonic() < deadline, container.logs(tail=30).decode()
            time.sleep(0.3)
        yield container
    finally:
        container.remove(force=True, v=True)


def _write_as_postgres(client: docker.DockerClient, container: Any, path: str, text: str) -> None:
    uid = int(container.exec_run(["id", "-u", "postgres"]).output)
    gid = int(container.exec_run(["id", "-g", "postgres"]).output)
    data = text.encode()
    put_file(client, container.name, path, len(data), [data], (uid, gid))


def _pgbackrest(container: Any, config: str, command: str) -> tuple[int, str]:
    argv = ["timeout", "60", "pgbackrest", f"--config={config}", f"--stanza={STANZA}", command]
    result = container.exec_run(argv, user="postgres")
    return int(result.exit_code), result.output.decode(errors="replace")


async def test_pgbackrest_in_postgres_archives_with_its_identity(
    store: WalStore,
    data_dir: Path,
    docker_client: docker.DockerClient,
    postgres: Any,
) -> None:
    a = _identity(data_dir, SERVICE_A)
    await apply_archive_identities(
        docker_client, store.container, store.bucket, [a, _identity(data_dir, SERVICE_B)]
    )
    setup = postgres.exec_run(["mkdir", "-m", "0700", "-p", f"{DATA_MOUNT}/temps"], user="postgres")
    assert setup.exit_code == 0, setup.output
    _write_as_postgres(docker_client, postgres, f"{DATA_MOUNT}/temps/s3-ca.pem", store.ca_pem)
    _write_as_postgres(
        docker_client, postgres, ARCHIVE_CONFIG, _pgbackrest_conf(store, _repo_path(SERVICE_A), a)
    )

    for command in ("stanza-create", "check"):
        code, output = _pgbackrest(postgres, ARCHIVE_CONFIG, command)
        assert code == 0, f"{command}: {output}"
    listed = store.client().list_objects_v2(Bucket=store.bucket, Prefix=archive_prefix(SERVICE_A))
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert f"{archive_prefix(SERVICE_A)}archive/{STANZA}/archive.info" in keys
    assert f"{archive_prefix(SERVICE_A)}backup/{STANZA}/backup.info" in keys
    assert any("/archive/x/15-1/" in k for k in keys), keys  # check's WAL segment arrived

    # A's key cannot open B's repository, even when its configuration asks for it.
    other = f"{DATA_MOUNT}/temps/other.conf"
    _write_as_postgres(
        docker_client, postgres, other, _pgbackrest_conf(store, _repo_path(SERVICE_B), a)
    )
    code, output = _pgbackrest(postgres, other, "stanza-create")
    assert code != 0, output
    assert "403" in output, output


async def test_importing_an_empty_set_removes_every_archive_identity(
    store: WalStore, data_dir: Path, docker_client: docker.DockerClient
) -> None:
    a = _identity(data_dir, SERVICE_A)
    await apply_archive_identities(docker_client, store.container, store.bucket, [a])
    s3 = store.client(a[1], a[2])
    s3.list_objects_v2(Bucket=store.bucket, Prefix=archive_prefix(SERVICE_A))

    await apply_archive_identities(docker_client, store.container, store.bucket, [])

    async def refused() -> bool:  # the gateway follows the filer's change
        try:
            s3.list_objects_v2(Bucket=store.bucket, Prefix=archive_prefix(SERVICE_A))
        except ClientError:
            return True
        return False

    await eventually(refused, 10, "A's identity to stop working after its removal")
    _denied(lambda: s3.list_objects_v2(Bucket=store.bucket, Prefix=archive_prefix(SERVICE_A)))
    assert store.client().list_objects_v2(Bucket=store.bucket)["KeyCount"] >= 1
