"""Services as the API shows them: desired state joined with the status read model."""

from __future__ import annotations

from uuid import UUID

import asyncpg
from temps_shared.messages import ServiceStatus
from temps_shared.store.types import Executor

from temps_api.schemas import ServicePublic

_SELECT = (
    "SELECT s.*, st.status, st.status_reason, st.connection_info, st.replication,"
    " coalesce(st.observed_generation, 0) AS observed_generation"
    " FROM services s LEFT JOIN service_status st ON st.service_id = s.id"
    " WHERE NOT s.purged"
)


def _status(row: asyncpg.Record) -> str:
    # A delete the user asked for shows at once, before the projector hears of it; a delete
    # that failed shows as failed, with its reason.
    if row["desired_state"] == "deleted" and row["status"] != ServiceStatus.FAILED:
        return ServiceStatus.DELETING
    return str(row["status"] or ServiceStatus.PROVISIONING)


def _public(row: asyncpg.Record) -> ServicePublic:
    return ServicePublic(
        id=row["id"],
        name=row["name"],
        service_type=row["service_type"],
        version=row["version"],
        status=_status(row),
        status_reason=row["status_reason"],
        parameters=row["parameters"],
        resources=row["resources"],
        connection_info=row["connection_info"],
        replication=row["replication"],
        generation=row["generation"],
        observed_generation=row["observed_generation"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def get_public(conn: Executor, service_id: UUID) -> ServicePublic | None:
    row = await conn.fetchrow(_SELECT + " AND s.id = $1", service_id)
    return _public(row) if row else None


async def list_public(conn: Executor) -> list[ServicePublic]:
    return [_public(r) for r in await conn.fetch(_SELECT + " ORDER BY s.created_at")]
