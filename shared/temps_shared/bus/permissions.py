"""What each role may do on the bus, derived from the contract and the topology: the NATS
server's authorization block is generated from this, so a new message type or consumer needs
no hand-written permission.

- publish: the subjects of the messages the role may send (`Message.publishers`), ending with
  its own role token; the JetStream API calls of the consumers it binds; its acks;
- subscribe: its own reply inbox (`_INBOX_<role>.>`), so no role reads another's replies;
- nobody may delete or purge a stream, or touch a consumer it does not own.
"""

from __future__ import annotations

from typing import Any

from temps_shared.bus.envelope import MESSAGE_TYPES
from temps_shared.bus.topology import (
    BACKUP_CONSUMER,
    COMMANDS_STREAM,
    EVENTS_STREAM,
    HEALTH_PROJECTOR_CONSUMER,
    HEALTH_STREAM,
    MONITOR_CONSUMER,
    PROJECTOR_CONSUMER,
    PROVISIONER_DURABLE,
)
from temps_shared.messages import Role

STREAMS = (COMMANDS_STREAM, EVENTS_STREAM, HEALTH_STREAM)
AGENT_REQUESTS = "temps.rpc.*.*"


def inbox_prefix(role: Role) -> str:
    return f"_INBOX_{role}"


def _bound_consumers(role: Role) -> list[tuple[str, str]]:
    """(stream, durable) of the consumers a role's workers bind to."""
    bound = {
        Role.API: [PROJECTOR_CONSUMER, HEALTH_PROJECTOR_CONSUMER],
        Role.MONITOR: [MONITOR_CONSUMER],
        Role.BACKUP: [BACKUP_CONSUMER],
    }
    pairs = [(spec.stream, spec.durable) for spec in bound.get(role, [])]
    if role is Role.PROVISIONER:
        pairs.append((COMMANDS_STREAM, PROVISIONER_DURABLE))
    return pairs


def _consumer_subjects(stream: str, durable: str) -> list[str]:
    return [
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _topology_subjects() -> list[str]:
    """The gateway declares the topology at start and opens ordered consumers for SSE."""
    subjects = ["$JS.API.INFO"]
    for stream in STREAMS:
        subjects += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.STREAM.UPDATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
        ]
    return [*subjects, f"$JS.FC.{EVENTS_STREAM}.>"]


def publish_allowed(role: Role) -> list[str]:
    subjects = sorted(
        cls.subject_pattern(role) for cls in MESSAGE_TYPES.values() if role in cls.publishers
    )
    for stream, durable in _bound_consumers(role):
        subjects += _consumer_subjects(stream, durable)
    if role is Role.API:
        subjects += [*_topology_subjects(), AGENT_REQUESTS]
    return subjects


def subscribe_allowed(role: Role) -> list[str]:
    subjects = [f"{inbox_prefix(role)}.>"]
    if role is Role.AGENT:
        subjects.append(AGENT_REQUESTS)
    return subjects


def role_permissions(role: Role) -> dict[str, Any]:
    """The `permissions` block of one user in nats-server's configuration."""
    permissions: dict[str, Any] = {
        "publish": {"allow": publish_allowed(role)},
        "subscribe": {"allow": subscribe_allowed(role)},
    }
    if role is Role.AGENT:
        # Replies go to the requester's inbox: allowed once per request received.
        permissions["allow_responses"] = {"max": 1, "expires": "1m"}
    return permissions
