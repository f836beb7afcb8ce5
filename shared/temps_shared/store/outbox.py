"""Transactional outbox: a message is written in the same transaction as the state it announces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temps_shared.bus.codec import encode
from temps_shared.messages import Message, Role
from temps_shared.store.types import Connection
from temps_shared.telemetry import current_trace_headers

NOTIFY_CHANNEL = "temps_outbox"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    msg_id: str
    subject: str
    message_type: str
    payload: bytes
    headers: dict[str, str]


async def enqueue(conn: Connection, message: Message, origin: Role = Role.API) -> None:
    """Queue `message` for the relay (which publishes as `origin`, the gateway's role); call
    inside the transaction that makes it true."""
    subject = message.subject(origin)
    await conn.execute(
        "INSERT INTO outbox (msg_id, subject, message_type, payload, headers)"
        " VALUES ($1, $2, $3, $4, $5)",
        str(message.message_id),
        subject,
        message.type_name(),
        encode(message),
        current_trace_headers(),
    )
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


async def claim_unpublished(conn: Connection, limit: int) -> list[OutboxRow]:
    """Lock the oldest unpublished rows, skipping those another relay holds (in a transaction)."""
    rows = await conn.fetch(
        "SELECT id, msg_id, subject, message_type, payload, headers FROM outbox"
        " WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    result: list[OutboxRow] = []
    for r in rows:
        headers: dict[str, Any] = r["headers"]
        result.append(
            OutboxRow(
                r["id"],
                r["msg_id"],
                r["subject"],
                r["message_type"],
                r["payload"],
                {k: str(v) for k, v in headers.items()},
            )
        )
    return result


async def mark_published(conn: Connection, ids: list[int]) -> None:
    await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids)
