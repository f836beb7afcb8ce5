"""Loopback ports a service keeps across restarts and recreates (one per member and port name)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from temps_shared.store.types import Executor


async def local_ports(conn: Executor, service_id: UUID) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT port_name, local_port FROM service_ports WHERE service_id = $1", service_id
    )
    return {r["port_name"]: r["local_port"] for r in rows}


async def reserve_local_ports(
    conn: Executor,
    service_id: UUID,
    node_id: str,
    names: list[str],
    port_range: tuple[int, int],
    *,
    exclude: frozenset[int] = frozenset(),
) -> dict[str, int]:
    """The service's port for each name, reserving a free one of the range on first use.

    Picked at random among the free ones: something outside the platform (another
    installation, a developer's server) that holds a port is then unlikely to be hit again on
    the retry, where the lowest free port would be the same one each time.

    The unique (node, port) constraint makes concurrent reservations safe; `exclude` names ports
    Docker reported as taken by something outside the platform (they are given up and replaced).
    """
    existing = await local_ports(conn, service_id)
    result: dict[str, int] = {}
    for name in names:
        port = existing.get(name)
        result[name] = (
            port
            if port is not None and port not in exclude
            else await _reserve(conn, service_id, node_id, name, port_range, exclude)
        )
    return result


async def _reserve(
    conn: Executor,
    service_id: UUID,
    node_id: str,
    name: str,
    port_range: tuple[int, int],
    exclude: frozenset[int],
) -> int:
    low, high = port_range
    for _ in range(5):  # bounded: only a concurrent reservation can make an attempt lose
        port: int | None = await conn.fetchval(
            "SELECT p FROM generate_series($1::int, $2::int) AS p"
            " WHERE p <> ALL($4::int[]) AND NOT EXISTS ("
            "   SELECT 1 FROM service_ports WHERE node_id = $3 AND local_port = p)"
            " ORDER BY random() LIMIT 1",
            low,
            high,
            node_id,
            sorted(exclude),
        )
        if port is None:
            raise RuntimeError(f"no free loopback port left in {low}-{high}")
        try:
            await conn.execute(
                "INSERT INTO service_ports (service_id, port_name, node_id, local_port)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (service_id, port_name) DO UPDATE"
                " SET local_port = EXCLUDED.local_port, node_id = EXCLUDED.node_id,"
                " updated_at = now()",
                service_id,
                name,
                node_id,
                port,
            )
        except asyncpg.UniqueViolationError:
            continue
        return port
    raise RuntimeError("could not reserve a loopback port")


async def release_ports(conn: Executor, service_id: UUID, names: list[str] | None = None) -> None:
    """Give up the named ports (all of the service's when `names` is None)."""
    if names is None:
        await conn.execute("DELETE FROM service_ports WHERE service_id = $1", service_id)
    else:
        await conn.execute(
            "DELETE FROM service_ports WHERE service_id = $1 AND port_name = ANY($2::text[])",
            service_id,
            names,
        )
