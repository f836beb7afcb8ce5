"""Engines: how each service type runs, is probed, connected to and backed up."""

from __future__ import annotations

from temps_shared.engines.base import Engine, ServiceNotReadyError
from temps_shared.engines.postgres import PostgresEngine
from temps_shared.settings import TempsSettings

ENGINES: dict[str, Engine] = {"postgres": PostgresEngine()}


def offered_versions(settings: TempsSettings, service_type: str) -> dict[str, str]:
    """Version → image this installation can run for `service_type`."""
    return dict(settings.images.get(service_type, {}))


def default_version(versions: dict[str, str]) -> str:
    """The newest major on offer."""
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))


__all__ = ["ENGINES", "Engine", "ServiceNotReadyError", "default_version", "offered_versions"]
