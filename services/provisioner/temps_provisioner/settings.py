"""Provisioner settings (`TEMPS_*`)."""

from __future__ import annotations

from pydantic import Field
from temps_shared.engines import pgbouncer
from temps_shared.settings import TempsSettings


class ProvisionerSettings(TempsSettings):
    concurrency: int = Field(4, ge=1, description="Commands handled at once by this replica.")
    readiness_timeout_s: float = Field(
        90.0, description="How long a started service may take to accept connections."
    )
    stop_timeout_s: int = Field(30, description="Grace period of a container stop.")
    resync_period_s: float = Field(
        60.0, gt=0, description="How often each running service is checked against Docker."
    )
    resync_poll_s: float = Field(
        2.0, gt=0, description="How often due checks (and the monitor's `down`) are looked for."
    )
    resync_batch: int = Field(20, ge=1, description="Services checked per pass by a replica.")
    resync_on_down: bool = Field(
        True,
        description="Check a service at once when the monitor reports a container missing or "
        "exited (tests that break containers on purpose turn it off).",
    )
    resync_max_backoff_s: float = Field(
        300.0, gt=0, description="Longest wait between failed repairs of one service."
    )
    s3_quota_period_s: float = Field(
        30.0, gt=0, description="How often S3 quotas are enforced (and `degraded` set or lifted)."
    )
    s3_lifecycle_period_s: float = Field(
        3600.0, gt=0, description="How often S3 lifecycle rules expire objects."
    )
    s3_quota_unit_mb: int = Field(
        1024,
        ge=1,
        description="MB per unit of an S3 service's size_gb: 1024, except in tests (a tiny quota).",
    )
    pooler_image: str = Field(
        pgbouncer.IMAGE, description="Image of the PgBouncer pooler of every PostgreSQL service."
    )
    pooler_pause_timeout_s: float = Field(
        pgbouncer.PAUSE_TIMEOUT_S,
        gt=0,
        description="How long the pooler may hold clients (PAUSE) around a planned restart of "
        "the primary before it lets them through anyway.",
    )
