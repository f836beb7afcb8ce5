"""Counts kernel OOM kills per member container from Docker's event stream. A killed backend
leaves its container running and `OOMKilled` false: only Docker's `oom` event tells."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from temps_provisioner.context import Provisioner

log = logging.getLogger(__name__)
WINDOW_S = 3


async def oom_kill_counts(pool: asyncpg.Pool, names: list[str]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT container_name, kills FROM member_oom_kills WHERE container_name = ANY($1::text[])",
        names,
    )
    return {r["container_name"]: r["kills"] for r in rows}


async def watch_oom_kills(p: Provisioner, stop: asyncio.Event) -> None:
    """Read the event stream in short windows (so `stop` is seen between them), resuming where
    this node's agent left off after a restart."""
    node = p.settings.node_id
    since: int = await p.pool.fetchval(
        "SELECT oom_until FROM agent_event_marks WHERE node_id = $1", node
    ) or int(time.time())
    while not stop.is_set():
        until = int(time.time()) + WINDOW_S
        try:
            names = await p.runtime.oom_kills_between(since, until)
        except Exception:
            log.exception("reading Docker's OOM events failed; retrying")
            await asyncio.sleep(1.0)
            continue
        async with p.pool.acquire() as conn, conn.transaction():
            for name in names:
                await conn.execute(
                    "INSERT INTO member_oom_kills (container_name, kills, last_kill_at)"
                    " VALUES ($1, 1, now()) ON CONFLICT (container_name) DO UPDATE"
                    " SET kills = member_oom_kills.kills + 1, last_kill_at = now()",
                    name,
                )
            await conn.execute(
                "INSERT INTO agent_event_marks (node_id, oom_until) VALUES ($1, $2)"
                " ON CONFLICT (node_id) DO UPDATE SET oom_until = EXCLUDED.oom_until",
                node,
                until,
            )
        if names:
            log.warning("kernel OOM kills in %s", ", ".join(names))
        since = until
