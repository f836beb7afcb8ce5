"""Health monitor settings (`TEMPS_MONITOR_*`, plus the shared `TEMPS_*`)."""

from __future__ import annotations

import os
import socket
import uuid

from pydantic import Field, model_validator
from temps_shared.settings import TempsSettings


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class MonitorSettings(TempsSettings):
    monitor_period_s: float = Field(
        30.0, gt=0, description="Every service that should run is probed once per period."
    )
    monitor_concurrency: int = Field(8, ge=1, description="Probes in flight in this replica.")
    monitor_probe_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Bound of one probe (liveness, then metrics); shorter than the period, so "
        "two probes of one service never overlap.",
    )
    monitor_slow_query_ms: float = Field(
        500.0, ge=0, description="PostgreSQL statements slower than this on average are listed."
    )
    monitor_slow_query_limit: int = Field(5, ge=0, description="Slow statements listed at most.")
    monitor_storage_unit_mb: int = Field(
        1024,
        ge=1,
        description="MB per unit of storage_gb / size_gb: 1024, except in tests (tiny sizes).",
    )
    monitor_instance_id: str = Field(
        default_factory=default_instance_id,
        description="Names this replica in claims and events (host, pid and a random suffix).",
    )

    @model_validator(mode="after")
    def _timeout_below_period(self) -> MonitorSettings:
        if self.monitor_probe_timeout_s >= self.monitor_period_s:
            raise ValueError("monitor_probe_timeout_s must be shorter than monitor_period_s")
        return self

    @property
    def storage_unit_bytes(self) -> int:
        return self.monitor_storage_unit_mb * 1024 * 1024
