"""Delivery rules against a real nats-server: de-duplication, ack after success, nak with delay
for retryable errors, term + failure callback for terminal ones and for exhausted retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StreamConfig
from temps_shared.bus.consume import Delivery, RetryableError, TerminalError, consume
from temps_shared.bus.publish import publish_raw
from temps_shared.bus.topology import ConsumerSpec, ensure_topology

from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def nc(bare_nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(bare_nats_url)
    yield client
    await client.close()


async def _test_stream(nc: Client, max_deliver: int) -> ConsumerSpec:
    """A private work-queue stream and consumer, so tests do not see each other's messages."""
    name = f"TEST_{uuid4().hex[:8].upper()}"
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{name.lower()}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=60,
        )
    )
    spec = ConsumerSpec(
        stream=name,
        durable="worker",
        filter_subject=f"{name.lower()}.>",
        ack_wait_s=2.0,
        max_deliver=max_deliver,
        max_ack_pending=16,
        contract=False,
    )
    await js.add_consumer(name, spec.config())
    return spec


async def test_topology_is_idempotent_and_updates_consumers(nc: Client) -> None:
    js = nc.jetstream()
    spec = ConsumerSpec(
        stream="TEMPS_COMMANDS",
        durable="it-topology",
        filter_subject="temps.cmd.it-topology.>",
        ack_wait_s=10,
        max_deliver=3,
        max_ack_pending=1,
    )
    await ensure_topology(js, [spec])
    await ensure_topology(js, [spec])
    changed = ConsumerSpec(**{**spec.__dict__, "ack_wait_s": 20.0, "max_deliver": 4})
    await ensure_topology(js, [changed])
    info = await js.consumer_info("TEMPS_COMMANDS", "it-topology")
    assert info.config.ack_wait == 20.0
    assert info.config.max_deliver == 4
    await js.delete_consumer("TEMPS_COMMANDS", "it-topology")


async def test_repeated_message_id_is_stored_once(nc: Client) -> None:
    spec = await _test_stream(nc, max_deliver=3)
    js = nc.jetstream()
    for _ in range(3):
        await publish_raw(js, f"{spec.stream.lower()}.x", b"{}", msg_id="same-id", message_type="T")
    assert (await js.stream_info(spec.stream)).state.messages == 1


async def test_ack_nak_and_term(nc: Client) -> None:
    spec = await _test_stream(nc, max_deliver=3)
    js = nc.jetstream()
    attempts: dict[str, int] = {}
    failures: dict[str, str] = {}

    async def handle(delivery: Delivery) -> None:
        kind = delivery.data.decode()
        attempts[kind] = attempts.get(kind, 0) + 1
        if kind == "retry-once" and delivery.num_delivered == 1:
            raise RetryableError("not yet", delay_s=0.1)
        if kind == "terminal":
            raise TerminalError("cannot ever work")
        if kind == "always-retry":
            raise RetryableError("never works", delay_s=0.1)

    async def on_terminal(delivery: Delivery, reason: str) -> None:
        failures[delivery.data.decode()] = reason

    stop = asyncio.Event()
    worker = asyncio.create_task(consume(js, spec, handle, stop=stop, on_terminal=on_terminal))
    for kind in ("ok", "retry-once", "terminal", "always-retry"):
        await publish_raw(
            js,
            f"{spec.stream.lower()}.{kind}",
            kind.encode(),
            msg_id=str(uuid4()),
            message_type="T",
        )

    async def settled() -> bool:
        info = await js.stream_info(spec.stream)
        return info.state.messages == 0 and len(failures) == 2

    await eventually(settled, 20, "every message to be settled")
    stop.set()
    await worker
    assert attempts == {"ok": 1, "retry-once": 2, "terminal": 1, "always-retry": 3}
    assert failures["terminal"] == "cannot ever work"
    assert failures["always-retry"].startswith("gave up after 3 attempts")
