"""Desired state of links: which project + environment may use which service, and as whom."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from temps_shared.crypto import KeyRing
from temps_shared.links import LinkGrant
from temps_shared.store.types import Connection, Executor


@dataclass(frozen=True)
class LinkRecord:
    id: UUID
    service_id: UUID
    service_type: str
    project_id: UUID
    environment: str
    key_prefix: str | None
    secrets_ciphertext: str
    desired_state: str
    created_at: datetime
    # Redis: this link accepted sharing its keyspace with other projects' links.
    shared_keyspace: bool = False

    def credentials(self, keyring: KeyRing) -> dict[str, str]:
        data: dict[str, str] = json.loads(
            keyring.decrypt(self.secrets_ciphertext, link_aad(self.id))
        )
        return data

    def grant(self, keyring: KeyRing) -> LinkGrant:
        creds = self.credentials(keyring)
        return LinkGrant(
            link_id=self.id,
            username=creds["username"],
            password=creds["password"],
            resource=creds.get("resource", ""),
            key_prefix=self.key_prefix,
            active=self.desired_state == "active",
        )


def link_aad(link_id: UUID) -> bytes:
    return f"link-secrets:{link_id}".encode()


def _record(row: asyncpg.Record) -> LinkRecord:
    return LinkRecord(
        id=row["id"],
        service_id=row["service_id"],
        service_type=row["service_type"],
        project_id=row["project_id"],
        environment=row["environment"],
        key_prefix=row["key_prefix"],
        secrets_ciphertext=row["secrets"],
        desired_state=row["desired_state"],
        created_at=row["created_at"],
        shared_keyspace=row["shared_keyspace"],
    )


async def insert_link(conn: Connection, link: LinkRecord) -> None:
    await conn.execute(
        "INSERT INTO service_links (id, service_id, service_type, project_id, environment,"
        " key_prefix, secrets, desired_state, shared_keyspace)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        link.id,
        link.service_id,
        link.service_type,
        link.project_id,
        link.environment,
        link.key_prefix,
        link.secrets_ciphertext,
        link.desired_state,
        link.shared_keyspace,
    )


def keyspace_overlaps(
    active: list[LinkRecord], project_id: UUID, key_prefix: str | None
) -> list[LinkRecord]:
    """The active links of other projects a new Redis link of `project_id` with `key_prefix`
    would share keys with, unless it says `shared_keyspace`: every one when the new link has no
    prefix (it would get `~*`), those with the same prefix otherwise.

    Not counted, as issue 16 rules: another project's link without a prefix when the new link
    has one. The new link then reaches only keys under its prefix, but the older unprefixed link
    still reaches the new link's keys (documented in docs/api.md). Links of the same project (its
    other environments) never count: one tenant, holding both links' credentials anyway."""
    return [
        link
        for link in active
        if link.project_id != project_id
        and link.desired_state == "active"
        and (key_prefix is None or link.key_prefix == key_prefix)
    ]


async def links_of_service(conn: Executor, service_id: UUID) -> list[LinkRecord]:
    """Every link of the service, revoked ones included (their users must stay revoked)."""
    rows = await conn.fetch(
        "SELECT * FROM service_links WHERE service_id = $1 ORDER BY created_at", service_id
    )
    return [_record(r) for r in rows]


async def active_links_of_service(conn: Executor, service_id: UUID) -> list[LinkRecord]:
    return [
        link for link in await links_of_service(conn, service_id) if link.desired_state == "active"
    ]


async def active_link(
    conn: Executor, service_id: UUID, project_id: UUID, environment: str
) -> LinkRecord | None:
    row = await conn.fetchrow(
        "SELECT * FROM service_links WHERE service_id = $1 AND project_id = $2"
        " AND environment = $3 AND desired_state = 'active'",
        service_id,
        project_id,
        environment,
    )
    return _record(row) if row else None


async def active_links_of_environment(
    conn: Executor, project_id: UUID, environment: str
) -> list[LinkRecord]:
    rows = await conn.fetch(
        "SELECT * FROM service_links WHERE project_id = $1 AND environment = $2"
        " AND desired_state = 'active' ORDER BY created_at",
        project_id,
        environment,
    )
    return [_record(r) for r in rows]


async def set_link_state(conn: Connection, link_id: UUID, desired_state: str) -> None:
    await conn.execute(
        "UPDATE service_links SET desired_state = $2, updated_at = now() WHERE id = $1",
        link_id,
        desired_state,
    )


async def set_link_secrets(conn: Connection, link_id: UUID, ciphertext: str) -> None:
    await conn.execute(
        "UPDATE service_links SET secrets = $2, updated_at = now() WHERE id = $1",
        link_id,
        ciphertext,
    )
