"""Publishing to JetStream with de-duplication ids and trace context in the headers, on the
subject of the publishing role (the server refuses any other)."""

from __future__ import annotations

from nats.js import JetStreamContext

from temps_shared.bus.codec import MSG_ID_HEADER, TYPE_HEADER, encode
from temps_shared.messages import Command, Event, Role
from temps_shared.telemetry import current_trace_headers


async def publish_raw(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    message_type: str,
    headers: dict[str, str] | None = None,
) -> int:
    """Publish and wait for the stream's ack; returns the stream sequence."""
    all_headers = {**(headers or {}), MSG_ID_HEADER: msg_id, TYPE_HEADER: message_type}
    ack = await js.publish(subject, payload, headers=all_headers)
    return ack.seq


async def publish_event(
    js: JetStreamContext, event: Event, *, origin: Role, dedupe_id: str | None = None
) -> int:
    """Publish an event as `origin`; `dedupe_id` makes a redelivered handler's re-emission a
    no-op."""
    return await publish_raw(
        js,
        event.subject(origin),
        encode(event),
        msg_id=dedupe_id or str(event.message_id),
        message_type=event.type_name(),
        headers=current_trace_headers(),
    )


async def publish_command(js: JetStreamContext, command: Command, *, origin: Role) -> int:
    return await publish_raw(
        js,
        command.subject(origin),
        encode(command),
        msg_id=str(command.message_id),
        message_type=command.type_name(),
        headers=current_trace_headers(),
    )
