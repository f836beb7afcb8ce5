"""A new service: its row (credentials encrypted with the master key, bound to its id) and the
commands that provision it, queued in the caller's transaction (the outbox relays them). The
gateway's create and a restore into a new service share it."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from temps_shared.crypto import KeyRing
from temps_shared.messages import ReconcileService, ServiceRequested, utcnow
from temps_shared.store import outbox
from temps_shared.store.services import ServiceRecord, insert_service, secrets_aad
from temps_shared.store.types import Connection


class ServiceNameTaken(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a service named {name!r} exists")
        self.name = name


async def register_service(
    conn: Connection,
    keyring: KeyRing,
    *,
    name: str,
    service_type: str,
    version: str,
    parameters: dict[str, Any],
    resources: dict[str, Any],
    credentials: dict[str, str],
) -> UUID:
    """Insert the service (generation 1, to run) and queue ServiceRequested and its first
    reconcile; the new id. `ServiceNameTaken` leaves the caller's transaction intact."""
    now, service_id = utcnow(), uuid4()
    record = ServiceRecord(
        id=service_id,
        name=name,
        service_type=service_type,
        version=version,
        parameters=parameters,
        resources=resources,
        secrets_ciphertext=keyring.encrypt(
            json.dumps(credentials).encode(), secrets_aad(service_id)
        ),
        desired_state="running",
        generation=1,
        purged=False,
        created_at=now,
        updated_at=now,
    )
    try:
        async with conn.transaction():  # a savepoint: the conflict leaves the outer intact
            await insert_service(conn, record)
    except asyncpg.UniqueViolationError as exc:
        raise ServiceNameTaken(name) from exc
    await outbox.enqueue(
        conn,
        ServiceRequested(
            service_id=service_id,
            name=name,
            service_type=service_type,
            version=version,
            generation=1,
        ),
    )
    await outbox.enqueue(
        conn, ReconcileService(service_id=service_id, generation=1, reason="create")
    )
    return service_id
