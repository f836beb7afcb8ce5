"""Desired state of services (the gateway writes it; workers read it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from temps_shared.crypto import KeyRing
from temps_shared.store.types import Connection, Executor


@dataclass(frozen=True)
class ServiceRecord:
    id: UUID
    name: str
    service_type: str
    version: str
    parameters: dict[str, Any]
    resources: dict[str, Any]
    secrets_ciphertext: str
    desired_state: str
    generation: int
    purged: bool
    created_at: datetime
    updated_at: datetime
    previous_secrets_ciphertext: str | None = None  # set while a rotation is being applied

    def credentials(self, keyring: KeyRing) -> dict[str, str]:
        """The admin credentials, decrypted (bound to this service's id)."""
        plain = keyring.decrypt(self.secrets_ciphertext, secrets_aad(self.id))
        data: dict[str, str] = json.loads(plain)
        return data

    def previous_credentials(self, keyring: KeyRing) -> dict[str, str] | None:
        """The admin credentials before a rotation still being applied, else None."""
        if self.previous_secrets_ciphertext is None:
            return None
        plain = keyring.decrypt(self.previous_secrets_ciphertext, secrets_aad(self.id))
        data: dict[str, str] = json.loads(plain)
        return data


def secrets_aad(service_id: UUID) -> bytes:
    return f"service-secrets:{service_id}".encode()


def _record(row: asyncpg.Record) -> ServiceRecord:
    return ServiceRecord(
        id=row["id"],
        name=row["name"],
        service_type=row["service_type"],
        version=row["version"],
        parameters=row["parameters"],
        resources=row["resources"],
        secrets_ciphertext=row["secrets"],
        desired_state=row["desired_state"],
        generation=row["generation"],
        purged=row["purged"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        previous_secrets_ciphertext=row.get("previous_secrets"),
    )


async def get_service(
    conn: Executor, service_id: UUID, *, for_update: bool = False
) -> ServiceRecord | None:
    sql = "SELECT * FROM services WHERE id = $1" + (" FOR UPDATE" if for_update else "")
    row = await conn.fetchrow(sql, service_id)
    return _record(row) if row else None


async def insert_service(conn: Connection, record: ServiceRecord) -> None:
    await conn.execute(
        "INSERT INTO services (id, name, service_type, version, parameters, resources, secrets,"
        " desired_state, generation, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        record.id,
        record.name,
        record.service_type,
        record.version,
        record.parameters,
        record.resources,
        record.secrets_ciphertext,
        record.desired_state,
        record.generation,
        record.created_at,
        record.updated_at,
    )


async def set_desired_state(conn: Connection, service_id: UUID, desired_state: str) -> int:
    """Record a new desired state; returns the new generation."""
    generation: int = await conn.fetchval(
        "UPDATE services SET desired_state = $2, generation = generation + 1, updated_at = now()"
        " WHERE id = $1 RETURNING generation",
        service_id,
        desired_state,
    )
    return generation


async def bump_generation(conn: Connection, service_id: UUID) -> int:
    generation: int = await conn.fetchval(
        "UPDATE services SET generation = generation + 1, updated_at = now()"
        " WHERE id = $1 RETURNING generation",
        service_id,
    )
    return generation


async def update_parameters(conn: Connection, service_id: UUID, parameters: dict[str, Any]) -> int:
    """Store new parameters; returns the new generation."""
    generation: int = await conn.fetchval(
        "UPDATE services SET parameters = $2, generation = generation + 1, updated_at = now()"
        " WHERE id = $1 RETURNING generation",
        service_id,
        parameters,
    )
    return generation


async def update_resources(conn: Connection, service_id: UUID, resources: dict[str, Any]) -> int:
    """Store new resource caps; returns the new generation."""
    generation: int = await conn.fetchval(
        "UPDATE services SET resources = $2, generation = generation + 1, updated_at = now()"
        " WHERE id = $1 RETURNING generation",
        service_id,
        resources,
    )
    return generation


async def rotate_secrets(conn: Connection, service_id: UUID, ciphertext: str) -> int:
    """New admin secrets; the current ones are kept as `previous_secrets` until the provisioner
    has applied the rotation (a rotation over an unfinished one keeps the oldest, which is
    what the service still accepts). Returns the new generation."""
    generation: int = await conn.fetchval(
        "UPDATE services SET previous_secrets = coalesce(previous_secrets, secrets),"
        " secrets = $2, generation = generation + 1, updated_at = now()"
        " WHERE id = $1 RETURNING generation",
        service_id,
        ciphertext,
    )
    return generation


async def finish_rotation(conn: Executor, service_id: UUID, previous_ciphertext: str) -> bool:
    """Forget the previous secrets, unless another rotation replaced them meanwhile."""
    done = await conn.fetchval(
        "UPDATE services SET previous_secrets = NULL WHERE id = $1 AND previous_secrets = $2"
        " RETURNING true",
        service_id,
        previous_ciphertext,
    )
    return bool(done)


async def installation_id(pool: asyncpg.Pool) -> str:
    """This control plane's id, made by the migrations (one row)."""
    value: UUID = await pool.fetchval("SELECT id FROM installation")
    return str(value)


async def mark_purged(conn: Connection, service_id: UUID) -> None:
    await conn.execute(
        "UPDATE services SET purged = true, updated_at = now() WHERE id = $1", service_id
    )
