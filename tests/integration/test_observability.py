"""Observability on the real parts: one create is one trace (API → relay → NATS → provisioner →
Docker → events → projector), and the API, the provisioner and the monitor serve Prometheus
metrics that parse and count what happened."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import docker
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temps_monitor.settings import MonitorSettings

from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import eventually, free_port, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
CYCLE = 2.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
async def platform(
    base_env: dict[str, str], docker_client: docker.DockerClient
) -> AsyncIterator[Platform]:
    """The API and a provisioner serving its metrics (queue depth sampled often)."""
    env = {
        **base_env,
        "TEMPS_METRICS_PORT": str(free_port()),
        "TEMPS_METRICS_QUEUE_SAMPLE_S": "0.5",
    }
    running = Platform(env)
    await running.start_api()
    await running.start_provisioner()
    yield running
    with contextlib.suppress(Exception):
        await running.stop()


@pytest.fixture(scope="module")
async def traced(api: httpx.AsyncClient) -> dict[str, Any]:
    """A PostgreSQL service created under a trace id of the test's (W3C `traceparent`)."""
    trace_id = secrets.token_hex(16)
    response = await api.post(
        "/api/external-services",
        json={
            "name": f"{P}observed",
            "service_type": "postgres",
            "parameters": {"memory": "256MB", "replicas": 0},
        },
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    await wait_status(api, created["id"], "operational")
    return {"id": created["id"], "trace_id": int(trace_id, 16)}


async def _scrape(url: str) -> Samples:
    """GET a /metrics page and parse it with Prometheus's own text parser."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels` (None: no such sample)."""
    wanted = set(labels.items())
    found = [v for (n, lbls), v in samples.items() if n == name and wanted <= lbls]
    return sum(found) if found else None


def _worker_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


async def test_one_create_is_one_trace_across_the_processes(
    traced: dict[str, Any], spans: InMemorySpanExporter
) -> None:
    trace_id, service_id = traced["trace_id"], traced["id"]

    def of_trace() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]

    def scope(span: ReadableSpan) -> str:
        return span.instrumentation_scope.name if span.instrumentation_scope else ""

    async def projected() -> list[ReadableSpan] | None:
        mine = of_trace()
        names = {s.name for s in mine if scope(s) == "temps.projector"}
        return mine if "project ServiceProvisioned" in names else None

    mine = await eventually(projected, 10, "the projection of ServiceProvisioned in the trace")
    by_scope: dict[str, set[str]] = {}
    for span in mine:
        by_scope.setdefault(scope(span), set()).add(span.name)
    assert "POST /api/external-services" in by_scope["temps.api"]
    assert "publish ReconcileService" in by_scope["temps.outbox"]
    assert "publish ServiceRequested" in by_scope["temps.outbox"]
    assert "process ReconcileService" in by_scope["temps.bus"]  # the worker's delivery
    assert "reconcile" in by_scope["temps.provisioner"]
    assert {"docker create", "docker start"} <= by_scope["temps.docker"]
    assert {"project ServiceRequested", "project ServiceProvisioned"} <= by_scope["temps.projector"]
    # Parent links hold the trace together: the worker's span is a child of the relay's.
    relay = {s.context.span_id for s in mine if s.name == "publish ReconcileService"}
    worker = [s for s in mine if s.name == "process ReconcileService"]
    assert any(s.parent is not None and s.parent.span_id in relay for s in worker)
    # Nothing of this create went into another trace.
    elsewhere = [
        s
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("temps.service_id") == service_id
        and s.name in ("reconcile", "project ServiceRequested", "project ServiceProvisioned")
        and s.context.trace_id != trace_id
    ]
    assert elsewhere == []


