"""The bus contract: commands (imperatives) and events (facts), frozen and versioned.

Changes are additive only. No message ever carries a plaintext secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from temps_shared.health import HealthMetrics, PostgresWalHealth


class ServiceStatus(StrEnum):
    PROVISIONING = "provisioning"
    OPERATIONAL = "operational"
    DEGRADED = "degraded"
    DOWN = "down"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETING = "deleting"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1
    message_id: UUID = Field(default_factory=uuid4)

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__


M = TypeVar("M", bound=Message)


# --- commands -------------------------------------------------------------------------------


class Command(Message):
    worker: ClassVar[str]
    verb: ClassVar[str]

    @classmethod
    def subject(cls) -> str:
        return f"temps.cmd.{cls.worker}.{cls.verb}"


class ReconcileService(Command):
    """Converge a service to the desired state stored for it (create, start, stop or delete)."""

    worker: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "reconcile"

    service_id: UUID
    generation: int
    reason: str


class ProbeNow(Command):
    """Probe a service at once (e.g. a fresh WAL snapshot after its container was recreated)."""

    worker: ClassVar[str] = "monitor"
    verb: ClassVar[str] = "probe"

    service_id: UUID
    reason: str = ""


# --- events ---------------------------------------------------------------------------------


class Event(Message):
    service_id: UUID
    occurred_at: datetime = Field(default_factory=utcnow)

    def subject(self) -> str:
        return f"temps.evt.service.{self.service_id}.{self.type_name()}"


class ServiceRequested(Event):
    """A service was accepted by the gateway; it is provisioning."""

    name: str
    service_type: str
    version: str
    generation: int


class ServiceOperationRequested(Event):
    """The user asked for start, stop, retry or delete; the provisioner will converge."""

    operation: str
    generation: int


class ServiceProvisioned(Event):
    """Every member accepts connections; `connection_info` has the addresses (no secrets)."""

    generation: int
    connection_info: dict[str, Any]
    # PostgreSQL with read replicas: [{member, state, lag_bytes, lag_seconds}].
    replication: list[dict[str, Any]] | None = None


# `ServiceStatusChanged.source` of the health monitor's verdicts: they may only move a service
# between operational, degraded and down (the provisioner and the user own the other statuses).
MONITOR_SOURCE = "monitor"


class ServiceStatusChanged(Event):
    status: ServiceStatus
    reason: str | None = None
    generation: int | None = None
    source: str | None = None  # MONITOR_SOURCE, or None: the provisioner


class ServiceFailed(Event):
    generation: int
    reason: str


class ServiceDeleted(Event):
    generation: int


class LinkRequested(Event):
    """A project + environment was linked; its user is being created (`pending`)."""

    link_id: UUID
    project_id: UUID
    environment: str
    generation: int


class LinkRevokeRequested(Event):
    link_id: UUID
    generation: int


class LinksConverged(Event):
    """The service's link users match the desired links: these are usable, those revoked."""

    generation: int
    active: list[UUID]
    revoked: list[UUID]


class CredentialsRotated(Event):
    """New secrets for the admin and every link user are live; the old ones no longer work.
    (The secrets themselves never travel on the bus.)"""

    generation: int
    links: int


class HealthEvent(Event):
    """An observation of the health monitor: on its own stream (TEMPS_HEALTH, short retention),
    since there is one per service and cycle."""

    def subject(self) -> str:
        return f"temps.health.service.{self.service_id}.{self.type_name()}"


class HealthChecked(HealthEvent):
    """One probe of one service: the monitor's verdict, its figures, who probed."""

    checked_at: datetime
    status: ServiceStatus  # operational | degraded | down
    reason: str | None = None
    response_time_ms: float | None = None
    error: str | None = None
    metrics: HealthMetrics = Field(default_factory=HealthMetrics)
    generation: int
    monitor: str  # the monitor replica that probed


class WalHealthRecorded(HealthEvent):
    """A PostgreSQL WAL health snapshot of the service's primary."""

    snapshot: PostgresWalHealth


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type_name(): cls
    for cls in (
        ServiceRequested,
        ServiceOperationRequested,
        ServiceProvisioned,
        ServiceStatusChanged,
        ServiceFailed,
        ServiceDeleted,
        LinkRequested,
        LinkRevokeRequested,
        LinksConverged,
        CredentialsRotated,
        HealthChecked,
        WalHealthRecorded,
    )
}
COMMAND_TYPES: dict[str, type[Command]] = {
    cls.type_name(): cls for cls in (ReconcileService, ProbeNow)
}


def _decode(registry: Mapping[str, type[M]], kind: str, type_name: str, data: bytes) -> M:
    try:
        cls = registry[type_name]
    except KeyError as exc:
        raise ValueError(f"unknown {kind} type {type_name!r}") from exc
    return cls.model_validate_json(data)


def decode_event(type_name: str, data: bytes) -> Event:
    """The event named `type_name`; ValueError for an unknown type, ValidationError for bad data."""
    return _decode(EVENT_TYPES, "event", type_name, data)


def decode_command(type_name: str, data: bytes) -> Command:
    return _decode(COMMAND_TYPES, "command", type_name, data)


# --- host agent requests: NATS request/reply on temps.rpc.<node>.<verb> ------------------------
# For what needs a Docker host and an answer now (runtime, stats, logs, live resource caps).

AGENT_VERBS = ("runtime", "stats", "logs", "apply-resources", "host")


def agent_subject(node_id: str, verb: str) -> str:
    return f"temps.rpc.{node_id}.{verb}"


class AgentRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1
    service_id: UUID | None = None
    member: str | None = None  # logs: "primary" (default) or "replica-<n>"
    tail: int = 200
    generation: int | None = None  # apply-resources: the generation that stored the caps


class AgentReply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1
    ok: bool
    result: Any = None
    error_code: str | None = None  # not_found | invalid | busy | docker_error
    error_message: str | None = None
