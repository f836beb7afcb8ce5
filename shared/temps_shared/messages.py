"""The bus contract: commands (imperatives) and events (facts), frozen and versioned.

Changes are additive only. No message ever carries a plaintext secret.

Every subject ends with the role that published it (`….<type>.<role>`). The NATS server lets
each role publish only the subjects of the messages it may send (`bus/permissions.py` derives
them from `publishers` below), so the last token is an origin the server vouches for, and a
consumer refuses a message whose type or origin does not match its subject (`bus/envelope.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from temps_shared.health import HealthMetrics, PostgresWalHealth


class Role(StrEnum):
    """Who is on the bus: each role has its own NATS credentials and permissions."""

    API = "api"
    PROVISIONER = "provisioner"
    MONITOR = "monitor"
    AGENT = "agent"  # the host agent: answers temps.rpc.<node>.<verb>, publishes nothing
    BACKUP = "backup"  # the backup worker: runs RunBackup / RestoreBackup


class ServiceStatus(StrEnum):
    PROVISIONING = "provisioning"
    UPDATING = "updating"  # a change is being applied to running members (issue 13)
    OPERATIONAL = "operational"
    DEGRADED = "degraded"
    DOWN = "down"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETING = "deleting"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    # The roles that may publish this message type.
    publishers: ClassVar[frozenset[Role]] = frozenset()

    schema_version: int = 1
    message_id: UUID = Field(default_factory=uuid4)

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    @classmethod
    def subject_pattern(cls, origin: str) -> str:
        """The subjects `origin` publishes this type on (`*` for the service id)."""
        raise NotImplementedError

    def subject(self, origin: Role) -> str:
        """Where `origin` publishes this message."""
        raise NotImplementedError

    def origin_problem(self, origin: Role) -> str | None:
        """Why `origin` may not have sent this message, or None when it may."""
        if origin not in self.publishers:
            return f"{origin} may not publish {self.type_name()}"
        return None


# --- commands -------------------------------------------------------------------------------


class Command(Message):
    worker: ClassVar[str]
    verb: ClassVar[str]

    @classmethod
    def subject_pattern(cls, origin: str) -> str:
        return f"temps.cmd.{cls.worker}.{cls.verb}.{origin}"

    def subject(self, origin: Role) -> str:
        return self.subject_pattern(origin)


class ReconcileService(Command):
    """Converge a service to the desired state stored for it (create, start, stop or delete).
    The backup worker asks for one after it wrote or removed the WAL-archiving configuration
    on the volume (the reconcile sets archive_mode from it)."""

    worker: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "reconcile"
    publishers = frozenset({Role.API, Role.BACKUP})

    service_id: UUID
    generation: int
    reason: str


class ProbeNow(Command):
    """Probe a service at once (e.g. a fresh WAL snapshot after its container was recreated)."""

    worker: ClassVar[str] = "monitor"
    verb: ClassVar[str] = "probe"
    publishers = frozenset({Role.PROVISIONER})

    service_id: UUID
    reason: str = ""


class RunBackup(Command):
    """Back up a service now into the installation's backup store, as `backup_id` (asked for
    by a user through the gateway, or by the backup worker's scheduler)."""

    worker: ClassVar[str] = "backup"
    verb: ClassVar[str] = "run"
    publishers = frozenset({Role.API, Role.BACKUP})

    service_id: UUID
    backup_id: UUID
    kind: str = "logical"  # a physical (pgBackRest) backup will be one more kind


class RestoreBackup(Command):
    """Restore a completed backup into `service_id`: its own service (in place), or a new
    service of the same engine created from it (`as_new_service`, `temps backup
    restore-service`)."""

    worker: ClassVar[str] = "backup"
    verb: ClassVar[str] = "restore"
    publishers = frozenset({Role.API})

    service_id: UUID
    backup_id: UUID
    restore_id: UUID


class VerifyBackup(Command):
    """Restore a completed backup into a throw-away container and compare it with the figures
    taken at backup time."""

    worker: ClassVar[str] = "backup"
    verb: ClassVar[str] = "verify"
    publishers = frozenset({Role.API, Role.BACKUP})

    service_id: UUID
    backup_id: UUID


class ConfigureWalArchiving(Command):
    """Turn a PostgreSQL service's WAL archiving (pgBackRest, to the active backup destination)
    on or off, as request `request_id` asked. On: the configuration onto the primary's volume,
    archive_mode on (a recreate), stanza-create, check, a first full backup. Off: the
    configuration removed, archive_mode off; the archive stays until retention expires it."""

    worker: ClassVar[str] = "backup"
    verb: ClassVar[str] = "wal-archiving"
    publishers = frozenset({Role.API})

    service_id: UUID
    request_id: UUID
    enabled: bool


