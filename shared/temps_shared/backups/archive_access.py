"""How pgBackRest inside a PostgreSQL service reaches the built-in backup store: each service
gets its own S3 identity, limited to its own prefix `pgbackrest/<service id>/`.

The identity's key sits on the service's volume, and the service's owner is a PostgreSQL
superuser (`pg_read_file()` reads it), so it must open nothing but that service's archive: the
store's admin key never goes there. The secret is derived from the master key and the service
id, so nothing new is stored and every worker replica computes the same one.

SeaweedFS loads such identities live with `s3.iam.import -apply` (run inside the store's
container); the import replaces the whole dynamic set, so every archiving service's identity
goes in together. The static admin identity from `-s3.config` is not part of that set and keeps
working (tests/integration/test_archive_access.py checks both).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import docker
import docker.errors
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from temps_shared.engines.s3 import S3Identity, identities_document
from temps_shared.engines.s3_jobs import WeedShellError, apply_identities
from temps_shared.runtime import DockerRuntime
from temps_shared.settings import TempsSettings

ARCHIVE_ROOT = "pgbackrest"  # every service's pgBackRest repository lives under it
ACCESS_KEY_PREFIX = "pitr-"
_SECRET_INFO = b"temps pitr archive identity v1:"
_ARCHIVE_ACTIONS = ("Read", "Write", "List")

# (service id, access key, secret key): one service's archive identity.
ArchiveIdentity = tuple[UUID, str, str]


class ArchiveImportError(Exception):
    """The store's container did not take the identities (missing, stopped, `weed shell`
    failed or timed out): retry later."""


def archive_prefix(service_id: UUID) -> str:
    """The service's key prefix in the bucket (what its identity may touch): pgBackRest's
    `repo1-path` (`pgbackrest.repo_path`, `/pgbackrest/<service id>`) without its leading `/`."""
    return f"{ARCHIVE_ROOT}/{service_id}/"


def archive_identity(master_key: bytes, service_id: UUID) -> tuple[str, str]:
    """The service's (access key id, secret key): the id names the service, the secret is
    HKDF-SHA256 of the master key under a purpose label bound to the service id (as the
    installation's age identity is), so it is never stored and is the same on every replica.
    A new master key gives new secrets: re-import and rewrite the services' configurations."""
    secret = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_SECRET_INFO + service_id.bytes
    ).derive(master_key)
    return f"{ACCESS_KEY_PREFIX}{service_id.hex}", secret.hex()


def archive_actions(bucket: str, service_id: UUID) -> tuple[str, ...]:
    """Read, write and list under the service's prefix of `bucket` only. SeaweedFS matches the
    `*` after the trailing `/`, so a sibling prefix (`<id>x/`) is outside it."""
    return tuple(f"{action}:{bucket}/{archive_prefix(service_id)}*" for action in _ARCHIVE_ACTIONS)


def archive_s3_identities(bucket: str, identities: Iterable[ArchiveIdentity]) -> list[S3Identity]:
    return [
        S3Identity(access_key, access_key, secret_key, archive_actions(bucket, service_id))
        for service_id, access_key, secret_key in identities
    ]


def identity_document(bucket: str, identities: list[ArchiveIdentity]) -> dict[str, Any]:
    """The SeaweedFS identities document (`s3.iam.import`) for these archive identities."""
    document: dict[str, Any] = json.loads(
        identities_document(archive_s3_identities(bucket, identities))
    )
    return document


async def apply_archive_identities(
    docker_client: docker.DockerClient,
    store_container: str,
    bucket: str,
    identities: list[ArchiveIdentity],
) -> None:
    """Make the store's dynamic identities exactly `identities` (every archiving service's:
    the import replaces the set; an empty list removes them all), live, without a restart;
    `ArchiveImportError` if the store did not take them.

    The document travels as a file through Docker's archive API and is removed afterwards
    (never in an exec's arguments). Callers serialise imports (the set read under one lock),
    or a concurrent import may drop a service that was just added."""
    # Only the container I/O of DockerRuntime is used: the network name does not matter.
    runtime = DockerRuntime(docker_client, network="")
    try:
        await apply_identities(runtime, store_container, archive_s3_identities(bucket, identities))
    except (WeedShellError, docker.errors.DockerException, TimeoutError) as exc:
        raise ArchiveImportError(f"{store_container}: {exc}") from exc


def store_service_endpoint(settings: TempsSettings) -> str:
    """The URL service containers use for the built-in store."""
    return settings.backup_store_service_endpoint or settings.backup_store_endpoint
