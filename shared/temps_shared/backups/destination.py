"""Where backups go: an S3 bucket. The built-in store (SeaweedFS started with the platform) is
described by settings; another destination is a row of `backup_destinations` (its secret key
encrypted with the master key). A backup's catalogue row names its destination (NULL: the
built-in store), so a backup stays readable after the installation points somewhere else."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import boto3
import botocore.config
import botocore.exceptions

from temps_shared.crypto import KeyRing
from temps_shared.ids import container_name
from temps_shared.settings import TempsSettings
from temps_shared.store.types import Executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"
    path_style: bool = True
    ca_pem: str | None = field(default=None, repr=False)  # trust this CA (PEM) for https
    id: UUID | None = None  # None: the built-in store


def builtin_destination(settings: TempsSettings) -> Destination:
    """The built-in store, as the settings describe it."""
    return Destination(
        endpoint=settings.backup_store_endpoint,
        bucket=settings.backup_bucket,
        access_key_id=settings.backup_store_access_key,
        secret_access_key=settings.store_secret_key(),
        region=settings.backup_store_region,
        path_style=True,
        ca_pem=_read(settings.backup_store_ca_file),
    )


def _read(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


def destination_secret_aad(destination_id: UUID) -> bytes:
    return f"backup-destination:{destination_id}".encode()


async def load_destination(
    conn: Executor, keyring: KeyRing, destination_id: UUID | None, builtin: Destination
) -> Destination:
    """The destination a backup row names (`builtin` for NULL)."""
    if destination_id is None:
        return builtin
    row = await conn.fetchrow("SELECT * FROM backup_destinations WHERE id = $1", destination_id)
    if row is None:
        raise LookupError(f"backup destination {destination_id} is not in the catalogue")
    return Destination(
        id=row["id"],
        endpoint=row["endpoint"],
        bucket=row["bucket"],
        access_key_id=row["access_key_id"],
        secret_access_key=keyring.decrypt(
            row["secret_ciphertext"], destination_secret_aad(row["id"])
        ).decode(),
        region=row["region"],
        path_style=row["path_style"],
        ca_pem=row["ca_pem"],
    )


async def active_destination_id(conn: Executor) -> UUID | None:
    """The destination new backups go to (None: the built-in store)."""
    value: UUID | None = await conn.fetchval("SELECT id FROM backup_destinations WHERE active")
    return value


# --- Checking a destination before it is accepted -------------------------------------------

PROBE_PREFIX = ".temps-probe/"
CHECK_STEPS = ("bucket", "write", "read", "delete")
# Each S3 call: connect within CHECK_CONNECT_S, answer within CHECK_READ_S, at most two
# attempts; the whole check answers within CHECK_DEADLINE_S even if a call hangs past that.
CHECK_CONNECT_S = 3.0
CHECK_READ_S = 5.0
CHECK_DEADLINE_S = 15.0


@dataclass(frozen=True)
class CheckFailure:
    """The step of the write/read/delete check that failed, and why in a generic category
    (an S3 error *code* at most): the remote server's own text is never answered back, or the
    check would read any URL reachable from the gateway for the caller. `detail` (redacted of
    the secret key) is for the server's log only."""

    step: str  # one of CHECK_STEPS, or "timeout"
    error: str
    detail: str = field(default="", repr=False)


_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.]{0,63}$")  # an S3 error code, e.g. AccessDenied
_PLAIN_MASK_LEN = 8  # a secret this long cannot be part of ordinary text by chance
_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)


def _check_client(destination: Destination, ca_file: str | None) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=destination.endpoint,
        region_name=destination.region,
        aws_access_key_id=destination.access_key_id,
        aws_secret_access_key=destination.secret_access_key,
        verify=ca_file,
        config=botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if destination.path_style else "virtual"},
            connect_timeout=CHECK_CONNECT_S,
            read_timeout=CHECK_READ_S,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


def _describe(exc: BaseException, secret: str) -> str:
    """The exception's text for the log, the secret key masked. A short secret is masked only
    where it stands alone: replacing it everywhere would mangle every word containing it."""
    text = str(exc) or type(exc).__name__
    if len(secret) >= _PLAIN_MASK_LEN:
        return text.replace(secret, "***")
    if not secret:
        return text
    alone = re.compile(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])")
    return alone.sub("***", text)


