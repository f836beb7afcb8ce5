"""Connecting to NATS with a bounded wait while the server starts."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.aio.client import Client


async def connect_nats(url: str, name: str, wait_s: float = 60.0) -> Client:
    """A connection that reconnects by itself once established; the first connect is retried
    until `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            nc: Client = await nats.connect(
                url,
                name=name,
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
