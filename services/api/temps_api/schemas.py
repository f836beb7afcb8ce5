"""Request and response bodies (XCreate / XPublic)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from temps_shared.ids import NAME_PATTERN
from temps_shared.messages import ServiceStatus
from temps_shared.resources import ResourceLimits

from temps_api.auth import PERMISSIONS


class ServiceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Lowercase letters, digits and '-', starting with a letter, 2-38 characters.",
    )
    service_type: str = Field(
        description="postgres | redis | s3", json_schema_extra={"enum": ["postgres", "redis", "s3"]}
    )
    version: str | int | None = Field(None, description='A major version, e.g. "15".')
    parameters: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None


class ServiceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(
        description="Parameters to change; merged with the stored ones (spec aliases accepted)."
    )


ServiceType = Literal["postgres", "redis", "s3"]


class ServicePublic(BaseModel):
    id: UUID
    name: str
    service_type: ServiceType
    version: str
    status: ServiceStatus
    status_reason: str | None
    parameters: dict[str, Any]
    resources: dict[str, Any]
    connection_info: dict[str, Any] | None
    replication: list[dict[str, Any]] | None = None
    generation: int
    observed_generation: int
    created_at: datetime
    updated_at: datetime


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    permissions: list[str] = Field(min_length=1, description=f"Any of: {', '.join(PERMISSIONS)}")
    expires_at: datetime | None = Field(
        None,
        description="When the token stops working: an RFC 3339 timestamp with its offset, in the"
        " future. Give this or `expires_in_s`, not both; neither: the token never expires.",
    )
    expires_in_s: int | None = Field(
        None,
        ge=1,
        le=10 * 366 * 86400,
        description="Seconds from now (server clock) until the token stops working.",
    )


class TokenPublic(BaseModel):
    id: UUID
    name: str
    permissions: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None = Field(description="null: the token never expires.")


class TokenCreated(TokenPublic):
    token: str = Field(description="Shown once; only its hash is stored.")


class CredentialsPublic(BaseModel):
    """The instance's administrator. PostgreSQL: username, password, database, connection_url,
    local_connection_url, ca_certificate; Redis: the same without database; S3: access_key,
    secret_key, endpoint, local_endpoint, bucket, region, ca_certificate."""

    username: str | None = None
    password: str | None = None
    database: str | None = None
    connection_url: str | None = None
    local_connection_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    endpoint: str | None = None
    local_endpoint: str | None = None
    bucket: str | None = None
    region: str | None = None
    ca_certificate: str


ContainerStatus = Literal[
    "created", "restarting", "running", "removing", "paused", "exited", "dead"
]
Outcome = Literal["applied", "stopped", "missing", "failed"]


class LimitDrift(BaseModel):
    configured: int | float | None
    live: int | float | None


class DockerLimitsView(BaseModel):
    memory: int = Field(description="HostConfig.Memory in bytes (0: none; 2**62: a lifted cap)")
    memory_swap: int
    nano_cpus: int


class MemberRuntime(BaseModel):
    role: str = Field(description="primary | replica-<n> | pooler")
    container_name: str
    container_id: str
    status: ContainerStatus
    restart_count: int
    oom_killed: bool
    oom_kills: int
    exit_code: int | None
    image: str
    started_at: str | None
    resource_limits: ResourceLimits
    docker_limits: DockerLimitsView | None = Field(
        None, description="What Docker really holds for the container (the caps above, raw)."
    )
    drift: dict[Literal["memory_mb", "swap_mb", "cpus"], LimitDrift] | None


class ServiceRuntime(BaseModel):
    service_id: UUID
    members: list[MemberRuntime]


class MemberStats(BaseModel):
    role: str
    container_name: str
    status: ContainerStatus
    cpu_percent: float
    memory_usage_bytes: int
    memory_limit_bytes: int
    memory_percent: float
    online_cpus: int


class ServiceStats(BaseModel):
    service_id: UUID
    members: list[MemberStats]


class ServiceLogs(BaseModel):
    member: str
    lines: list[str]


class MemberApplied(BaseModel):
    role: str
    container_name: str
    outcome: Outcome
    recreated: bool = False
    error: str | None = None


class ResourcesApplied(BaseModel):
    limits: ResourceLimits
    applied: list[MemberApplied]


class AuditEntry(BaseModel):
    at: datetime
    actor: str
    action: str
    target: str | None
    ip: str | None
    details: dict[str, Any] | None
