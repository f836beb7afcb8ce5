"""What the health monitor observes, as it travels in events and is shown by the API:
service metrics and the PostgreSQL WAL health snapshot (API.md's `PostgresWalHealth`).

No field ever holds a secret: query texts are pg_stat_statements' normalised statements
(constants replaced by `$n`), and utility statements (which may carry passwords) are left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WalWarningKind = Literal[
    "wal_bloat",
    "stale_slot",
    "archive_backlog",
    "archive_mode_without_command",
    "wal_not_recycled",
    "archiver_failing",
]
Severity = Literal["warning", "critical"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SlowQuery(_Frozen):
    query: str = Field(description="Normalised statement text (constants shown as $n).")
    calls: int
    mean_ms: float


class ReplicaState(_Frozen):
    """One read replica as the primary's pg_stat_replication shows it."""

    member: str = Field(description="replica-<n>")
    state: str = Field(description="streaming, catchup, startup… or disconnected (no sender)")
    lag_bytes: int | None
    lag_seconds: float


class PoolerFigures(_Frozen):
    """PostgreSQL's pooler (PgBouncer), from `SHOW POOLS` summed over its pools."""

    clients_active: int = Field(description="Client connections linked to a server connection.")
    clients_waiting: int = Field(
        description="Clients waiting for a server connection (a full pool, or a PAUSE)."
    )
    servers_active: int = Field(description="Server connections serving a client.")
    servers_idle: int = Field(description="Server connections open and free for a client.")
    max_wait_ms: float = Field(description="How long the oldest waiting client has waited.")


class HealthMetrics(_Frozen):
    """`null` where the engine has no such figure (S3 connections, Redis storage allocation)
    or where the last check could not read it."""

    connections: int | None = None
    storage_used_bytes: int | None = None
    storage_allocated_bytes: int | None = None
    slow_queries: list[SlowQuery] | None = Field(
        None, description="PostgreSQL: top statements by mean time over the threshold."
    )
    replication: list[ReplicaState] | None = Field(
        None, description="PostgreSQL: the read replicas, read from the primary at each check."
    )
    pooler: PoolerFigures | None = Field(
        None,
        description="PostgreSQL: the pooler's figures (null: no pooler, or it did not answer).",
    )


class StaleSlot(_Frozen):
    slot_name: str
    active: bool
    retained_bytes: int


class WalWarning(_Frozen):
    kind: WalWarningKind
    severity: Severity
    message: str
    guidance: str = Field(description="What to do about it, in plain language.")
    remediation_sql: str | None = Field(
        None, description="SQL to run as the administrator (stale slot, WAL not recycled)."
    )
    # Kind-specific figures.
    slot_name: str | None = None
    retained_bytes: int | None = None
    ratio: float | None = None
    ready_count: int | None = None
    oldest_age_secs: int | None = None
    failed_since_last_probe: int | None = None


class PostgresWalHealth(_Frozen):
    probed_at: datetime
    pg_wal_bytes: int
    max_wal_size_bytes: int
    archive_mode: str = Field(description="off | on | always")
    archive_command: str | None
    archive_command_source: str | None = Field(
        None, description="Where archive_command is set (pg_settings.source)."
    )
    archive_library: str | None = None
    archive_backlog: int = Field(description=".ready segments in pg_wal/archive_status")
    archiver_failed_count: int | None
    archiver_last_failed_at: datetime | None = None
    archiver_last_archived_at: datetime | None = None
    stale_slots: list[StaleSlot]
    oldest_wal_age_secs: int | None
    warnings: list[WalWarning]
