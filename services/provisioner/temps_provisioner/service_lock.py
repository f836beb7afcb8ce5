"""At most one operation per service at a time, across every provisioner replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
from temps_shared.bus.consume import RetryableError


def _lock_key(service_id: UUID) -> int:
    return int.from_bytes(service_id.bytes[:8], "big", signed=True)


@asynccontextmanager
async def service_lock(pool: asyncpg.Pool, service_id: UUID) -> AsyncIterator[None]:
    """Hold the service's advisory lock (released with the connection if the process dies).

    Raises `RetryableError` when another replica holds it: the command comes back later.
    """
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_key(service_id)):
            raise RetryableError("another operation on this service is running", delay_s=1.0)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(service_id))
