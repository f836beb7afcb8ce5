"""Request and response bodies (XCreate / XPublic)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from temps_shared.ids import NAME_PATTERN

from temps_api.auth import PERMISSIONS


class ServiceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Lowercase letters, digits and '-', starting with a letter, 2-38 characters.",
    )
    service_type: str = Field(description="postgres | redis | s3")
    version: str | int | None = Field(None, description='A major version, e.g. "15".')
    parameters: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None


class ServiceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(
        description="Parameters to change; merged with the stored ones (spec aliases accepted)."
    )


class ServicePublic(BaseModel):
    id: UUID
    name: str
    service_type: str
    version: str
    status: str
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