async def test_the_api_serves_its_metrics_without_a_token_and_outside_the_schema(
    platform: Platform, api: httpx.AsyncClient, traced: dict[str, Any]
) -> None:
    samples = await _scrape(f"{platform.base_url}/metrics")  # no Authorization header
    created = _value(
        samples,
        "temps_http_requests_total",
        method="POST",
        route="/api/external-services",
        status="202",
    )
    assert created is not None
    assert created >= 1
    # Route templates, not paths: the polling of one service is one series.
    polled = _value(
        samples,
        "temps_http_request_duration_seconds_count",
        method="GET",
        route="/api/external-services/{service_id}",
        status="200",
    )
    assert polled is not None
    assert polled >= 1
    assert not any(traced["id"] in dict(labels).get("route", "") for _, labels in samples)
    took = _value(samples, "temps_http_request_duration_seconds_sum", method="POST")
    assert took is not None
    assert 0 < took < 60
    published = _value(samples, "temps_outbox_published_messages_total", type="ReconcileService")
    assert published is not None
    assert published >= 1
    assert _value(samples, "process_resident_memory_bytes") is not None

    document = (await api.get("/api/openapi.json")).json()
    assert not any("metrics" in path for path in document["paths"])


async def test_the_provisioner_counts_its_commands_and_reconciles(
    platform: Platform, traced: dict[str, Any]
) -> None:
    url = _worker_url(int(platform.env["TEMPS_METRICS_PORT"]))

    async def sampled() -> Samples | None:
        samples = await _scrape(url)
        depth = _value(samples, "temps_consumer_pending_messages", consumer="provisioner")
        return samples if depth is not None else None

    samples = await eventually(sampled, 10, "the provisioner's queue depth to be sampled")
    handled = _value(
        samples,
        "temps_commands_handled_total",
        worker="provisioner",
        type="ReconcileService",
        outcome="ok",
    )
    assert handled is not None
    assert handled >= 1
    count = _value(samples, "temps_reconcile_duration_seconds_count", outcome="ok")
    total = _value(samples, "temps_reconcile_duration_seconds_sum", outcome="ok")
    assert count is not None
    assert total is not None
    assert count >= 1
    assert 0.1 < total / count < 300  # a PostgreSQL create takes seconds, not microseconds
    timed = _value(
        samples,
        "temps_command_duration_seconds_count",
        worker="provisioner",
        type="ReconcileService",
    )
    assert timed is not None
    assert timed >= handled
    depth = _value(samples, "temps_consumer_pending_messages", consumer="provisioner")
    assert depth is not None
    assert depth >= 0


async def test_the_monitor_exports_probe_results_and_the_service_figures(
    platform: Platform, traced: dict[str, Any]
) -> None:
    port = free_port()
    settings: MonitorSettings = await platform.start_monitor(
        monitor_period_s=CYCLE,
        monitor_probe_timeout_s=1.8,
        metrics_port=port,
        metrics_queue_sample_s=0.5,
    )
    assert settings.metrics_port == port
    service = {"service_id": traced["id"], "service_name": f"{P}observed"}

    async def figures() -> Samples | None:
        try:
            samples = await _scrape(_worker_url(port))
        except httpx.ConnectError:
            return None  # the monitor is still starting
        ready = (
            _value(samples, "temps_service_uptime_ratio", **service) is not None
            and _value(samples, "temps_service_wal_bytes", **service) is not None
        )
        return samples if ready else None

    samples = await eventually(figures, 6 * CYCLE + 10, "the service's figures from the monitor")
    probes = _value(samples, "temps_probes_total", service_type="postgres", verdict="operational")
    assert probes is not None
    assert probes >= 1
    assert _value(samples, "temps_service_up", **service, service_type="postgres") == 1
    assert _value(samples, "temps_service_status", **service, status="operational") == 1
    assert _value(samples, "temps_service_status", **service, status="down") == 0
    uptime = _value(samples, "temps_service_uptime_ratio", **service)
    assert uptime is not None
    assert 0 < uptime <= 1
    connections = _value(samples, "temps_service_connections", **service)
    assert connections is not None
    assert connections >= 0  # client connections; the monitor does not count itself
    used = _value(samples, "temps_service_storage_used_bytes", **service)
    assert used is not None
    assert used > 1024 * 1024  # a fresh PostgreSQL cluster is tens of MB
    wal = _value(samples, "temps_service_wal_bytes", **service)
    assert wal is not None
    assert wal >= 16 * 1024 * 1024  # at least one segment
    assert _value(samples, "temps_consumer_pending_messages", consumer="monitor") is not None
