"""asyncpg pool with JSON codecs, and a bounded wait for the database to accept connections."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, wait_s: float = 60.0
) -> asyncpg.Pool:
    """A pool on `dsn`, retrying (bounded by `wait_s`) while the server is starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, init=_init_connection
            )
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)
            continue
        assert pool is not None
        return pool
