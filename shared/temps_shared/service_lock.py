"""At most one operation per service at a time, across every worker replica (the provisioner
recreating a container and the backup worker dumping it never overlap)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from temps_shared.bus.consume import RetryableError


def _lock_key(service_id: UUID) -> int:
    return int.from_bytes(service_id.bytes[:8], "big", signed=True)


@asynccontextmanager
async def service_lock(
    pool: asyncpg.Pool, service_id: UUID, wait_s: float = 0.0
) -> AsyncIterator[None]:
    """Hold the service's advisory lock (released with the connection if the process dies),
    waiting up to `wait_s` for it.

    Raises `RetryableError` when another operation holds it: a command comes back later.
    """
    deadline = time.monotonic() + wait_s
    async with pool.acquire() as conn:
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_key(service_id)):
            if time.monotonic() >= deadline:
                raise RetryableError("another operation on this service is running", delay_s=1.0)
            await asyncio.sleep(0.2)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(service_id))
