"""Connecting to NATS as one role: its own credentials, TLS verified against the installation
CA, and its own reply inbox (`_INBOX_<role>`), with a bounded wait while the server starts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
from nats.aio.client import Client

from temps_shared.bus.credentials import client_credentials
from temps_shared.bus.permissions import inbox_prefix
from temps_shared.messages import Role


async def connect_nats(
    url: str, role: Role, data_dir: Path, *, name: str, wait_s: float = 60.0
) -> Client:
    """A connection that reconnects by itself once established; the first connect is retried
    until `wait_s` has passed."""
    credentials = client_credentials(data_dir, role)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            nc: Client = await nats.connect(
                url,
                name=name,
                user=credentials.user,
                password=credentials.password,
                tls=credentials.ssl_context(),
                inbox_prefix=inbox_prefix(role),
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
            return nc
        except Exception as exc:  # NoServersError, OSError…
            if time.monotonic() >= deadline:
                raise ConnectionError(f"NATS at {url} did not answer: {exc}") from exc
            await asyncio.sleep(0.5)
