"""Link users on PostgreSQL: one database per project + environment, owned by a login role that
is neither superuser nor allowed to create roles or databases, and that no other link can reach.

Tenants share one server, so the defaults are closed (on every version, 13's included):
- CONNECT and TEMPORARY are revoked from PUBLIC on `template0`, `template1`, `postgres`, the admin
  database and every link's database (a link's role gets them back on its own database only);
- in every database PUBLIC may not CREATE in schema `public` (PostgreSQL 13 allows it by default:
  a trojan planted in `template1` would be copied into every database created afterwards), and
  `public` belongs to the database's owner (a link's role in its database).
Both are applied on every reconcile, so an existing service is repaired by the next one.
"""

from __future__ import annotations

import asyncpg

from temps_shared.engines.postgres_monitoring import MONITOR_ROLE
from temps_shared.engines.scram import password_clause, verifies
from temps_shared.links import LinkGrant


def _ident(name: str) -> str:
    # Link identifiers are [a-z0-9_] by construction (links.identifier_for); quote anyway.
    assert name.replace("_", "").isalnum(), name
    return f'"{name}"'


async def _role_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name))


async def _database_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))


SYSTEM_DATABASES = ("template0", "template1", "postgres")


async def close_public_doors(conn: asyncpg.Connection, admin_database: str) -> None:
    """Nobody but the admin (and the monitor, on the admin database) connects by default."""
    for database in (*SYSTEM_DATABASES, admin_database):
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
    exists = await _role_exists(conn, grant.username)
    verb = "ALTER" if exists else "CREATE"
    stored = (
        await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", grant.username)
        if exists
        else None
    )
    # Changing the password does not end open sessions: rotation keeps connections alive.
    # Sent as a SCRAM verifier: no statistics view or log ever holds the password. A verifier
    # that already matches is kept (a new salt would fail the pooler's next server login for
    # the clients it holds).
    password = "" if verifies(stored, grant.password) else f" {password_clause(grant.password)}"
    await conn.execute(
        f"{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION{password}"
    )
    if not await _database_exists(conn, grant.resource):
        await conn.execute(f"CREATE DATABASE {database} OWNER {role}")
    await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC")
    await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}")


async def connectable_databases(conn: asyncpg.Connection) -> list[str]:
    """Every database a session can be opened on (template0 cannot)."""
    rows = await conn.fetch("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
    return [r["datname"] for r in rows]


async def lock_public_schema(conn: asyncpg.Connection) -> None:
    """In the database `conn` is on: only the database's owner creates in schema `public`.

    13 grants CREATE on it to PUBLIC and gives it to the bootstrap superuser (so a link's role
    could not create in its own database once that is revoked): the schema goes to the
    database's owner. 15 and later already give it to `pg_database_owner`; left as it is.
    Idempotent; nothing when the schema was dropped."""
    row = await conn.fetchrow(
        "SELECT n.nspowner::regrole::text AS owner, d.datdba::regrole::text AS dba"
        " FROM pg_namespace n, pg_database d"
        " WHERE n.nspname = 'public' AND d.datname = current_database()"
    )
    if row is None:
        return
    await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    if row["owner"] not in (row["dba"], "pg_database_owner"):
        # regrole's text is already quoted where needed.
        await conn.execute(f"ALTER SCHEMA public OWNER TO {row['dba']}")
