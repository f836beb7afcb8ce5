"""Requests to the host agent that owns a service's Docker host (NATS request/reply): the
gateway never touches Docker itself."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import nats.errors
from temps_shared.messages import AgentReply, AgentRequest, agent_subject

from temps_api.errors import ApiError
from temps_api.state import AppState

# Agent error codes → HTTP status.
_STATUS = {"not_found": 404, "invalid": 422, "busy": 409, "docker_error": 502}


async def ask_agent(
    state: AppState,
    verb: str,
    service_id: UUID | None = None,
    *,
    timeout_s: float = 30.0,
    **fields: Any,
) -> Any:
    """The agent's answer; an `ApiError` when it refuses, or 503 when no agent answers."""
    request = AgentRequest(service_id=service_id, **fields)
    # Every service lives on this installation's one node for now; a service's own node id
    # goes here when there are several Docker hosts.
    subject = agent_subject(state.settings.node_id, verb)
    try:
        msg = await state.nc.request(subject, request.model_dump_json().encode(), timeout=timeout_s)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise ApiError(
            503,
            "agent_unavailable",
            f"the Docker host agent ({state.settings.node_id}) did not answer; is the "
            "provisioner running?",
        ) from exc
    reply = AgentReply.model_validate_json(msg.data)
    if not reply.ok:
        code = reply.error_code or "docker_error"
        raise ApiError(_STATUS.get(code, 502), code, reply.error_message or "the agent failed")
    return reply.result