def _category(exc: BaseException) -> str:
    """What went wrong, in words of our own: the S3 error code is the only remote text kept
    (and only when it looks like one)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "")
        if not _CODE.match(code):  # none, or not an S3 code: the HTTP status only
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = f"HTTP {status}" if isinstance(status, int) else "unknown"
        if code in _DENIED:
            return f"access denied ({code})"
        if code == "NoSuchBucket":
            return f"the bucket does not exist ({code})"
        return f"the store refused the request ({code})"
    if isinstance(exc, botocore.exceptions.SSLError):
        return "TLS verification failed"
    if isinstance(
        exc, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)
    ):
        return "timed out"
    if isinstance(
        exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError)
    ):
        return "could not connect"
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return "the store's answer was not understood"
    if isinstance(exc, ValueError):
        return "the endpoint or the CA certificate is unusable"
    return "could not connect"


def _failure(step: str, exc: BaseException, destination: Destination) -> CheckFailure:
    detail = _describe(exc, destination.secret_access_key)
    log.warning(
        "backup destination %s (bucket %s) failed the %s step: %s",
        destination.endpoint, destination.bucket, step, detail,
    )  # fmt: skip
    return CheckFailure(step, _category(exc), detail)


def check_destination(destination: Destination) -> CheckFailure | None:
    """Blocking (boto3; call from a thread): a probe object can be written (the bucket is
    created when it does not exist), read back equal and deleted. None when every step passed.
    Writing first: an S3 error code (wrong key, access denied) says more than a HEAD's."""
    probe_key = f"{PROBE_PREFIX}{uuid4()}"
    body = f"temps backup destination probe {probe_key}\n".encode()
    with tempfile.TemporaryDirectory(prefix="temps-destination-check-") as scratch:
        ca_file = None
        if destination.ca_pem is not None:
            ca_file = str(Path(scratch) / "ca.pem")
            Path(ca_file).write_text(destination.ca_pem)
        step = "write"
        try:
            s3 = _check_client(destination, ca_file)
            try:
                s3.put_object(Bucket=destination.bucket, Key=probe_key, Body=body)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                    raise
                step = "bucket"  # a bucket that does not exist yet is created
                s3.create_bucket(Bucket=destination.bucket)
                step = "write"
                s3.put_object(Bucket=destination.bucket, Key=probe_key, Body=body)
            step = "read"
            read = s3.get_object(Bucket=destination.bucket, Key=probe_key)["Body"].read()
            if read != body:
                return CheckFailure(
                    "read", "the probe object read back differs from the one written"
                )
            step = "delete"
            s3.delete_object(Bucket=destination.bucket, Key=probe_key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return _failure(step, exc, destination)
        except (OSError, ValueError) as exc:  # a bad CA file, an unusable endpoint URL
            return _failure(step, exc, destination)
    return None


async def check_destination_within(
    destination: Destination, deadline_s: float = CHECK_DEADLINE_S
) -> CheckFailure | None:
    """`check_destination` in a thread, answered within `deadline_s` (a hung call is left to
    finish on its own: its timeouts end it)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(check_destination, destination), deadline_s)
    except TimeoutError:
        return CheckFailure("timeout", f"the store did not answer within {deadline_s:.0f} s")


# --- A service never backs up into itself ----------------------------------------------------

_LOOKUP_S = 3.0


@dataclass(frozen=True)
class PlatformS3:
    """Where one of the platform's S3 services answers: its container name on the services'
    network (S3 port) and its port published on the host's loopback."""

    service_id: UUID
    name: str
    container: str
    port: int
    local_port: int | None


async def platform_s3_services(conn: Executor) -> list[PlatformS3]:
    from temps_shared.engines.s3 import S3_PORT  # the engines bring their SDKs: only here

    rows = await conn.fetch(
        "SELECT s.id, s.name, p.local_port FROM services s"
        " LEFT JOIN service_ports p ON p.service_id = s.id AND p.port_name = 's3'"
        " WHERE s.service_type = 's3' AND NOT s.purged"
    )
    return [
        PlatformS3(r["id"], r["name"], container_name("s3", r["name"]), S3_PORT, r["local_port"])
        for r in rows
    ]


def _host_port(endpoint: str) -> tuple[str, int]:
    url = urlsplit(endpoint)
    host = (url.hostname or "").rstrip(".").lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    return host, port


async def _is_loopback(host: str) -> bool:
    """The host names this machine's loopback (an address, `localhost`, or a name resolving
    there); a name that does not resolve in time is not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM),
            _LOOKUP_S,
        )
    except (OSError, TimeoutError):
        return False
    return any(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


async def services_serving(conn: Executor, endpoint: str) -> list[PlatformS3]:
    """The platform's S3 services `endpoint` reaches: by container name and S3 port, or by the
    loopback port published for it. (Their certificates name only these, `localhost` and
    127.0.0.1, so no other address passes TLS verification.)"""
    host, port = _host_port(endpoint)
    services = await platform_s3_services(conn)
    named = [s for s in services if host == s.container and port == s.port]
    published = [s for s in services if s.local_port == port and s not in named]
    if published and await _is_loopback(host):
        named += published
    return named


async def self_backup_reason(
    conn: Executor, destination: Destination, service_id: UUID
) -> str | None:
    """Why a backup of `service_id` must not go to `destination` (it is served by that very
    service), or None. The backup worker calls it before it writes anything."""
    for served in await services_serving(conn, destination.endpoint):
        if served.service_id == service_id:
            return (
                f"the backup destination {destination.endpoint} is service {served.name} itself:"
                " a service never backs up into itself"
            )
    return None
