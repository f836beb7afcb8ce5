"""The consume loop every worker uses, and its ack policy.

- ack only after the handler returned (its side effects and their records are committed);
- `RetryableError` (or any unexpected error) → `nak(delay)`, until `max_deliver` is reached;
- `TerminalError`, or retries exhausted → the `on_terminal` callback (emits a `…Failed` event),
  then `term()`;
- long handlers heartbeat with `in_progress()` so JetStream does not redeliver them meanwhile;
- `stop` drains: no new fetches, in-flight handlers finish;
- on the platform's consumers a message must pass `open_envelope` first (its type, subject and
  publisher role agree): one that does not is logged and terminated, never handled, and no
  failure is announced for it (a forger must not be able to make a worker emit events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from temps_shared.bus.codec import TYPE_HEADER
from temps_shared.bus.envelope import ForgedMessage, open_envelope
from temps_shared.bus.topology import ConsumerSpec
from temps_shared.messages import Message, Role
from temps_shared.telemetry import context_from_headers

log = logging.getLogger(__name__)
tracer = trace.get_tracer("temps.bus")


class RetryableError(Exception):
    """The handler could not finish now; the message is redelivered after `delay_s`."""

    def __init__(self, reason: str, delay_s: float = 2.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class TerminalError(Exception):
    """Retrying cannot help; `reason` is shown to the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    message_type: str
    data: bytes
    num_delivered: int
    stream_seq: int
    msg: Msg
    # Set on the platform's consumers (`ConsumerSpec.contract`): the checked message and the
    # role that published it.
    message: Message | None = None
    origin: Role | None = None


M = TypeVar("M", bound=Message)


def contract_message(delivery: Delivery, kind: type[M]) -> M:
    """The delivery's checked message, which must be a `kind`."""
    if not isinstance(delivery.message, kind):
        raise TerminalError(f"{delivery.message_type or 'a message'} is not a {kind.__name__}")
    return delivery.message


Handler = Callable[[Delivery], Awaitable[None]]
OnTerminal = Callable[[Delivery, str], Awaitable[None]]


async def bind(js: JetStreamContext, spec: ConsumerSpec, wait_s: float = 60.0) -> object:
    """Bind to a declared durable consumer, waiting (bounded) for the bootstrap to declare it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
        except nats.js.errors.NotFoundError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def _heartbeat(msg: Msg, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        with contextlib.suppress(Exception):
            await msg.in_progress()


def _retry_delay(num_delivered: int) -> float:
    return float(min(30, 2 ** min(num_delivered, 5)))


async def process(
    msg: Msg, spec: ConsumerSpec, handle: Handler, on_terminal: OnTerminal | None
) -> None:
    """Run one message through `handle` and settle it per the ack policy."""
    meta = msg.metadata
    headers = msg.headers or {}
    message_type = headers.get(TYPE_HEADER, "")
    message, origin = None, None
    if spec.contract:
        try:
            message, origin = open_envelope(msg.subject, message_type, msg.data)
        except ForgedMessage as exc:
            log.warning("refused a message on %s: %s", msg.subject, exc)
            await msg.term()
            return
    delivery = Delivery(
        message_type=message_type,
        data=msg.data,
        num_delivered=meta.num_delivered,
        stream_seq=meta.sequence.stream,
        msg=msg,
        message=message,
        origin=origin,
    )
    last_attempt = spec.max_deliver > 0 and delivery.num_delivered >= spec.max_deliver
    with tracer.start_as_current_span(
        f"process {delivery.message_type or msg.subject}",
        context=context_from_headers(headers),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": msg.subject,
            "messaging.message.id": headers.get("Nats-Msg-Id", ""),
            "temps.delivery": delivery.num_delivered,
        },
    ):
        beat = asyncio.create_task(_heartbeat(msg, max(1.0, spec.ack_wait_s / 3)))
        try:
            await handle(delivery)
        except TerminalError as exc:
            await _terminate(msg, delivery, exc.reason, on_terminal)
            return
        except RetryableError as exc:
            if last_attempt:
                reason = f"gave up after {delivery.num_delivered} attempts: {exc.reason}"
                await _terminate(msg, delivery, reason, on_terminal)
            else:
                log.info("retrying %s in %.1fs: %s", msg.subject, exc.delay_s, exc.reason)
                await msg.nak(delay=exc.delay_s)
            return
        except Exception as exc:
            log.exception("handler for %s failed", msg.subject)
            if last_attempt:
                reason = f"gave up after {delivery.num_delivered} attempts: {exc}"
                await _terminate(msg, delivery, reason, on_terminal)
            else:
                await msg.nak(delay=_retry_delay(delivery.num_delivered))
            return
        finally:
            beat.cancel()
        try:
            await msg.ack_sync(timeout=5)
        except Exception:
            # The work is done and recorded; a redelivery will find it so and converge.
            log.warning("ack of %s was not confirmed; it may be redelivered", msg.subject)


async def _terminate(
    msg: Msg, delivery: Delivery, reason: str, on_terminal: OnTerminal | None
) -> None:
    try:
        if on_terminal is not None:
            await on_terminal(delivery, reason)
    except Exception:
        # The failure could not be announced: keep the message so it is not lost silently.
        log.exception("could not record the failure of %s; redelivering", delivery.msg.subject)
        await msg.nak(delay=_retry_delay(delivery.num_delivered))
        return
    log.warning("terminal failure of %s: %s", msg.subject, reason)
    await msg.term()


async def consume(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handle: Handler,
    *,
    stop: asyncio.Event,
    on_terminal: OnTerminal | None = None,
    concurrency: int = 4,
) -> None:
    """Fetch and process messages until `stop` is set, then drain in-flight handlers."""
    sub = await bind(js, spec)
    in_flight: set[asyncio.Task[None]] = set()
    try:
        while not stop.is_set():
            free = concurrency - len(in_flight)
            if free <= 0:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await sub.fetch(batch=free, timeout=1.0)  # type: ignore[attr-defined]
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing to do this second
            except Exception:
                # A reconnect in progress, a server restart…: the loop must outlive it.
                log.exception("fetching from %s failed; retrying", spec.durable)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                task = asyncio.create_task(process(msg, spec, handle, on_terminal))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
    finally:
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()  # type: ignore[attr-defined]
