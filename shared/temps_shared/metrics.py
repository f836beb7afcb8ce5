"""Prometheus metrics: this process's registry, the metrics every process shares (HTTP requests,
commands handled, redeliveries, consumer queue depth, reconcile durations), the `/metrics`
server of the workers and the queue-depth sampler.

One registry per process (`REGISTRY`, not prometheus_client's global one); the API serves it on
its own port at `/metrics`, a worker on `TEMPS_METRICS_PORT` when that is set. The monitor's
probe and per-service metrics live in `temps_monitor.probe_metrics`, on the same registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from nats.js import JetStreamContext
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from temps_shared.bus.consume import Delivery, RetryableError, TerminalError
from temps_shared.bus.topology import ConsumerSpec
from temps_shared.telemetry import log_context

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from a fast HTTP call to a PostgreSQL primary with a replica cloned.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WORK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "temps_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "temps_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMMANDS = Counter(
    "temps_commands_handled",
    "Bus messages handled by a worker, by message type and outcome "
    "(ok, retry, terminal, error = unexpected, retried).",
    ["worker", "type", "outcome"],
    registry=REGISTRY,
)
COMMAND_DURATION = Histogram(
    "temps_command_duration_seconds",
    "Time a worker spent handling one delivery, by message type and outcome.",
    ["worker", "type", "outcome"],
    buckets=WORK_BUCKETS,
    registry=REGISTRY,
)
REDELIVERIES = Counter(
    "temps_message_redeliveries",
    "Deliveries of a message after its first (JetStream redelivered it).",
    ["worker", "type"],
    registry=REGISTRY,
)
QUEUE_PENDING = Gauge(
    "temps_consumer_pending_messages",
    "Messages the durable consumer has not delivered yet (num_pending, sampled).",
    ["stream", "consumer"],
    registry=REGISTRY,
)
QUEUE_ACK_PENDING = Gauge(
    "temps_consumer_ack_pending_messages",
    "Messages delivered to the durable consumer and not acknowledged yet (sampled).",
    ["stream", "consumer"],
    registry=REGISTRY,
)
RECONCILES = Histogram(
    "temps_reconcile_duration_seconds",
    "Duration of one reconcile of a service by the provisioner, by outcome.",
    ["outcome"],
    buckets=WORK_BUCKETS,
    registry=REGISTRY,
)
OUTBOX_PUBLISHED = Counter(
    "temps_outbox_published_messages",
    "Outbox rows relayed to JetStream (acked by the stream), by message type.",
    ["type"],
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


@dataclass
class MetricsServer:
    """A worker's `/metrics` HTTP server (a daemon thread)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(host: str, port: int | None) -> MetricsServer | None:
    """Serve the registry on `host:port` (any path answers with the metrics); None when `port`
    is unset (the default: a worker serves no metrics unless asked)."""
    if port is None:
        return None
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    log.info("metrics on http://%s:%s/metrics", host, port)
    return MetricsServer(server, thread)


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, TerminalError):
        return "terminal"
    if isinstance(exc, RetryableError):
        return "retry"
    return "error"


Handler = Callable[[Delivery], Awaitable[None]]


def instrumented(worker: str, handle: Handler) -> Handler:
    """`handle`, counted and timed by message type and outcome, its redeliveries counted, and
    its log lines carrying the message's service id and command id."""

    async def run(delivery: Delivery) -> None:
        message_type = delivery.message_type or "unknown"
        message = delivery.message
        service_id = getattr(message, "service_id", None)
        command_id = getattr(message, "message_id", None)
        if delivery.num_delivered > 1:
            REDELIVERIES.labels(worker, message_type).inc()
        started = time.perf_counter()
        failure: BaseException | None = None
        with log_context(
            service_id=str(service_id) if service_id is not None else None,
            command_id=str(command_id) if command_id is not None else None,
        ):
            try:
                await handle(delivery)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                outcome = _outcome(failure)
                COMMANDS.labels(worker, message_type, outcome).inc()
                COMMAND_DURATION.labels(worker, message_type, outcome).observe(
                    time.perf_counter() - started
                )

    return run


async def sample_queue_depth(js: JetStreamContext, consumers: Iterable[ConsumerSpec]) -> None:
    """Read each consumer's pending counts once (a consumer not declared yet is skipped)."""
    for spec in consumers:
        try:
            info = await js.consumer_info(spec.stream, spec.durable, timeout=5)
        except Exception as exc:
            log.debug("no queue depth for %s: %s", spec.durable, exc)
            continue
        QUEUE_PENDING.labels(spec.stream, spec.durable).set(info.num_pending or 0)
        QUEUE_ACK_PENDING.labels(spec.stream, spec.durable).set(info.num_ack_pending or 0)


async def run_queue_sampler(
    js: JetStreamContext,
    consumers: list[ConsumerSpec],
    stop: asyncio.Event,
    interval_s: float,
) -> None:
    """Sample the consumers' queue depth every `interval_s` until `stop`."""
    while not stop.is_set():
        await sample_queue_depth(js, consumers)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
