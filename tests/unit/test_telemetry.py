"""Log lines (JSON and text), the format choice, and OTLP export to a real HTTP endpoint on
loopback."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from temps_shared.telemetry import (
    JsonFormatter,
    TextFormatter,
    add_otlp_exporter,
    log_context,
    log_format,
    otlp_traces_url,
    setup_logging,
)


def _record(message: str = "hello %s", **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("temps.test", logging.INFO, __file__, 1, message, ("you",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_has_the_context_fields_even_when_unknown() -> None:
    line = json.loads(JsonFormatter().format(_record()))
    assert line["message"] == "hello you"
    assert line["level"] == "INFO"
    assert line["logger"] == "temps.test"
    for key in ("service_id", "command_id", "trace_id", "span_id"):
        assert key in line
        assert line[key] is None


def test_json_line_keeps_extra_fields_and_reads_message_id_as_command_id() -> None:
    line = json.loads(JsonFormatter().format(_record(service_id="s-1", message_id="m-1", n=3)))
    assert line["service_id"] == "s-1"
    assert line["command_id"] == "m-1"
    assert line["n"] == 3


def test_json_line_takes_ids_from_the_log_context_and_the_current_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    with (
        log_context(service_id="s-2", command_id="c-2"),
        tracer.start_as_current_span("work") as span,
    ):
        line = json.loads(JsonFormatter().format(_record()))
    context = span.get_span_context()
    assert line["service_id"] == "s-2"
    assert line["command_id"] == "c-2"
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    # Outside the context, the ids are gone again.
    after = json.loads(JsonFormatter().format(_record()))
    assert after["service_id"] is None
    assert after["trace_id"] is None


def test_json_line_holds_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in line["exception"]


def test_text_line_is_for_people_and_names_the_known_fields() -> None:
    text = TextFormatter().format(_record(service_id="s-3"))
    assert "INFO temps.test hello you" in text
    assert "[service_id=s-3]" in text
    assert "command_id" not in text  # unknown: left out
    assert "{" not in text


def test_the_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert log_format(Terminal(), None) == "text"
    assert log_format(io.StringIO(), None) == "json"
    assert log_format(Terminal(), "json") == "json"
    assert log_format(io.StringIO(), "TEXT") == "text"
    with pytest.raises(ValueError, match="TEMPS_LOG_FORMAT"):
        log_format(io.StringIO(), "xml")


def test_setup_logging_writes_json_lines_with_the_extras() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging("INFO", stream=out, fmt="json")
        setup_logging("INFO", stream=out, fmt="json")  # a second call replaces, not doubles
        logging.getLogger("temps.x").info("made %s", "it", extra={"service_id": "s-4"})
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    lines = [json.loads(raw) for raw in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["message"] == "made it"
    assert lines[0]["service_id"] == "s-4"


def test_otlp_traces_url() -> None:
    assert otlp_traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert otlp_traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/custom/traces") == "http://c:4318/custom/traces"


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    received: list[tuple[str, str, bytes]] = []
    _Collector.received = received
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_spans_are_exported_over_otlp_http(
    collector: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    endpoint, received = collector
    provider = TracerProvider()
    add_otlp_exporter(provider, endpoint)
    with provider.get_tracer("temps.test").start_as_current_span("exported-span"):
        pass
    assert provider.force_flush(timeout_millis=10_000)
    provider.shutdown()
    assert received, "the collector received nothing"
    path, content_type, body = received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"exported-span" in body
    assert trace.get_tracer_provider() is not provider  # the process-wide one is untouched
