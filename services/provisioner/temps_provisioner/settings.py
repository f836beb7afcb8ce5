"""Provisioner settings (`TEMPS_*`)."""

from __future__ import annotations

from pydantic import Field
from temps_shared.settings import TempsSettings


class ProvisionerSettings(TempsSettings):
    concurrency: int = Field(4, ge=1, description="Commands handled at once by this replica.")
    readiness_timeout_s: float = Field(
        90.0, description="How long a started service may take to accept connections."
    )
    stop_timeout_s: int = Field(30, description="Grace period of a container stop.")
