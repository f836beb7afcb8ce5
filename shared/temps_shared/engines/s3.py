"""S3 storage on SeaweedFS: parameters, identities, container spec, readiness, credentials.

One all-in-one `weed mini` per service. Every SeaweedFS component (master, volume, filer, S3,
admin) binds the container's loopback; the image's socat forwarder exposes only the S3 HTTPS
port. What can change live (public read, versioning, lifecycle rules) is kept out of the
command and applied through the S3 API by `after_ready`, which runs on every reconcile
(`s3_buckets`). Quota, lifecycle expiry and added identities are platform-run (`s3_jobs`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import botocore.exceptions
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from temps_shared.crypto import generate_password
from temps_shared.engines.base import Endpoints, ServiceNotReadyError
from temps_shared.engines.s3_buckets import (
    REGION,
    apply_bucket_settings,
    endpoint_url,
    ensure_bucket,
    s3_client,
)
from temps_shared.engines.sizes import parse_size_gb
from temps_shared.ids import (
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SERVICE_ID,
    container_name,
    volume_name,
)
from temps_shared.links import LinkGrant, bucket_for
from temps_shared.runtime import ContainerSpec, DockerRuntime
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import ServerCertificate

if TYPE_CHECKING:
    from temps_shared.backups.protocol import EngineBackup

S3_PORT = 8443  # socat, on every interface of the container: the one port others reach
INTERNAL_S3_PORT = 8444  # SeaweedFS' S3 HTTPS listener, on the container's loopback
DATA_MOUNT = "/data"
TLS_DIR = "/etc/temps/tls"
CONFIG_DIR = "/etc/temps/s3"
ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class LifecycleRule(BaseModel):
    """Objects under `prefix` expire `expire_days` after their last modification."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(min_length=1, description="Key prefix the rule applies to, e.g. 'tmp/'.")
    expire_days: int = Field(ge=1, le=36500, description="Days after which objects expire.")

    @field_validator("prefix")
    @classmethod
    def _valid_key_prefix(cls, value: str) -> str:
        # SeaweedFS stores keys as filer paths: a leading '/', '//' or '.'/'..' segments would
        # name another path than the client meant.
        if len(value.encode()) > 1024:
            raise ValueError("a key prefix is at most 1024 bytes")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a key prefix cannot contain control characters")
        if value.startswith("/") or "//" in value:
            raise ValueError("a key prefix cannot start with '/' or contain '//'")
        if any(segment in (".", "..") for segment in value.split("/")):
            raise ValueError("a key prefix cannot contain '.' or '..' path segments")
        return value


class S3Parameters(BaseModel):
    """The spec's options; `size` (e.g. "50GB") and `public-read` are accepted as aliases."""

    model_config = ConfigDict(extra="forbid")

    size_gb: int = Field(
        50, ge=1, le=1048576, description="Quota over all the service's buckets, in GB."
    )
    public_read: bool = Field(
        False, description="Anonymous GET and List on the service's default bucket."
    )
    versioning: bool = Field(False, description="Object versioning on the default bucket.")
    lifecycle: list[LifecycleRule] = Field(
        default_factory=list, max_length=100, description="Expiry rules of the default bucket."
    )

    @model_validator(mode="before")
    @classmethod
    def _spec_aliases(cls, data: Any) -> Any:
        # The alias wins over the canonical name: PATCH merges the stored (canonical) parameters
        # with the request's, so an alias present is what the user just asked for.
        if isinstance(data, dict):
            data = dict(data)
            if "size" in data:
                try:
                    data["size_gb"] = parse_size_gb(data.pop("size"))
                except ValueError as exc:
                    raise ValueError(f"size (size_gb): {exc}") from exc
            if "public-read" in data:
                data["public_read"] = data.pop("public-read")
        return data


def default_bucket(service_name: str) -> str:
    """The bucket created with the service: its name, made a valid bucket name if it is not."""
    bucket = service_name.rstrip("-")
    if not _BUCKET_RE.match(bucket):
        bucket = f"{bucket}-data"
    return bucket