class RestoreToTime(Command):
    """Restore a PostgreSQL service's WAL archive, as it was at `target_time` (None: the end of
    the archive), into `service_id` (a new service registered for it)."""

    worker: ClassVar[str] = "backup"
    verb: ClassVar[str] = "restore-to-time"
    publishers = frozenset({Role.API})

    service_id: UUID
    restore_id: UUID
    source_service_id: UUID
    stanza: str  # the source's pgBackRest stanza (its name when it archived)
    destination_id: UUID | None  # where its archive is (None: the built-in store)
    target_time: datetime | None


# --- events ---------------------------------------------------------------------------------


class Event(Message):
    service_id: UUID
    occurred_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def subject_pattern(cls, origin: str, service_id: str = "*") -> str:
        return f"temps.evt.service.{service_id}.{cls.type_name()}.{origin}"

    def subject(self, origin: Role) -> str:
        return self.subject_pattern(origin, str(self.service_id))


class ServiceRequested(Event):
    """A service was accepted by the gateway; it is provisioning."""

    publishers = frozenset({Role.API})

    name: str
    service_type: str
    version: str
    generation: int


class ServiceOperationRequested(Event):
    """The user asked for start, stop, retry or delete; the provisioner will converge."""

    publishers = frozenset({Role.API})

    operation: str
    generation: int


class ServiceProvisioned(Event):
    """Every member accepts connections; `connection_info` has the addresses (no secrets)."""

    publishers = frozenset({Role.PROVISIONER})

    generation: int
    connection_info: dict[str, Any]
    # PostgreSQL with read replicas: [{member, state, lag_bytes, lag_seconds}].
    replication: list[dict[str, Any]] | None = None


# `ServiceStatusChanged.source` of the health monitor's verdicts: they may only move a service
# between operational, degraded and down (the provisioner and the user own the other statuses).
MONITOR_SOURCE = "monitor"
MONITOR_OWNED = frozenset({ServiceStatus.OPERATIONAL, ServiceStatus.DEGRADED, ServiceStatus.DOWN})


class ServiceStatusChanged(Event):
    publishers = frozenset({Role.PROVISIONER, Role.MONITOR})

    status: ServiceStatus
    reason: str | None = None
    generation: int | None = None
    source: str | None = None  # MONITOR_SOURCE, or None: the provisioner

    def origin_problem(self, origin: Role) -> str | None:
        # The projector trusts `source` to tell a verdict of the monitor from the provisioner's.
        if (self.source == MONITOR_SOURCE) != (origin == Role.MONITOR):
            return f"{origin} may not publish a ServiceStatusChanged with source {self.source!r}"
        if origin == Role.MONITOR and self.status not in MONITOR_OWNED:
            return f"the monitor may not set a service {self.status}"
        return super().origin_problem(origin)


class ServiceStepCompleted(Event):
    """One step of a reconcile that changed something (a container created or started, a server
    accepting connections, users configured…), for live progress; no status follows from it."""

    publishers = frozenset({Role.PROVISIONER})

    generation: int
    step: str
    member: str | None = None  # "primary", "replica-<n>"; None: the service as a whole
    elapsed_ms: int  # since the reconcile began


class ServiceFailed(Event):
    publishers = frozenset({Role.PROVISIONER})

    generation: int
    reason: str


class ServiceDeleted(Event):
    publishers = frozenset({Role.PROVISIONER})

    generation: int


class LinkRequested(Event):
    """A project + environment was linked; its user is being created (`pending`)."""

    publishers = frozenset({Role.API})

    link_id: UUID
    project_id: UUID
    environment: str
    generation: int


class LinkRevokeRequested(Event):
    publishers = frozenset({Role.API})

    link_id: UUID
    generation: int


class LinksConverged(Event):
    """The service's link users match the desired links: these are usable, those revoked."""

    publishers = frozenset({Role.PROVISIONER})

    generation: int
    active: list[UUID]
    revoked: list[UUID]


class CredentialsRotated(Event):
    """New secrets for the admin and every link user are live; the old ones no longer work.
    (The secrets themselves never travel on the bus.)"""

    publishers = frozenset({Role.PROVISIONER})

    generation: int
    links: int


