"""One probe per engine: liveness as the service's least-privilege identity, then its figures.

- PostgreSQL: `SELECT 1` as the monitor role (`pg_monitor`, read-only by default), then
  connections, storage (databases + pg_wal), slow statements, the WAL facts and the replicas'
  state and lag (pg_stat_replication: fresher than the reconcile's figure).
- Redis: `PING` and `INFO clients` as the monitor ACL user; storage = the volume's usage.
- S3: `ListBuckets` with the admin key; storage = the volume's usage.

Liveness is bounded by `deadline`'s first part; a failure there is the probe's `error` (the
service is down). Figures get what is left of the budget: one that cannot be read stays None
and is noted, without making the service down.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import botocore.exceptions
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from temps_shared.engines import ServiceNotReadyError, pgbouncer_stats, postgres_replication
from temps_shared.engines.base import Endpoints
from temps_shared.engines.postgres import connect as postgres_connect
from temps_shared.engines.postgres_monitoring import MONITOR_ROLE
from temps_shared.engines.redis_acl import MONITOR_USER
from temps_shared.engines.s3_buckets import endpoint_url, s3_client
from temps_shared.health import PoolerFigures, ReplicaState, SlowQuery

from temps_monitor.context import Monitor
from temps_monitor.wal_collection import collect_wal_facts
from temps_monitor.wal_health import WalFacts

T = TypeVar("T")
MAX_QUERY_CHARS = 1000
# Statements whose normalised text can be shown: utility statements (ALTER ROLE … PASSWORD)
# keep their literals in pg_stat_statements, so they are never listed.
_LISTED_STATEMENT = re.compile(r"^\s*(select|insert|update|delete|with|merge|values|table)\b", re.I)
_SLOW_QUERIES = """
SELECT query, calls, mean_exec_time FROM pg_stat_statements
WHERE mean_exec_time >= $1 AND userid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
ORDER BY mean_exec_time DESC LIMIT $2
"""


# What a service that does not answer (or answers with an error) raises.
_UNANSWERED = (
    OSError,
    TimeoutError,
    ServiceNotReadyError,
    RedisError,
    asyncpg.PostgresError,
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
)


class ProbeFailedError(Exception):
    """The service did not answer its liveness probe."""


@dataclass
class ProbeOutcome:
    response_time_ms: float | None = None
    connections: int | None = None
    storage_used_bytes: int | None = None
    slow_queries: list[SlowQuery] | None = None
    wal: WalFacts | None = None
    replication: list[ReplicaState] | None = None
    pooler: PoolerFigures | None = None
    pooler_error: str | None = None  # the pooler did not answer (the service is degraded)
    notes: list[str] = field(default_factory=list)  # figures that could not be read


class Budget:
    """What is left of one probe's time bound."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.05, self._deadline - time.monotonic())

    async def run(self, work: Awaitable[T]) -> T:
        return await asyncio.wait_for(work, self.left())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return (str(exc) or type(exc).__name__)[:500]


async def _timed(budget: Budget, work: Awaitable[T]) -> tuple[T, float]:
    """`work`'s result and its duration in ms; ProbeFailedError if it fails or times out."""
    started = time.perf_counter()
    try:
        result = await budget.run(work)
    except _UNANSWERED as exc:
        raise ProbeFailedError(_describe(exc)) from exc
    return result, round((time.perf_counter() - started) * 1000, 2)


async def _figure(outcome: ProbeOutcome, what: str, budget: Budget, work: Awaitable[T]) -> T | None:
    """A figure, or None with a note when it cannot be read in time."""
    try:
        return await budget.run(work)
    except (*_UNANSWERED, asyncpg.InterfaceError, ValueError) as exc:
        # InterfaceError: the connection is unusable after an earlier figure timed out.
        outcome.notes.append(f"{what} not read: {_describe(exc)}")
        return None


async def volume_usage(m: Monitor, container: str, path: str, budget: Budget) -> int:
    """Bytes used under `path` in the container (`du`, run by Docker inside it)."""
    result = await m.runtime.exec_run(container, ["du", "-sb", path], timeout_s=budget.left())
    words = result.output.split()
    if result.exit_code != 0 or not words or not words[0].isdigit():
        raise ValueError(f"du exited with {result.exit_code}: {result.output.strip()[-200:]!r}")
    return int(words[0])


# --- PostgreSQL -------------------------------------------------------------------------------


async def _slow_queries(
    conn: asyncpg.Connection, threshold_ms: float, limit: int
) -> list[SlowQuery]:
    try:
        rows = await conn.fetch(_SLOW_QUERIES, threshold_ms, limit * 4)
    except asyncpg.UndefinedTableError:
        return []  # pg_stat_statements not created in this database (yet)
    listed = [
        SlowQuery(query=r["query"][:MAX_QUERY_CHARS], calls=r["calls"], mean_ms=r["mean_exec_time"])
        for r in rows
        if _LISTED_STATEMENT.match(r["query"]) and "password" not in r["query"].lower()
    ]
    return listed[:limit]


