"""Validating resource caps, including against the Docker host they will run on."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from temps_shared.resources import MIB, ResourceLimits

from temps_api.agent_client import ask_agent
from temps_api.errors import ApiError, validation_error
from temps_api.state import AppState


def _too_much(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "invalid_input",
        f"resources.{field}: {message}",
        [{"field": f"resources.{field}", "message": message}],
    )


def judge_against_host(limits: ResourceLimits, host: dict[str, Any]) -> None:
    """A 422 for a cap this Docker host cannot give (`host`: the agent's `host` answer,
    {cpus, memory_bytes}); a figure the host does not report is not judged."""
    cores, memory_mb = int(host.get("cpus") or 0), int(host.get("memory_bytes") or 0) // MIB
    if limits.cpus is not None and cores and limits.cpus > cores:
        raise _too_much("cpus", f"{limits.cpus} is more than this host's {cores} cores")
    if limits.memory_mb is not None and memory_mb and limits.memory_mb > memory_mb:
        raise _too_much(
            "memory_mb", f"{limits.memory_mb} MiB is more than this host's {memory_mb} MiB"
        )
    if limits.swap_mb and memory_mb and limits.swap_mb > memory_mb:
        raise _too_much(
            "swap_mb", f"{limits.swap_mb} MiB is more than this host's memory ({memory_mb} MiB)"
        )


async def check_limits(state: AppState, body: dict[str, Any]) -> ResourceLimits:
    """Validated limits, or a 422 naming the field; caps are judged against the host."""
    try:
        limits = ResourceLimits.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, prefix="resources") from exc
    if limits.cpus is not None or limits.memory_mb is not None:
        judge_against_host(limits, await ask_agent(state, "host", timeout_s=10))
    return limits