# --- identities ------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Identity:
    """A key pair and what it may do (SeaweedFS' identities file format)."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


def scoped_actions(bucket: str) -> tuple[str, ...]:
    """Actions limited to one bucket. SeaweedFS treats an action without a bucket as global
    (every bucket, other users' included): a non-admin identity must always be scoped."""
    return tuple(f"{action}:{bucket}" for action in ("Read", "Write", "List", "Tagging"))


def admin_identity(credentials: dict[str, str]) -> S3Identity:
    return S3Identity(
        "temps-admin", credentials["access_key"], credentials["secret_key"], ADMIN_ACTIONS
    )


def identities_document(identities: list[S3Identity]) -> bytes:
    """The identities file SeaweedFS reads (`-s3.config`, `s3.iam.import`)."""
    return json.dumps(
        {
            "identities": [
                {
                    "name": i.name,
                    "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}],
                    "actions": list(i.actions),
                }
                for i in identities
            ]
        },
        indent=1,
    ).encode()


def admin_config_path(credentials: dict[str, str]) -> str:
    """Named after the admin access key (not a secret), so a rotated admin key changes the
    command and recreates the container: the static identities file is read at start only."""
    digest = hashlib.sha256(credentials["access_key"].encode()).hexdigest()[:12]
    return f"{CONFIG_DIR}/admin-{digest}.json"


def server_command(credentials: dict[str, str]) -> list[str]:
    """The entrypoint's arguments. Telemetry is off (it defaults to on and posts to the vendor);
    `-ip`/`-ip.bind` keep every component on the container's loopback."""
    return [
        "--forward",
        f"{S3_PORT}:{INTERNAL_S3_PORT}",
        "--",
        "weed",
        "mini",
        f"-dir={DATA_MOUNT}/seaweedfs",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port.https={INTERNAL_S3_PORT}",
        f"-s3.cert.file={TLS_DIR}/server.crt",
        f"-s3.key.file={TLS_DIR}/server.key",
        f"-s3.config={admin_config_path(credentials)}",
        "-s3.allowDeleteBucketNotEmpty=false",  # as AWS: BucketNotEmpty
    ]


def lifecycle_rules(rules: list[LifecycleRule]) -> list[dict[str, Any]]:
    return [
        {
            "ID": f"temps-{n}",
            "Status": "Enabled",
            "Filter": {"Prefix": rule.prefix},
            "Expiration": {"Days": rule.expire_days},
        }
        for n, rule in enumerate(rules)
    ]


READY_BUCKETS_LOOKED_AT = 5


def _serves_objects(client: Any) -> None:
    """Ready means objects can be read, not only listed: after a start SeaweedFS answers
    listings (the filer) before its volume server has loaded the data, and a GET then fails
    with InternalError. One byte of the first object found (a few buckets looked at) is read."""
    buckets = client.list_buckets().get("Buckets", [])
    for bucket in buckets[:READY_BUCKETS_LOOKED_AT]:
        listed = client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1)
        for item in listed.get("Contents", []):
            ranged = {"Range": "bytes=0-0"} if item.get("Size", 0) > 0 else {}
            client.get_object(Bucket=bucket["Name"], Key=item["Key"], **ranged)["Body"].read()
            return


