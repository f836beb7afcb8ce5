"""Sharing the probes among monitor replicas: per-service claim rows in PostgreSQL.

Every service has a `monitor_schedule` row. A replica claims the rows that are due and moves
their `next_probe_at` one period ahead in the same statement; `FOR UPDATE SKIP LOCKED` lets
concurrent replicas take disjoint rows, and a row updated by another replica meanwhile no longer
qualifies (PostgreSQL re-checks the condition on the newest row version). So each service is
probed once per period whichever replica does it, and a replica that dies simply stops
claiming: its services are due again one period later and another replica takes them.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg
from temps_shared.messages import MONITOR_OWNED

# New services start at a random point of the period, so probes spread over it.
_ENROL = """
INSERT INTO monitor_schedule (service_id, next_probe_at)
SELECT s.id, now() + random() * make_interval(secs => $1)
FROM services s
WHERE NOT s.purged AND NOT EXISTS (SELECT 1 FROM monitor_schedule m WHERE m.service_id = s.id)
ON CONFLICT (service_id) DO NOTHING
"""
_FORGET_PURGED = """
DELETE FROM monitor_schedule m USING services s WHERE s.id = m.service_id AND s.purged
"""
# Only services that should run and whose status the monitor may judge: provisioning, stopped,
# deleting and failed services are the provisioner's (their rows stay due, and are taken as
# soon as that changes).
_JUDGED = """
FROM monitor_schedule d
JOIN services s ON s.id = d.service_id
JOIN service_status st ON st.service_id = d.service_id
WHERE s.desired_state = 'running' AND NOT s.purged AND st.status = ANY($1::text[])
"""
_CLAIM = f"""
UPDATE monitor_schedule m
SET next_probe_at = now() + make_interval(secs => $3), claimed_by = $4, claimed_at = now()
WHERE m.service_id IN (
    SELECT d.service_id {_JUDGED} AND d.next_probe_at <= now()
    ORDER BY d.next_probe_at
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
)
RETURNING m.service_id
"""
_CLAIM_ONE = """
UPDATE monitor_schedule
SET next_probe_at = now() + make_interval(secs => $2), claimed_by = $3, claimed_at = now()
WHERE service_id = $1
"""
_NEXT_DUE = f"SELECT extract(epoch FROM min(d.next_probe_at) - now()) {_JUDGED}"


async def enrol(pool: asyncpg.Pool, period_s: float) -> None:
    """Rows for services created since, none for services purged since."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_ENROL, period_s)
        await conn.execute(_FORGET_PURGED)


async def claim_due(pool: asyncpg.Pool, limit: int, period_s: float, replica: str) -> list[UUID]:
    """Up to `limit` services due for a probe, now this replica's for one period."""
    rows = await pool.fetch(_CLAIM, sorted(MONITOR_OWNED), limit, period_s, replica)
    return [r["service_id"] for r in rows]


async def claim_now(pool: asyncpg.Pool, service_id: UUID, period_s: float, replica: str) -> None:
    """An out-of-cycle probe (ProbeNow) counts as this period's."""
    await pool.execute(_CLAIM_ONE, service_id, period_s, replica)


async def seconds_to_next_due(pool: asyncpg.Pool) -> float | None:
    """Until the earliest probe is due (≤ 0: one is due now); None when nothing is to probe."""
    value = await pool.fetchval(_NEXT_DUE, sorted(MONITOR_OWNED))
    return None if value is None else float(value)
