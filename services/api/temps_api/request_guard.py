"""Request bodies before anything parses them: a size limit (413, by Content-Length and by
counting what a chunked upload streams), JSON only (415), and JSON that Python and PostgreSQL
can hold — finite numbers, integers within 64 bits, bounded nesting (422).

A pure ASGI middleware: the body is read here, at most `max_body_bytes` of it, checked, and
handed on to the application unchanged. Nothing above the limit is buffered or parsed, so an
oversized upload costs the event loop nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from temps_api.errors import error_body

MAX_INT = 2**63 - 1  # what PostgreSQL's bigint, and most JSON readers, hold exactly
MAX_DEPTH = 64  # nesting of arrays and objects; the API's bodies need a handful
DRAIN_LIMIT = 16 * 1024 * 1024  # read (and drop) this much of a refused upload so the client
# sees the 413 rather than a reset connection; anything beyond is cut off


class _BodyRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BodyRefused(
            422, "invalid_input", f"body: the number {text[:40]} is out of range (finite only)"
        )
    return value


def _bounded_int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_INT:
        raise _BodyRefused(
            422, "invalid_input", f"body: the integer {text[:40]}… does not fit in 64 bits"
        )
    return value


def _no_constant(text: str) -> Any:
    raise _BodyRefused(422, "invalid_input", f"body: {text} is not a JSON number (finite only)")


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return depth
        following: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                following.extend(item.values())
            elif isinstance(item, list):
                following.extend(item)
        level = following
    return depth - 1


def check_json(body: bytes) -> None:
    """Raise `_BodyRefused` (422) unless `body` is JSON with finite, bounded numbers."""
    try:
        parsed = json.loads(
            body,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except _BodyRefused:
        raise
    except json.JSONDecodeError as exc:
        raise _BodyRefused(
            422, "invalid_input", f"body: invalid JSON at position {exc.pos}: {exc.msg}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of thousands of digits
        raise _BodyRefused(422, "invalid_input", "body: not JSON this API accepts") from exc
    if _depth(parsed) > MAX_DEPTH:
        raise _BodyRefused(
            422, "invalid_input", f"body: nested deeper than {MAX_DEPTH} arrays/objects"
        )


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            if length is not None and (not length.isdigit() or len(length) > 18):
                raise _BodyRefused(400, "bad_request", "Content-Length is not a byte count")
            if length is not None and int(length) > self.max_body_bytes:
                raise self._too_large()
            if not chunked and (length is None or int(length) == 0):
                await self.app(scope, receive, send)  # no body: nothing to check
                return
            body = await self._read(receive)
            if body is None:
                return  # the client went away
            if body:
                if not is_json(headers.get("content-type")):
                    raise _BodyRefused(
                        415,
                        "unsupported_media_type",
                        "send the body as JSON with Content-Type: application/json",
                    )
                check_json(body)
        except _BodyRefused as refused:
            await self._refuse(refused, scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> _BodyRefused:
        return _BodyRefused(
            413,
            "body_too_large",
            f"the request body is larger than {self.max_body_bytes} bytes",
        )

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or `_BodyRefused` as soon as it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(
        self, refused: _BodyRefused, scope: Scope, receive: Receive, send: Send
    ) -> None:
        payload = json.dumps(error_body(refused.code, refused.message)).encode()
        close = refused.status in (400, 413)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        if refused.status == 413:
            # Before the answer is complete: afterwards the server stops reading.
            await _drain(receive, DRAIN_LIMIT)
        await send({"type": "http.response.body", "body": payload})


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop what the client still sends (up to `limit` bytes), so it gets to read the
    answer instead of a connection reset mid-upload."""
    dropped = 0
    while dropped < limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, for streaming answers

    return replay


def is_stream_sequence(value: str) -> bool:
    """Whether a `Last-Event-ID` names a JetStream stream sequence this API can resume after
    (ASCII digits, at most 2^63 - 2, so the next one fits NATS's counters)."""
    return value.isascii() and value.isdigit() and len(value) <= 19 and int(value) < MAX_INT
