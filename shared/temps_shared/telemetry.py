"""OpenTelemetry wiring and log format: one tracer provider per process (exported over OTLP when
`TEMPS_OTEL_EXPORTER_ENDPOINT` is set), W3C trace context in NATS headers, and log lines that
carry the service id, the command id and the trace ids (JSON, or human text on a terminal)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

OTLP_ENDPOINT_ENV = "TEMPS_OTEL_EXPORTER_ENDPOINT"
LOG_FORMAT_ENV = "TEMPS_LOG_FORMAT"
TRACES_PATH = "/v1/traces"


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for `endpoint`: a collector's base URL gets `/v1/traces`, a URL
    with a path is used as given."""
    parts = urlsplit(endpoint.strip())
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=TRACES_PATH))
    return parts.geturl()


def add_otlp_exporter(provider: TracerProvider, endpoint: str) -> None:
    """Batch-export `provider`'s spans over OTLP/HTTP (protobuf) to `endpoint`."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_url(endpoint), timeout=10))
    )


def setup_tracing(service_name: str) -> None:
    """Install an SDK tracer provider unless one is installed already (tests install theirs)."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    endpoint = os.environ.get(OTLP_ENDPOINT_ENV, "").strip()
    if endpoint:
        add_otlp_exporter(provider, endpoint)
    if os.environ.get("TEMPS_OTEL_CONSOLE") == "1":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def current_trace_headers() -> dict[str, str]:
    """The active span's context as `traceparent` (and `tracestate`) headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_headers(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))


# --- logs ---------------------------------------------------------------------------------------

# Fields every line carries (null when unknown), from the record's `extra` or the log context.
CONTEXT_FIELDS = ("service_id", "command_id")
_LOG_CONTEXT: ContextVar[dict[str, str]] = ContextVar("temps_log_context", default={})  # noqa: B039
# What a LogRecord holds by itself; anything else on a record came from `extra`.
# (uvicorn adds `color_message`, the message with terminal colours.)
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Every line logged inside (this task and what it awaits) carries `fields`."""
    merged = {**_LOG_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _LOG_CONTEXT.set(merged)
    try:
        yield
    finally:
        _LOG_CONTEXT.reset(token)


def line_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: context ids, trace ids, then its other `extra`s."""
    fields: dict[str, Any] = dict.fromkeys(CONTEXT_FIELDS)
    fields.update(_LOG_CONTEXT.get())
    span = trace.get_current_span().get_span_context()
    fields["trace_id"] = format(span.trace_id, "032x") if span.is_valid else None
    fields["span_id"] = format(span.span_id, "016x") if span.is_valid else None
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            fields[key] = value
    if fields.get("command_id") is None and fields.get("message_id") is not None:
        fields["command_id"] = fields["message_id"]
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context and trace ids (null
    when unknown) and any other `extra` field; `exception` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **line_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: the usual line, then the fields that are known as
    `key=value` (trace ids shortened)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = line_fields(record)
        if fields.get("trace_id"):
            fields["trace_id"] = fields["trace_id"][:16]
        fields.pop("span_id", None)
        known = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if not known:
            return text
        first, newline, rest = text.partition("\n")  # keep a traceback below the fields
        return f"{first} [{known}]{newline}{rest}"


def log_format(stream: TextIO, forced: str | None) -> str:
    """`json` or `text`: as forced (`TEMPS_LOG_FORMAT`), else text on a terminal, JSON
    otherwise."""
    if forced:
        choice = forced.strip().lower()
        if choice not in ("json", "text"):
            raise ValueError(f"{LOG_FORMAT_ENV} must be json or text, not {forced!r}")
        return choice
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class _TempsHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `setup_logging` installed, so a second call replaces it."""


def setup_logging(level: str, stream: TextIO | None = None, fmt: str | None = None) -> None:
    """Log to `stream` (stderr) at `level`, in `fmt` or the format `log_format` picks."""
    out = stream if stream is not None else sys.stderr
    chosen = log_format(out, fmt if fmt is not None else os.environ.get(LOG_FORMAT_ENV))
    handler = _TempsHandler(out)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _TempsHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
