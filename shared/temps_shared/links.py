"""Links: a project + environment's own least-privilege access to a service.

What an engine needs to create, update or revoke a link's user, and the naming rules for the
resources a link gets (a PostgreSQL database, an S3 bucket), derived from the project and
environment names plus a short hash of the link id so that no two links can collide.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from uuid import UUID

MASK = "********"


@dataclass(frozen=True)
class LinkGrant:
    link_id: UUID
    username: str  # PostgreSQL role, Redis ACL user, S3 access key
    password: str  # its password or S3 secret key
    resource: str  # PostgreSQL database, S3 bucket; "" for Redis
    key_prefix: str | None
    active: bool  # False: revoked (its data stays; its user can no longer log in)


def _short_hash(link_id: UUID) -> str:
    return hashlib.sha256(link_id.bytes).hexdigest()[:6]


def identifier_for(project: str, environment: str, link_id: UUID) -> str:
    """A PostgreSQL identifier (≤ 63 chars, [a-z0-9_], not starting with a digit)."""
    base = re.sub(r"[^a-z0-9]+", "_", f"{project}_{environment}".lower()).strip("_") or "link"
    if base[0].isdigit():
        base = f"p_{base}"
    return f"{base[:55]}_{_short_hash(link_id)}"


def bucket_for(project: str, environment: str, link_id: UUID) -> str:
    """An S3 bucket name (3 to 63 chars, [a-z0-9-], starting and ending alphanumeric)."""
    base = re.sub(r"[^a-z0-9]+", "-", f"{project}-{environment}".lower()).strip("-") or "link"
    return f"{base[:55]}-{_short_hash(link_id)}"


def mask(variables: dict[str, str], secrets: list[str], secret_names: set[str]) -> dict[str, str]:
    """Variables with every secret hidden: whole values of secret variables, and secrets found
    inside others (the password in a connection URL)."""
    masked = {}
    for name, value in variables.items():
        if name in secret_names:
            masked[name] = MASK
            continue
        for secret in secrets:
            if secret:
                value = value.replace(secret, MASK)
        masked[name] = value
    return masked
