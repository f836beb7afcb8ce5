"""The backup store for WAL archiving tests: the `temps/seaweedfs:4` container with HTTPS, as
docker-compose.yml runs it, on the services' `temps` network.

pgBackRest speaks only HTTPS and checks a DNS name from the certificate, so the loopback `weed`
of backup_store.py cannot serve it. This store's certificate comes from the tests' installation
CA (`data_dir`) and names the container (its DNS name on `temps`, for pgBackRest in service
containers), `localhost` and 127.0.0.1 (its S3 port published on a free loopback port, for the
backup worker and the test itself on the host). The admin identity (`temps-backup`, a random
secret) is static in `-s3.config`, as in compose.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import docker
import docker.errors
from botocore.config import Config
from temps_shared.ids import LABEL_MANAGED
from temps_shared.store.certificate_authority import load_or_create_ca_files
from temps_shared.tls import issue_server_certificate

from tests.support import RUN_PREFIX, TEST_LABEL, free_port

IMAGE = "temps/seaweedfs:4"
NETWORK = "temps"
S3_PORT = 8333  # socat's, on every interface of the container (as in compose)
READY_WAIT_S = 60.0
TLS_DIR = "/etc/temps/tls"
CONFIG = "/etc/temps/s3/admin.json"


@dataclass(frozen=True)
class WalStore:
    endpoint: str  # for processes on the host
    service_endpoint: str  # for containers on `temps`
    container: str
    access_key: str
    secret_key: str
    ca_pem: str
    ca_file: Path
    bucket: str

    def env(self) -> dict[str, str]:
        """The `TEMPS_BACKUP_STORE_*` settings (and the bucket) pointing at this store."""
        return {
            "TEMPS_BACKUP_STORE_ENDPOINT": self.endpoint,
            "TEMPS_BACKUP_STORE_SERVICE_ENDPOINT": self.service_endpoint,
            "TEMPS_BACKUP_STORE_CONTAINER": self.container,
            "TEMPS_BACKUP_STORE_ACCESS_KEY": self.access_key,
            "TEMPS_BACKUP_STORE_SECRET_KEY": self.secret_key,
            "TEMPS_BACKUP_STORE_CA_FILE": str(self.ca_file),
            "TEMPS_BACKUP_BUCKET": self.bucket,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """boto3 on the host, verifying the CA; the admin's unless another key is given."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            verify=str(self.ca_file),
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=5,
                read_timeout=30,
            ),
        )


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, content in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(content), 0o600
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def ensure_network(client: docker.DockerClient) -> None:
    """The services' network, as the provisioner makes it (shared: never removed here)."""
    if client.networks.list(names=[NETWORK]):
        return
    try:
        client.networks.create(NETWORK, driver="bridge", labels={LABEL_MANAGED: "true"})
    except docker.errors.APIError as exc:  # created concurrently
        if exc.status_code != 409:
            raise


def _command() -> list[str]:
    return [
        "--forward", f"{S3_PORT}:8334", "--",
        "weed", "mini", "-dir=/data/seaweedfs", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.port=8335", "-s3.port.https=8334",
        f"-s3.cert.file={TLS_DIR}/server.pem", f"-s3.key.file={TLS_DIR}/server.key",
        f"-s3.config={CONFIG}",
    ]  # fmt: skip


@contextmanager
def wal_store(
    client: docker.DockerClient, data_dir: Path, directory: Path, bucket: str = "temps-backups"
) -> Iterator[WalStore]:
    """A running TLS store with `bucket` created; removed (with its data) on the way out."""
    ensure_network(client)
    name = f"{RUN_PREFIX}walstore-{secrets.token_hex(3)}"
    ca = load_or_create_ca_files(data_dir)
    issued = issue_server_certificate(ca, [name, "localhost"], ["127.0.0.1"])
    ca_file = directory / "store-ca.pem"
    ca_file.write_text(ca.cert_pem)
    access_key, secret_key = "temps-backup", secrets.token_hex(16)
    admin = {
        "identities": [
            {
                "name": "temps-backup",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    port = free_port()
    container = client.containers.create(
        IMAGE,
        command=_command(),
        name=name,
        hostname=name,
        labels={TEST_LABEL: "wal-store"},  # a crashed run's leftover is removed by the next
        ports={f"{S3_PORT}/tcp": ("127.0.0.1", port)},
        network=NETWORK,
    )
    try:
        files = {
            f"{TLS_DIR}/server.pem": (issued.cert_pem + ca.cert_pem).encode(),
            f"{TLS_DIR}/server.key": issued.key_pem.encode(),
            CONFIG: json.dumps(admin).encode(),
        }
        container.put_archive("/", _tar(files))  # the entrypoint hands them to `weed`
        container.start()
        store = WalStore(
            endpoint=f"https://127.0.0.1:{port}",
            service_endpoint=f"https://{name}:{S3_PORT}",
            container=name,
            access_key=access_key,
            secret_key=secret_key,
            ca_pem=ca.cert_pem,
            ca_file=ca_file,
            bucket=bucket,
        )
        _wait_ready(store, container)
        store.client().create_bucket(Bucket=bucket)
        yield store
    finally:
        container.remove(force=True, v=True)


def _wait_ready(store: WalStore, container: Any) -> None:
    s3 = store.client()
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        container.reload()
        if container.status not in ("created", "running"):
            logs = container.logs(tail=40).decode(errors="replace")
            raise AssertionError(f"{store.container} exited: {logs}")
        try:
            s3.list_buckets()
            return
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
