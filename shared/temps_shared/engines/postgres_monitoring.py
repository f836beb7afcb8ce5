"""The health monitor's role on a PostgreSQL service: least privilege, read-only by default.

`pg_monitor` is what the WAL probe needs (`pg_ls_waldir()`, `pg_ls_archive_statusdir()`, every
session's statistics and statement texts) and nothing that writes; the role owns nothing and is
granted nothing else, so even a session that turns `default_transaction_read_only` off cannot
touch the service's tables. Created by the engine's `after_ready` on every reconcile.
"""

from __future__ import annotations

import asyncpg

from temps_shared.engines.scram import password_clause

MONITOR_ROLE = "temps_monitor"
CONNECTION_LIMIT = 3  # a stuck monitor never takes the service's connections
STATEMENT_TIMEOUT = "5s"


async def ensure_monitor_role(conn: asyncpg.Connection, password: str) -> None:
    """The monitor role with its password kept current, and pg_stat_statements (the source of
    slow queries; preloaded by the server command, its view exists once created)."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", MONITOR_ROLE)
    verb = "ALTER" if exists else "CREATE"
    # Sent as a SCRAM verifier: no statistics view or log ever holds the password.
    await conn.execute(
        f"{verb} ROLE {MONITOR_ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        f" NOREPLICATION CONNECTION LIMIT {CONNECTION_LIMIT} {password_clause(password)}"
    )
    await conn.execute(f"GRANT pg_monitor TO {MONITOR_ROLE}")
    await conn.execute(f"ALTER ROLE {MONITOR_ROLE} SET default_transaction_read_only = on")
    await conn.execute(f"ALTER ROLE {MONITOR_ROLE} SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


# A role password given as plaintext (not a SCRAM verifier) in a statement's text.
_PLAINTEXT_PASSWORD = r"PASSWORD\s+'(?!SCRAM-SHA-256\$)"


async def forget_plaintext_passwords(conn: asyncpg.Connection) -> None:
    """Reset pg_stat_statements when it holds a role statement with a plaintext password (kept
    by services created before passwords were sent as verifiers, or typed by a user): only a
    full reset also empties `pgss_query_texts.stat` on the volume. Nothing otherwise."""
    if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"):
        return
    if await conn.fetchval(
        "SELECT count(*) FROM pg_stat_statements WHERE query ~* $1", _PLAINTEXT_PASSWORD
    ):
        await conn.execute("SELECT pg_stat_statements_reset()")
