"""What every probe needs, wired once by the monitor's startup function."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import asyncpg
from nats.js import JetStreamContext
from temps_shared.crypto import KeyRing
from temps_shared.runtime import DockerRuntime

from temps_monitor.settings import MonitorSettings


@dataclass(frozen=True)
class Monitor:
    pool: asyncpg.Pool
    js: JetStreamContext
    runtime: DockerRuntime
    keyring: KeyRing
    ca_pem: str
    settings: MonitorSettings
    # boto3 is blocking: S3 probes run here, so a hanging S3 service cannot take the threads
    # the Docker calls need.
    s3_executor: ThreadPoolExecutor
