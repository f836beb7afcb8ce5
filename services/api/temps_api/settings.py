"""Gateway settings (`TEMPS_*`)."""

from __future__ import annotations

from pydantic import Field
from temps_shared.settings import TempsSettings


class ApiSettings(TempsSettings):
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    api_port: int = Field(8080, description="Port the HTTP API binds.")
    api_trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or CIDRs of reverse proxies whose"
        " X-Forwarded-For is believed (for the audit log's client address). Empty: none; the"
        " peer address is recorded and forwarded headers are ignored.",
    )
    outbox_relay_enabled: bool = Field(
        True, description="Relay the outbox to JetStream from this replica (off only in tests)."
    )
    outbox_poll_s: float = Field(1.0, description="Outbox poll period when no NOTIFY arrives.")
    projector_enabled: bool = Field(True, description="Run the status projector in this replica.")
    health_history_retention_days: int = Field(
        30, ge=1, description="Days of health checks kept (history and uptime)."
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body accepted (bytes); a larger one answers 413 unread.",
    )
