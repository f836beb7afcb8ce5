"""S3 clients the platform uses (path-style, SigV4, the installation CA) and the bucket
settings it converges through the S3 API. boto3 is blocking: callers go through
asyncio.to_thread."""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

REGION = "us-east-1"

_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()


def _ca_file(ca_pem: str) -> str:
    """botocore verifies against a CA *file*: one per CA, written once."""
    digest = hashlib.sha256(ca_pem.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"temps-ca-{digest}.pem"
    if not path.exists():
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(ca_pem)
        tmp.replace(path)
    return str(path)


def endpoint_url(host: str, port: int) -> str:
    return f"https://{host}:{port}"


def s3_client(url: str, credentials: dict[str, str], ca_pem: str) -> Any:
    """A path-style, SigV4 client verifying the server against the installation CA (cached:
    creating one costs ~50 ms, and readiness polls every 50 ms)."""
    key = (url, credentials["access_key"], hashlib.sha256(ca_pem.encode()).hexdigest())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= 64:
                _clients.pop(next(iter(_clients)))
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=url,
                aws_access_key_id=credentials["access_key"],
                aws_secret_access_key=credentials["secret_key"],
                region_name=REGION,
                verify=_ca_file(ca_pem),
                config=botocore.config.Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=3,
                    read_timeout=30,
                ),
            )
            _clients[key] = client
        return client


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def public_read_policy(bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "TempsPublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


def _current_policy(client: Any, bucket: str) -> dict[str, Any] | None:
    try:
        policy: dict[str, Any] = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) == "NoSuchBucketPolicy":
            return None
        raise
    return policy


def _current_lifecycle(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        rules: list[dict[str, Any]] = client.get_bucket_lifecycle_configuration(Bucket=bucket)[
            "Rules"
        ]
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) == "NoSuchLifecycleConfiguration":
            return []
        raise
    return rules


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create `bucket` unless it exists (blocking)."""
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
        client.create_bucket(Bucket=bucket)


def apply_bucket_settings(
    client: Any,
    bucket: str,
    *,
    versioning: bool,
    public_read: bool,
    lifecycle_rules: list[dict[str, Any]],
) -> None:
    """Converge `bucket` (created if missing) to these settings; blocking, and idempotent:
    only what differs is written."""
    ensure_bucket(client, bucket)

    status = client.get_bucket_versioning(Bucket=bucket).get("Status")
    # A bucket that was ever versioned can only be suspended, never unversioned again.
    wanted = "Enabled" if versioning else ("Suspended" if status else None)
    if wanted is not None and status != wanted:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": wanted})

    policy = public_read_policy(bucket) if public_read else None
    if _current_policy(client, bucket) != policy:
        if policy is None:
            client.delete_bucket_policy(Bucket=bucket)
        else:
            client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    if _current_lifecycle(client, bucket) != lifecycle_rules:
        if lifecycle_rules:
            client.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": lifecycle_rules}
            )
        else:
            client.delete_bucket_lifecycle(Bucket=bucket)