class HealthEvent(Event):
    """An observation of the health monitor: on its own stream (TEMPS_HEALTH, short retention),
    since there is one per service and cycle."""

    publishers = frozenset({Role.MONITOR})

    @classmethod
    def subject_pattern(cls, origin: str, service_id: str = "*") -> str:
        return f"temps.health.service.{service_id}.{cls.type_name()}.{origin}"


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


class BackupEvent(Event):
    publishers = frozenset({Role.BACKUP})

    backup_id: UUID


class BackupRequested(BackupEvent):
    """A scheduled backup was decided (the gateway inserts a manual one's row itself)."""

    kind: str
    trigger: str = "schedule"


class BackupStarted(BackupEvent):
    kind: str
    location: str  # the backup's folder in the store (`external_services/…/<backup id>/`)


class BackupProgress(BackupEvent):
    bytes_done: int = Field(ge=0)  # stored bytes so far (compressed and encrypted)


class BackupCompleted(BackupEvent):
    size_bytes: int = Field(ge=0)  # every artifact, as stored
    artifacts: int = Field(ge=0)


class BackupFailed(BackupEvent):
    reason: str


class BackupVerified(BackupEvent):
    """A test restore matched the figures taken at backup time."""

    summary: str  # e.g. "2 databases, 14 tables, 10234 rows"


class BackupVerificationFailed(BackupEvent):
    """A test restore differed from the figures taken at backup time (or could not be made)."""

    reason: str  # what differed, named


class BackupDeleted(BackupEvent):
    """A backup's objects were deleted from its bucket (retention, or its service was
    deleted); its catalogue row goes with it."""

    reason: str


class RestoreCompleted(BackupEvent):
    restore_id: UUID


class RestoreFailed(BackupEvent):
    restore_id: UUID
    reason: str


class WalArchivingEvent(Event):
    publishers = frozenset({Role.BACKUP})

    request_id: UUID


class WalArchivingStep(WalArchivingEvent):
    """A step of turning archiving on or off is done (e.g. "stanza created")."""

    step: str


class WalArchivingChanged(WalArchivingEvent):
    """Archiving reached `state`: on, off, or failed (with the reason)."""

    state: Literal["on", "off", "failed"]
    reason: str | None = None


class PointInTimeRestoreEvent(Event):
    publishers = frozenset({Role.BACKUP})

    restore_id: UUID


class PointInTimeRestored(PointInTimeRestoreEvent):
    """The service holds the source's data as of the target (or the archive's end)."""


class PointInTimeRestoreFailed(PointInTimeRestoreEvent):
    reason: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type_name(): cls
    for cls in (
        ServiceRequested,
        ServiceOperationRequested,
        ServiceProvisioned,
        ServiceStatusChanged,
        ServiceStepCompleted,
        ServiceFailed,
        ServiceDeleted,
        LinkRequested,
        LinkRevokeRequested,
        LinksConverged,
        CredentialsRotated,
        HealthChecked,
        WalHealthRecorded,
        BackupRequested,
        BackupStarted,
        BackupProgress,
        BackupCompleted,
        BackupFailed,
        BackupVerified,
        BackupVerificationFailed,
        BackupDeleted,
        RestoreCompleted,
        RestoreFailed,
        WalArchivingStep,
        WalArchivingChanged,
        PointInTimeRestored,
        PointInTimeRestoreFailed,
    )
}
COMMAND_TYPES: dict[str, type[Command]] = {
    cls.type_name(): cls
    for cls in (
        ReconcileService,
        ProbeNow,
        RunBackup,
        RestoreBackup,
        VerifyBackup,
        ConfigureWalArchiving,
        RestoreToTime,
    )
}


# --- host agent requests: NATS request/reply on temps.rpc.<node>.<verb> ------------------------
# For what needs a Docker host and an answer now (runtime, stats, logs, live resource caps).

AGENT_VERBS = ("runtime", "stats", "logs", "apply-resources", "host")


def agent_subject(node_id: str, verb: str) -> str:
    return f"temps.rpc.{node_id}.{verb}"


class AgentRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    schema_version: int = 1
    service_id: UUID | None = None
    member: str | None = None  # logs: "primary" (default) or "replica-<n>"
    tail: int = 200
    generation: int | None = None  # apply-resources: the generation that stored the caps


class AgentReply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    schema_version: int = 1
    ok: bool
    result: Any = None
    error_code: str | None = None  # not_found | invalid | busy | docker_error
    error_message: str | None = None
