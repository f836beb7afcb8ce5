"""Reading the WAL facts from a PostgreSQL primary, as the monitor role (`pg_monitor`).

Read-only: system views and the `pg_ls_waldir()` / `pg_ls_archive_statusdir()` functions
`pg_monitor` may call (`pg_ls_dir` would need a superuser). Every statement runs inside one
READ ONLY transaction.
"""

from __future__ import annotations

import asyncpg

from temps_monitor.wal_health import SlotFacts, WalFacts

# Segment files only: 24 hex digits (not .history / .backup / .partial files, not directories).
SEGMENT_NAME = "^[0-9A-F]{24}$"

_SETTINGS = """
SELECT name, setting, source FROM pg_settings
WHERE name IN ('archive_mode', 'archive_command', 'archive_library')
"""
_WAL_DIR = f"""
SELECT coalesce(sum(size), 0)::bigint AS bytes,
       extract(epoch FROM now() - min(modification) FILTER (WHERE name ~ '{SEGMENT_NAME}'))::bigint
         AS oldest_age
FROM pg_ls_waldir()
"""
_READY = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
_SLOTS = """
SELECT slot_name, active,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint AS retained
FROM pg_replication_slots WHERE restart_lsn IS NOT NULL ORDER BY slot_name
"""
_ARCHIVER = "SELECT failed_count, last_failed_time, last_archived_time FROM pg_stat_archiver"


async def collect_wal_facts(conn: asyncpg.Connection) -> WalFacts:
    """The WAL facts of the server `conn` is connected to (a primary: pg_current_wal_lsn()
    fails on a standby)."""
    async with conn.transaction(readonly=True):
        settings = {r["name"]: r for r in await conn.fetch(_SETTINGS)}
        max_wal: int = await conn.fetchval("SELECT pg_size_bytes(current_setting('max_wal_size'))")
        wal_dir = await conn.fetchrow(_WAL_DIR)
        ready: int = await conn.fetchval(_READY)
        slots = await conn.fetch(_SLOTS)
        archiver = await conn.fetchrow(_ARCHIVER)
    assert wal_dir is not None
    assert archiver is not None

    def setting(name: str) -> str | None:
        row = settings.get(name)
        return None if row is None else str(row["setting"])

    command = setting("archive_command")
    return WalFacts(
        pg_wal_bytes=wal_dir["bytes"],
        max_wal_size_bytes=max_wal,
        archive_mode=setting("archive_mode") or "unknown",
        # Older servers show "(disabled)" while archive_mode is off.
        archive_command=None if command == "(disabled)" else command,
        archive_command_source=(
            settings["archive_command"]["source"] if "archive_command" in settings else None
        ),
        archive_library=setting("archive_library"),
        ready_count=ready,
        archiver_failed_count=archiver["failed_count"],
        archiver_last_failed_at=archiver["last_failed_time"],
        archiver_last_archived_at=archiver["last_archived_time"],
        slots=[SlotFacts(r["slot_name"], r["active"], r["retained"]) for r in slots],
        oldest_wal_age_secs=wal_dir["oldest_age"],
    )
