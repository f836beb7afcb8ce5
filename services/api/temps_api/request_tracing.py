"""A span and the request metrics per HTTP request.

Pure ASGI rather than `@app.middleware("http")` (starlette's BaseHTTPMiddleware), which ends a
streamed body normally when its generator raises: a download that broke off (a damaged backup
artifact) would look complete to the client."""

from __future__ import annotations

import time

from opentelemetry import trace
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temps_shared.metrics import HTTP_DURATION, HTTP_REQUESTS
from temps_shared.telemetry import context_from_headers

tracer = trace.get_tracer("temps.api")


class TraceRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracer.start_as_current_span(
            f"{request.method} {request.url.path}",
            context=context_from_headers(request.headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.url.path},
        ) as span:
            started = time.perf_counter()
            try:
                await self.app(scope, receive, noting_status)
            finally:
                # The route's template (`/api/external-services/{service_id}`), not the path:
                # one series per route, whatever the ids.
                template = getattr(scope.get("route"), "path", None)
                route = template if isinstance(template, str) else "unmatched"
                if template is not None:
                    span.update_name(f"{request.method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                labels = (request.method, route, str(status))
                HTTP_REQUESTS.labels(*labels).inc()
                HTTP_DURATION.labels(*labels).observe(time.perf_counter() - started)
