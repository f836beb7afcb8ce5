"""A client loop for the acceptance tests of planned operations: one small transaction every
20 ms on one connection (reconnecting after an error), counting failures and the longest wait."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

import asyncpg

TICK_S = 0.02  # one small transaction every 20 ms
# One transaction's bound. asyncpg can wedge a connection the server ended while it was idle
# (a FATAL during PostgreSQL's fast shutdown: the next query hangs, or raises
# InternalClientError "another operation is in progress"); bounded, that is a recorded failure
# of the direct loop instead of a hung test. Below the 30 s the tests give a loop to stop; a
# pooled client held longer than this counts as failed (holds measured: ≤ 5.1 s).
TRANSACTION_TIMEOUT_S = 25.0


@dataclass
class Loop:
    """One small transaction every TICK_S on one client connection (reconnecting on error)."""

    url: str
    context: ssl.SSLContext
    label: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    longest_s: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        conn: asyncpg.Connection | None = None
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.url, ssl=self.context, timeout=10)
                await asyncio.wait_for(self._transaction(conn, n), TRANSACTION_TIMEOUT_S)
                self.ok += 1
            except Exception as exc:  # every way a transaction can fail is a failure to count
                self.failures.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.terminate()
                    conn = None
            self.longest_s = max(self.longest_s, time.monotonic() - started)
            n += 1
            await asyncio.sleep(TICK_S)
        if conn is not None:
            conn.terminate()

    @staticmethod
    async def _transaction(conn: asyncpg.Connection, n: int) -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO ticks VALUES ($1, now())", n)
