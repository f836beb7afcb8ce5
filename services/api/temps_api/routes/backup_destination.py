"""Where new backups go: the built-in store, or an S3-compatible bucket the installation is
pointed at. A destination is accepted only after a probe object was written, read back and
deleted there; its secret key is stored encrypted and never shown. Backups keep the
destination they were written to (a change only affects new backups)."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from cryptography import x509
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from temps_shared.backups.destination import (
    Destination,
    check_destination_within,
    services_serving,
)
from temps_shared.store.backup_destinations import (
    activate_destination,
    active_destination,
    deactivate_destinations,
)

from temps_api.audit import record_audit
from temps_api.auth import ADMIN, BACKUPS_READ, Principal
from temps_api.deps import State, require
from temps_api.errors import ApiError, error_responses
from temps_api.settings import ApiSettings

router = APIRouter(prefix="/api/backup-destination", tags=["backups"])
Reader = Annotated[Principal, Depends(require(BACKUPS_READ))]
# Changing it is an administrator's: the check dials any endpoint from the gateway's network,
# and every later backup (the data, the credentials in its manifest) goes there.
Admin = Annotated[Principal, Depends(require(ADMIN))]
# S3 bucket names (path-style addressing also takes dots; no uppercase, no underscores).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_CA_PEM = 64 * 1024


class DestinationRequest(BaseModel):
    """An S3-compatible bucket for new backups."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(
        max_length=2048,
        description="S3 endpoint URL, http:// or https://, e.g. https://s3.example.com",
    )
    bucket: str = Field(description="Bucket name (created at the check when it does not exist).")
    region: str = Field("us-east-1", min_length=1, max_length=64)
    access_key_id: str = Field(min_length=1, max_length=256)
    secret_access_key: SecretStr = Field(
        min_length=1, max_length=1024, description="Stored encrypted; never shown again."
    )
    path_style: bool = Field(True, description="Path-style addressing (most non-AWS stores).")
    ca_pem: str | None = Field(
        None, max_length=MAX_CA_PEM, description="PEM certificate(s) to trust for https."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        try:
            url = urlsplit(value)
            url.port  # noqa: B018 -- raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        if url.username is not None or url.password is not None:
            raise ValueError("no credentials in the URL: use access_key_id/secret_access_key")
        if url.query or url.fragment or url.path not in ("", "/"):
            raise ValueError("the endpoint is scheme, host and port only (no path or query)")
        return value.rstrip("/")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET_RE.match(value) or ".." in value:
            raise ValueError("3-63 characters: lowercase letters, digits, '-' and '.'")
        return value

    @field_validator("ca_pem")
    @classmethod
    def _ca(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            x509.load_pem_x509_certificates(value.encode())
        except ValueError:
            raise ValueError("not a PEM certificate") from None
        return value

    def destination(self) -> Destination:
        return Destination(
            endpoint=self.endpoint,
            bucket=self.bucket,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key.get_secret_value(),
            region=self.region,
            path_style=self.path_style,
            ca_pem=self.ca_pem,
        )


def _built_in(settings: ApiSettings) -> dict[str, Any]:
    return {
        "built_in": True,
        "endpoint": settings.backup_store_endpoint,
        "bucket": settings.backup_bucket,
        "region": settings.backup_store_region,
    }


@router.get("")
async def get_backup_destination(state: State, _: Reader) -> dict[str, Any]:
    """Where new backups go (never the secret key); `built_in: true` for the built-in store."""
    row = await active_destination(state.pool)
    return row.public() if row is not None else _built_in(state.settings)


@router.put("", responses=error_responses(422))
async def put_backup_destination(
    body: DestinationRequest, request: Request, state: State, principal: Admin
) -> dict[str, Any]:
    """Point new backups at this bucket, once a probe object was written, read back and
    deleted there (422 naming the step that failed and a generic reason, never the remote
    server's text; nothing is stored then). Needs `admin`. Answers within about 15 s even when
    the endpoint does not."""
    destination = body.destination()
    async with state.pool.acquire() as conn:
        served = await services_serving(conn, destination.endpoint)
    if served:
        names = ", ".join(sorted(s.name for s in served))
        raise ApiError(
            422,
            "destination_is_platform_service",
            f"{destination.endpoint} is this platform's S3 service {names}: backups go to a"
            " store outside the services they protect",
            {"services": sorted(str(s.service_id) for s in served)},
        )
    failure = await check_destination_within(destination)
    if failure is not None:
        raise ApiError(
            422,
            "destination_check_failed",
            f"the destination failed the {failure.step} step of the write/read/delete check:"
            f" {failure.error}",
            {"step": failure.step, "error": failure.error},
        )
    async with state.pool.acquire() as conn, conn.transaction():
        previous = await active_destination(conn)
        row = await activate_destination(conn, state.keyring, destination)
        await record_audit(
            conn, principal, "backup_destination.set", str(row.id), request,
            {"endpoint": row.endpoint, "bucket": row.bucket, "region": row.region,
             "access_key_id": row.access_key_id, "path_style": row.path_style,
             "previous": str(previous.id) if previous is not None else None},
        )  # fmt: skip
    return row.public()


@router.delete("")
async def delete_backup_destination(
    request: Request, state: State, principal: Admin
) -> dict[str, Any]:
    """New backups go to the built-in store again (backups already taken stay readable where
    they are). Needs `admin`."""
    async with state.pool.acquire() as conn, conn.transaction():
        previous = await deactivate_destinations(conn)
        if previous is not None:
            await record_audit(
                conn, principal, "backup_destination.reset", str(previous), request,
                {"previous": str(previous)},
            )  # fmt: skip
    return _built_in(state.settings)
