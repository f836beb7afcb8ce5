"""/api/events: every bus event as Server-Sent Events; `Last-Event-ID` resumes. A stream ends
(with a `stream_ended` event) within about a second of its token being revoked or expiring."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from temps_shared.bus.codec import TYPE_HEADER
from temps_shared.bus.topology import EVENTS_STREAM

from temps_api.auth import EXTERNAL_SERVICES_READ, Principal
from temps_api.deps import State, described, require
from temps_api.errors import ApiError
from temps_api.request_guard import is_stream_sequence
from temps_api.token_watch import token_watch

router = APIRouter(prefix="/api", tags=["events"])
KEEPALIVE_S = 15.0


def format_sse(msg: Msg) -> str:
    body = json.loads(msg.data)
    event_type = (msg.headers or {}).get(TYPE_HEADER, "Event")
    data = {
        "type": event_type,
        "service_id": body.get("service_id"),
        "occurred_at": body.get("occurred_at"),
        "payload": {
            k: v for k, v in body.items() if k not in ("service_id", "occurred_at", "message_id")
        },
    }
    return f"id: {msg.metadata.sequence.stream}\nevent: {event_type}\ndata: {json.dumps(data)}\n\n"


def stream_ended(reason: str) -> str:
    """The last frame of a stream whose token ended (no `id:`: Last-Event-ID stays put)."""
    return f"event: stream_ended\ndata: {json.dumps({'reason': reason})}\n\n"


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events; a `stream_ended` event (`{reason: token_revoked"
            " | token_expired}`) is the last one when the token stops being valid",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **described(422, "A Last-Event-ID or service_id that is not one"),
    },
)
async def events(
    request: Request,
    state: State,
    principal: Annotated[Principal, Depends(require(EXTERNAL_SERVICES_READ))],
    service_id: UUID | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    subject = f"temps.evt.service.{service_id}.>" if service_id else "temps.evt.>"
    if last_event_id is not None and not is_stream_sequence(last_event_id):
        raise ApiError(422, "invalid_input", "Last-Event-ID must be a stream sequence number")
    config = (
        ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=int(last_event_id) + 1
        )
        if last_event_id is not None
        else ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    )
    queue: asyncio.Queue[Msg | None] = asyncio.Queue(maxsize=1000)  # None: the token ended

    async def on_message(msg: Msg) -> None:
        await queue.put(msg)

    sub = await state.js.subscribe(
        subject, stream=EVENTS_STREAM, cb=on_message, ordered_consumer=True, config=config
    )

    ended: list[str] = []

    def on_token_end(reason: str) -> None:
        ended.append(reason)
        with contextlib.suppress(asyncio.QueueFull):  # full: the loop wakes anyway
            queue.put_nowait(None)

    async def stream() -> AsyncIterator[str]:
        try:
            with token_watch(request, state.pool).watching(principal.token_id, on_token_end):
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        msg = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                    except TimeoutError:
                        msg = None
                    if ended:
                        yield stream_ended(ended[0])
                        return
                    yield ": keepalive\n\n" if msg is None else format_sse(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
