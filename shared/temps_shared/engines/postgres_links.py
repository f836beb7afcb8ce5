"""Link users on PostgreSQL: one database per project + environment, owned by a login role that
is neither superuser nor allowed to create roles or databases, and that no other link can reach
(CONNECT revoked from PUBLIC on every database a link should not see)."""

from __future__ import annotations

import asyncpg

from temps_shared.engines.postgres_monitoring import MONITOR_ROLE
from temps_shared.links import LinkGrant


def _ident(name: str) -> str:
    # Link identifiers are [a-z0-9_] by construction (links.identifier_for); quote anyway.
    assert name.replace("_", "").isalnum(), name
    return f'"{name}"'


async def _role_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name))


async def _database_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))


async def close_public_doors(conn: asyncpg.Connection, admin_database: str) -> None:
    """Nobody but the admin (and the monitor, on the admin database) connects by default."""
    for database in ("postgres", admin_database):
        await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {_ident(database)} FROM PUBLIC")
    if await _role_exists(conn, MONITOR_ROLE):
        await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(admin_database)} TO {MONITOR_ROLE}")


async def apply_grant(conn: asyncpg.Connection, grant: LinkGrant) -> None:
    role, database = _ident(grant.username), _ident(grant.resource)
    if not grant.active:
        if await _role_exists(conn, grant.username):
            # Revoked: it can no longer log in; its sessions end; its database (data) stays.
            await conn.execute(f"ALTER ROLE {role} NOLOGIN")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                grant.username,
            )
        return
    assert grant.password.isalnum()  # role DDL takes no bind parameters
    verb = "ALTER" if await _role_exists(conn, grant.username) else "CREATE"
    # Changing the password does not end open sessions: rotation keeps connections alive.
    await conn.execute(
        f"{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
        f" PASSWORD '{grant.password}'"
    )
    if not await _database_exists(conn, grant.resource):
        await conn.execute(f"CREATE DATABASE {database} OWNER {role}")
    await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC")
    await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}")
