"""What every reconcile step needs, wired once by the service's startup function."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from nats.js import JetStreamContext
from temps_shared.crypto import KeyRing
from temps_shared.runtime import DockerRuntime
from temps_shared.tls import CertificateAuthority

from temps_provisioner.settings import ProvisionerSettings


@dataclass(frozen=True)
class Provisioner:
    pool: asyncpg.Pool
    js: JetStreamContext
    runtime: DockerRuntime
    keyring: KeyRing
    ca: CertificateAuthority
    settings: ProvisionerSettings
    installation: str  # this control plane's id (`installation` table): labels its objects
