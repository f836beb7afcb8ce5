"""Validating resource caps, including against the Docker host they will run on."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from temps_shared.resources import ResourceLimits

from temps_api.agent_client import ask_agent
from temps_api.errors import ApiError, validation_error
from temps_api.state import AppState


async def check_limits(state: AppState, body: dict[str, Any]) -> ResourceLimits:
    """Validated limits, or a 422 naming the field; `cpus` is judged against the host."""
    try:
        limits = ResourceLimits.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, prefix="resources") from exc
    if limits.cpus is not None:
        host = await ask_agent(state, "host", timeout_s=10)
        if limits.cpus > host["cpus"]:
            raise ApiError(
                422,
                "invalid_input",
                f"resources.cpus: {limits.cpus} is more than this host's {host['cpus']} cores",
                [{"field": "resources.cpus", "message": f"at most {host['cpus']}"}],
            )
    return limits
