"""What every backup and restore needs, wired once by the worker's startup function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import docker
from nats.js import JetStreamContext
from temps_shared.backups.store import BackupStore
from temps_shared.crypto import KeyRing
from temps_shared.runtime import DockerRuntime

from temps_backup.settings import BackupSettings


@dataclass(frozen=True)
class BackupWorker:
    pool: asyncpg.Pool
    js: JetStreamContext
    runtime: DockerRuntime
    docker: docker.DockerClient  # used only through temps_shared.runtime.container_io
    keyring: KeyRing
    identity: str  # the installation's age identity (from the master key)
    recipient: str  # its public half: every artifact is encrypted to it
    ca_pem: str  # the installation CA (services dialled over TLS)
    store: BackupStore  # the built-in store (backups whose row names no other destination)
    settings: BackupSettings
    # A service's (access key, secret key) on the built-in store for its WAL archive (derived
    # from the master key: `temps_shared.backups.archive_access.archive_identity`).
    archive_identity: Callable[[UUID], tuple[str, str]] = field(repr=False)