class S3Engine:
    service_type = "s3"
    ports = {"s3": S3_PORT}

    def parameters_model(self) -> type[BaseModel]:
        return S3Parameters

    def generate_credentials(self, name: str) -> dict[str, str]:
        alphabet = string.ascii_uppercase + string.digits
        return {
            "access_key": "TEMPS" + "".join(secrets.choice(alphabet) for _ in range(15)),
            "secret_key": generate_password(40),
        }

    def container_spec(
        self,
        service: ServiceRecord,
        credentials: dict[str, str],
        local_ports: dict[str, int],
        certificate: ServerCertificate,
        image: str,
    ) -> ContainerSpec:
        return ContainerSpec(
            name=container_name(service.service_type, service.name),
            image=image,
            command=server_command(credentials),
            labels={
                LABEL_MANAGED: "true",
                LABEL_SERVICE_ID: str(service.id),
                LABEL_ROLE: "primary",
            },
            volume=volume_name(service.service_type, service.name),
            mount_path=DATA_MOUNT,
            ports={S3_PORT: local_ports["s3"]},
            files={
                f"{TLS_DIR}/server.crt": certificate.cert_pem.encode(),
                f"{TLS_DIR}/server.key": certificate.key_pem.encode(),
                f"{TLS_DIR}/ca.crt": certificate.ca_pem.encode(),
                # The admin is a static identity: authentication is on from the first request.
                admin_config_path(credentials): identities_document([admin_identity(credentials)]),
            },
        )

    def connection_info(
        self, service: ServiceRecord, credentials: dict[str, str], local_ports: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "host": container_name(service.service_type, service.name),
            "port": S3_PORT,
            "local_host": "127.0.0.1",
            "local_port": local_ports["s3"],
            "bucket": default_bucket(service.name),
            "scheme": "https",
        }

    async def check_ready(
        self, endpoints: Endpoints, credentials: dict[str, str], ca_pem: str
    ) -> None:
        client = s3_client(endpoint_url(*endpoints["s3"]), credentials, ca_pem)
        try:
            await asyncio.to_thread(_serves_objects, client)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise ServiceNotReadyError(str(exc) or type(exc).__name__) from exc

    async def after_ready(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        client = s3_client(endpoint_url(*endpoints["s3"]), credentials, ca_pem)
        parameters = S3Parameters.model_validate(service.parameters)
        await asyncio.to_thread(
            functools.partial(
                apply_bucket_settings,
                client,
                default_bucket(service.name),
                versioning=parameters.versioning,
                public_read=parameters.public_read,
                lifecycle_rules=lifecycle_rules(parameters.lifecycle),
            )
        )

    def credentials_view(
        self, credentials: dict[str, str], connection_info: dict[str, Any], ca_pem: str
    ) -> dict[str, Any]:
        return {
            "access_key": credentials["access_key"],
            "secret_key": credentials["secret_key"],
            "endpoint": endpoint_url(connection_info["host"], connection_info["port"]),
            "local_endpoint": endpoint_url(
                connection_info["local_host"], connection_info["local_port"]
            ),
            "bucket": connection_info["bucket"],
            "region": REGION,
            "ca_certificate": ca_pem,
        }

    def new_link_credentials(self, project: str, environment: str, link_id: UUID) -> dict[str, str]:
        alphabet = string.ascii_uppercase + string.digits
        return {
            "username": "TEMPS" + "".join(secrets.choice(alphabet) for _ in range(15)),
            "password": generate_password(40),
            "resource": bucket_for(project, environment, link_id),
        }

    async def apply_links(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        grants: list[LinkGrant],
        ca_pem: str,
        runtime: DockerRuntime,
    ) -> None:
        """A bucket per link, and exactly the active links' key pairs, each scoped to its own
        bucket (a revoked key disappears; its bucket and objects stay)."""
        client = s3_client(endpoint_url(*endpoints["s3"]), credentials, ca_pem)
        for grant in grants:
            if grant.active:
                await asyncio.to_thread(ensure_bucket, client, grant.resource)
        # s3_jobs builds on this module: imported here, not at the top, to avoid a cycle.
        from temps_shared.engines.s3_jobs import apply_identities

        identities = [
            S3Identity(f"link-{g.link_id}", g.username, g.password, scoped_actions(g.resource))
            for g in grants
            if g.active
        ]
        await apply_identities(
            runtime, container_name(service.service_type, service.name), identities
        )

    async def rotate_admin(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        previous: dict[str, str],
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        return None  # the admin key lives in the container's command: the recreate rotates it

    def link_variables(
        self, connection_info: dict[str, Any], grant: LinkGrant
    ) -> tuple[dict[str, str], set[str]]:
        endpoint = endpoint_url(connection_info["host"], connection_info["port"])
        variables = {
            "S3_ENDPOINT": endpoint,
            "S3_ACCESS_KEY": grant.username,
            "S3_SECRET_KEY": grant.password,
            "S3_BUCKET": grant.resource,
            "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": grant.username,
            "AWS_SECRET_ACCESS_KEY": grant.password,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": REGION,
        }
        return variables, {"S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"}

    def backup(self) -> EngineBackup:
        from temps_shared.backups.s3 import S3Backup  # on demand: the backup worker's code

        return S3Backup()
