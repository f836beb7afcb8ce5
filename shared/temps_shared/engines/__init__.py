"""Engines: how each service type runs, is probed, connected to and backed up."""

from __future__ import annotations

from temps_shared.engines.base import Engine, ServiceNotReadyError
from temps_shared.engines.postgres import PostgresEngine
from temps_shared.engines.redis import RedisEngine
from temps_shared.engines.s3 import S3Engine
from temps_shared.settings import TempsSettings

ENGINES: dict[str, Engine] = {
    "postgres": PostgresEngine(),
    "redis": RedisEngine(),
    "s3": S3Engine(),
}


def offered_versions(settings: TempsSettings, service_type: str) -> dict[str, str]:
    """Version → image this installation can run for `service_type`."""
    return dict(settings.images.get(service_type, {}))


def default_version(versions: dict[str, str], engine: Engine | None = None) -> str:
    """The engine's own default (the spec's, an optional `default_version` attribute) when it is
    on offer, else the newest major on offer."""
    preferred = getattr(engine, "default_version", None)
    if preferred in versions:
        return str(preferred)
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))


__all__ = ["ENGINES", "Engine", "ServiceNotReadyError", "default_version", "offered_versions"]
