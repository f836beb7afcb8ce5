"""Relays the outbox to JetStream: a 202 means the command will be delivered.

A row is marked published only after JetStream acked it; a crash in between republishes it
under the same `Nats-Msg-Id`, which JetStream de-duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from nats.js import JetStreamContext
from opentelemetry import trace
from temps_shared.bus.publish import publish_raw
from temps_shared.metrics import OUTBOX_PUBLISHED
from temps_shared.store import outbox
from temps_shared.telemetry import context_from_headers, current_trace_headers

log = logging.getLogger(__name__)
tracer = trace.get_tracer("temps.outbox")
BATCH = 100
RELAY_LOCK_KEY = 0x7E3F5_0002


async def relay_batch(pool: asyncpg.Pool, js: JetStreamContext) -> int:
    """Publish one batch of unpublished rows; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        # One relay at a time across replicas, so messages go out in the order they were written.
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK_KEY):
            return 0
        rows = await outbox.claim_unpublished(conn, BATCH)
        for row in rows:
            # In the trace of the request that wrote the row; the consumer's span follows this.
            with tracer.start_as_current_span(
                f"publish {row.message_type}",
                context=context_from_headers(row.headers),
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": row.subject,
                    "messaging.message.id": row.msg_id,
                },
            ):
                await publish_raw(
                    js,
                    row.subject,
                    row.payload,
                    msg_id=row.msg_id,
                    message_type=row.message_type,
                    headers={**row.headers, **current_trace_headers()},
                )
            OUTBOX_PUBLISHED.labels(row.message_type).inc()
        if rows:
            await outbox.mark_published(conn, [r.id for r in rows])
    return len(rows)


async def run_relay(
    pool: asyncpg.Pool, js: JetStreamContext, stop: asyncio.Event, poll_s: float
) -> None:
    """Relay until `stop`; woken by NOTIFY from `outbox.enqueue`, polling as a fallback."""
    wake = asyncio.Event()

    def on_notify(*_: object) -> None:
        wake.set()

    listener = await pool.acquire()
    await listener.add_listener(outbox.NOTIFY_CHANNEL, on_notify)
    try:
        while not stop.is_set():
            try:
                if await relay_batch(pool, js):
                    continue
            except Exception:
                log.exception("outbox relay failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=poll_s)
            wake.clear()
    finally:
        with contextlib.suppress(Exception):
            await listener.remove_listener(outbox.NOTIFY_CHANNEL, on_notify)
        await pool.release(listener)
