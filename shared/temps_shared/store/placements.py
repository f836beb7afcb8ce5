"""Where a service runs and which loopback port it keeps across restarts and recreates."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from temps_shared.store.types import Executor


async def get_local_port(conn: Executor, service_id: UUID) -> int | None:
    port: int | None = await conn.fetchval(
        "SELECT local_port FROM service_placements WHERE service_id = $1", service_id
    )
    return port


async def reserve_local_port(
    conn: Executor,
    service_id: UUID,
    node_id: str,
    port_range: tuple[int, int],
    *,
    exclude: frozenset[int] = frozenset(),
) -> int:
    """The service's port, reserving the lowest free one of the range on first use.

    The unique (node, port) constraint makes concurrent reservations safe; `exclude` skips ports
    Docker reported as taken by something outside the platform.
    """
    existing = await get_local_port(conn, service_id)
    if existing is not None and existing not in exclude:
        return existing
    low, high = port_range
    for _ in range(5):  # bounded: only concurrent reservations can make an attempt lose
        port: int | None = await conn.fetchval(
            "SELECT p FROM generate_series($1::int, $2::int) AS p"
            " WHERE p <> ALL($4::int[]) AND NOT EXISTS ("
            "   SELECT 1 FROM service_placements WHERE node_id = $3 AND local_port = p)"
            " ORDER BY p LIMIT 1",
            low,
            high,
            node_id,
            sorted(exclude),
        )
        if port is None:
            raise RuntimeError(f"no free loopback port left in {low}-{high}")
        try:
            await conn.execute(
                "INSERT INTO service_placements (service_id, node_id, local_port)"
                " VALUES ($1, $2, $3) ON CONFLICT (service_id) DO UPDATE"
                " SET local_port = EXCLUDED.local_port, node_id = EXCLUDED.node_id,"
                " updated_at = now()",
                service_id,
                node_id,
                port,
            )
        except asyncpg.UniqueViolationError:
            continue
        return port
    raise RuntimeError("could not reserve a loopback port")


async def delete_placement(conn: Executor, service_id: UUID) -> None:
    await conn.execute("DELETE FROM service_placements WHERE service_id = $1", service_id)
