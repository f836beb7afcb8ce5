"""A deliberately broken API build, to show that the fault suite can fail (test-only: the suite
runs it instead of `temps_api` when `TEMPS_FAULT_BREAK=outbox`, never otherwise).

It bypasses the transactional outbox: each command and event is published to JetStream at once,
inside the request's transaction, before that transaction commits (the classic dual-write bug).
The provisioner may then reconcile against the state as it was before the request, and nothing
publishes the command again after the commit; a request whose commit fails (the database was
killed) has published a command anyway. The suite's invariants (every accepted request took
effect, every service converges to its desired generation) must catch it.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from temps_api.main import run
from temps_api.settings import ApiSettings
from temps_shared.bus.codec import encode
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.publish import publish_raw
from temps_shared.messages import Message, Role
from temps_shared.store import outbox
from temps_shared.store.types import Connection
from temps_shared.telemetry import current_trace_headers

log = logging.getLogger(__name__)
_jetstream: list[JetStreamContext] = []


async def publish_before_commit(
    conn: Connection, message: Message, origin: Role = Role.API
) -> None:
    del conn  # nothing goes into the outbox table: the message leaves before the commit
    if not _jetstream:
        settings = ApiSettings()
        nc = await connect_nats(settings.nats_url, Role.API, settings.data_dir, name="broken-api")
        _jetstream.append(nc.jetstream())
    await publish_raw(
        _jetstream[0],
        message.subject(origin),
        encode(message),
        msg_id=str(message.message_id),
        message_type=message.type_name(),
        headers=current_trace_headers(),
    )


if __name__ == "__main__":
    log.warning("BROKEN BUILD (TEMPS_FAULT_BREAK=outbox): commands are published before commit")
    outbox.enqueue = publish_before_commit
    run()
