"""Deterministic names of the Docker objects a service owns (labels are public API too)."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[a-z][a-z0-9-]{1,37}$"
_NAME_RE = re.compile(NAME_PATTERN)

LABEL_MANAGED = "io.temps.managed"
LABEL_SERVICE_ID = "io.temps.service-id"
LABEL_ROLE = "io.temps.role"
# The service generation a container was created for (which change made it).
LABEL_GENERATION = "io.temps.generation"
# The installation (control-plane database) that made an object: the garbage collector only
# ever removes its own installation's objects, never another's on the same Docker engine.
LABEL_INSTALLATION = "io.temps.installation"


def is_valid_service_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None  # `$` would accept a final "\n"


def container_name(service_type: str, name: str, replica: int | None = None) -> str:
    """`temps-<type>-<name>` (+ `-replica-<n>`): at most 63 characters for valid names."""
    base = f"temps-{service_type}-{name}"
    return base if replica is None else f"{base}-replica-{replica}"


def volume_name(service_type: str, name: str, replica: int | None = None) -> str:
    return f"{container_name(service_type, name, replica)}-data"
