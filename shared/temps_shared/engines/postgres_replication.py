"""Streaming replication on the primary: the replication role, one physical slot per replica,
and the replication figures the read model shows."""

from __future__ import annotations

from typing import Any

import asyncpg

from temps_shared.engines.scram import password_clause

REPLICATION_ROLE = "temps_replicator"
SLOT_PREFIX = "temps_replica_"


def slot_name(index: int) -> str:
    return f"{SLOT_PREFIX}{index}"


def primary_conninfo(host: str, password: str, *, application_name: str, ca_file: str) -> str:
    # The password is alphanumeric (generate_password), so no quoting is needed.
    assert password.isalnum()
    return (
        f"host={host} port=5432 user={REPLICATION_ROLE} password={password} "
        f"sslmode=verify-full sslrootcert={ca_file} application_name={application_name}"
    )


async def ensure_role(conn: asyncpg.Connection, password: str) -> None:
    """A login role with REPLICATION only (no superuser), its password kept current."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", REPLICATION_ROLE)
    verb = "ALTER" if exists else "CREATE"
    # Sent as a SCRAM verifier: no statistics view or log ever holds the password.
    await conn.execute(
        f"{verb} ROLE {REPLICATION_ROLE} WITH LOGIN REPLICATION {password_clause(password)}"
    )


async def ensure_slots(conn: asyncpg.Connection, replicas: int) -> None:
    """Exactly the slots of replicas 1..`replicas`: missing ones created (reserving WAL at once,
    so a clone started right after finds its WAL), extra ones dropped (no stale slot left)."""
    existing = {
        r["slot_name"]: r["active"]
        for r in await conn.fetch(
            "SELECT slot_name, active FROM pg_replication_slots WHERE slot_name LIKE $1",
            SLOT_PREFIX + "%",
        )
    }
    wanted = {slot_name(n) for n in range(1, replicas + 1)}
    for name in sorted(wanted - existing.keys()):
        await conn.execute("SELECT pg_create_physical_replication_slot($1, true)", name)
    for name, active in existing.items():
        if name not in wanted:
            if active:  # its replica is still attached: terminate its walsender first
                await conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                    " WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    name,
                )
            await conn.execute("SELECT pg_drop_replication_slot($1)", name)


async def status(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """One entry per replica slot: state, bytes and seconds behind the primary."""
    rows = await conn.fetch(
        "SELECT s.slot_name, r.state,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(r.replay_lsn, s.restart_lsn))::bigint"
        "   AS lag_bytes,"
        " extract(epoch FROM r.replay_lag)::float8 AS lag_seconds"
        " FROM pg_replication_slots s"
        " LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid"
        " WHERE s.slot_name LIKE $1 ORDER BY s.slot_name",
        SLOT_PREFIX + "%",
    )
    return [
        {
            "member": "replica-" + r["slot_name"].removeprefix(SLOT_PREFIX),
            "state": r["state"] or "disconnected",
            "lag_bytes": r["lag_bytes"],
            "lag_seconds": r["lag_seconds"] or 0.0,
        }
        for r in rows
    ]