async def _replication(conn: asyncpg.Connection) -> list[ReplicaState]:
    # The reconcile's own query: pg_monitor may read pg_stat_replication's state and LSNs.
    return [ReplicaState.model_validate(r) for r in await postgres_replication.status(conn)]


async def _postgres_figures(
    m: Monitor, conn: asyncpg.Connection, outcome: ProbeOutcome, budget: Budget
) -> None:
    outcome.connections = await _figure(
        outcome,
        "connections",
        budget,
        conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ),
    )
    outcome.wal = await _figure(outcome, "WAL health", budget, collect_wal_facts(conn))
    databases = await _figure(
        outcome,
        "storage",
        budget,
        conn.fetchval("SELECT sum(pg_database_size(oid))::bigint FROM pg_database"),
    )
    if databases is not None:
        outcome.storage_used_bytes = databases + (outcome.wal.pg_wal_bytes if outcome.wal else 0)
    settings = m.settings
    outcome.slow_queries = await _figure(
        outcome,
        "slow queries",
        budget,
        _slow_queries(conn, settings.monitor_slow_query_ms, settings.monitor_slow_query_limit),
    )
    # Last: the figures above keep the share of the budget they had before it was added.
    outcome.replication = await _figure(outcome, "replication", budget, _replication(conn))


async def probe_postgres(
    m: Monitor, endpoints: Endpoints, credentials: dict[str, str], budget: Budget
) -> ProbeOutcome:
    """Raises ProbeFailedError when the primary does not answer."""
    outcome = ProbeOutcome()
    host, port = endpoints["postgres"]
    if "monitor_password" not in credentials:
        # Created before the monitor role existed: only the port can be checked.
        _, outcome.response_time_ms = await _timed(budget, _tcp_connect(host, port))
        outcome.notes.append(
            "no monitor role for this service (created before monitoring): WAL health and "
            "metrics are not probed, only that the port accepts connections"
        )
        return outcome
    role = {
        "username": MONITOR_ROLE,
        "password": credentials["monitor_password"],
        "database": credentials["database"],
    }

    async def select_one() -> asyncpg.Connection:
        conn = await postgres_connect((host, port), role, m.ca_pem)
        try:
            await conn.fetchval("SELECT 1")
        except BaseException:
            await conn.close(timeout=1)
            raise
        return conn

    conn, outcome.response_time_ms = await _timed(budget, select_one())
    try:
        await _postgres_figures(m, conn, outcome, budget)
    finally:
        await conn.close(timeout=1)
    return outcome


async def probe_pooler(
    m: Monitor, endpoint: tuple[str, int], credentials: dict[str, str], budget: Budget
) -> tuple[PoolerFigures | None, str | None]:
    """The pooler's `SHOW POOLS` figures, or None and why it did not answer."""
    try:
        figures = await budget.run(pgbouncer_stats.pool_figures(endpoint, credentials, m.ca_pem))
    except (
        OSError,
        TimeoutError,
        EOFError,  # asyncio.IncompleteReadError: the pooler closed the connection
        pgbouncer_stats.ConsoleQueryError,
        ValueError,
    ) as exc:
        return None, _describe(exc)
    return PoolerFigures(**vars(figures)), None


async def _tcp_connect(host: str, port: int) -> None:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()


# --- Redis --------------------------------------------------------------------------------------


async def probe_redis(
    m: Monitor,
    endpoints: Endpoints,
    credentials: dict[str, str],
    container: str,
    mount: str,
    budget: Budget,
) -> ProbeOutcome:
    outcome = ProbeOutcome()
    host, port = endpoints["redis"]
    client = aioredis.Redis(
        host=host,
        port=port,
        username=MONITOR_USER,
        password=credentials["monitor_password"],
        socket_timeout=m.settings.monitor_probe_timeout_s,
        socket_connect_timeout=m.settings.monitor_probe_timeout_s,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
        decode_responses=True,
    )
    try:
        _, outcome.response_time_ms = await _timed(budget, client.ping())
        info: dict[str, Any] | None = await _figure(
            outcome, "connections", budget, client.info("clients")
        )
        if info is not None:
            outcome.connections = max(0, int(info.get("connected_clients", 1)) - 1)  # not ours
    finally:
        await client.aclose()
    outcome.storage_used_bytes = await _figure(
        outcome, "storage", budget, volume_usage(m, container, mount, budget)
    )
    return outcome


# --- S3 -----------------------------------------------------------------------------------------


async def probe_s3(
    m: Monitor,
    endpoints: Endpoints,
    credentials: dict[str, str],
    container: str,
    mount: str,
    budget: Budget,
) -> ProbeOutcome:
    outcome = ProbeOutcome()
    client = s3_client(endpoint_url(*endpoints["s3"]), credentials, m.ca_pem)
    loop = asyncio.get_running_loop()
    _, outcome.response_time_ms = await _timed(
        budget, loop.run_in_executor(m.s3_executor, client.list_buckets)
    )
    outcome.storage_used_bytes = await _figure(
        outcome, "storage", budget, volume_usage(m, container, mount, budget)
    )
    return outcome
