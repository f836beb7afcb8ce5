"""Bearer tokens: random, stored as SHA-256 hashes, each with permissions."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
from temps_shared.store.types import Executor

ADMIN_TOKEN_FILE = "admin_token"
EXTERNAL_SERVICES_READ = "external_services:read"
EXTERNAL_SERVICES_WRITE = "external_services:write"
BACKUPS_READ = "backups:read"
BACKUPS_WRITE = "backups:write"
SECRETS_READ = "secrets:read"
ADMIN = "admin"
PERMISSIONS = (
    EXTERNAL_SERVICES_READ,
    EXTERNAL_SERVICES_WRITE,
    BACKUPS_READ,
    BACKUPS_WRITE,
    SECRETS_READ,
    ADMIN,
)


@dataclass(frozen=True)
class Principal:
    token_id: UUID
    name: str
    permissions: frozenset[str]
    expires_at: datetime | None = None

    def can(self, permission: str) -> bool:
        return ADMIN in self.permissions or permission in self.permissions


def new_token() -> str:
    return "temps_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits: a fast hash is enough, no password-hashing needed.
    return hashlib.sha256(token.encode()).hexdigest()


class TokenExpired(Exception):
    """The token exists but its expiry has passed."""

    def __init__(self, expires_at: datetime) -> None:
        super().__init__(f"the API token expired at {expires_at.isoformat()}")
        self.expires_at = expires_at


async def find_principal(pool: asyncpg.Pool, token: str) -> Principal | None:
    """The token's principal, None when unknown or revoked; raises TokenExpired once expired.

    One statement: `last_used_at` moves only for a token that is still valid (the database's
    clock decides expiry, the same clock every replica and the SSE watch use).
    """
    row = await pool.fetchrow(
        "UPDATE api_tokens SET last_used_at = CASE WHEN expires_at IS NULL OR expires_at > now()"
        " THEN now() ELSE last_used_at END WHERE token_hash = $1"
        " RETURNING id, name, permissions, expires_at,"
        " expires_at IS NOT NULL AND expires_at <= now() AS expired",
        hash_token(token),
    )
    if row is None:
        return None
    if row["expired"]:
        raise TokenExpired(row["expires_at"])
    return Principal(row["id"], row["name"], frozenset(row["permissions"]), row["expires_at"])


TOKEN_VALID, TOKEN_EXPIRED, TOKEN_REVOKED = "valid", "expired", "revoked"


async def token_states(conn: Executor, token_ids: Iterable[UUID]) -> dict[UUID, str]:
    """Each of `token_ids` → valid, expired or revoked (gone): one indexed query for them all."""
    ids = list(token_ids)
    rows = await conn.fetch(
        "SELECT id, expires_at IS NOT NULL AND expires_at <= now() AS expired"
        " FROM api_tokens WHERE id = ANY($1::uuid[])",
        ids,
    )
    found = {r["id"]: TOKEN_EXPIRED if r["expired"] else TOKEN_VALID for r in rows}
    return {token_id: found.get(token_id, TOKEN_REVOKED) for token_id in ids}


async def create_token(
    conn: Executor, name: str, permissions: list[str], expires_at: datetime | None = None
) -> tuple[UUID, str]:
    token, token_id = new_token(), uuid4()
    await conn.execute(
        "INSERT INTO api_tokens (id, name, token_hash, permissions, expires_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        token_id,
        name,
        hash_token(token),
        permissions,
        expires_at,
    )
    return token_id, token


def read_or_create_token_file(path: Path) -> str:
    """The token in `path`, or a new one written there (0600; O_EXCL makes racing starts agree)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = new_token()
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


async def ensure_admin_token(pool: asyncpg.Pool, data_dir: Path) -> str:
    """The admin token from `<data_dir>/admin_token` (0600), created and registered on first start.

    A token file that survives a fresh database is registered again, so it keeps working.
    """
    token = read_or_create_token_file(data_dir / ADMIN_TOKEN_FILE)
    await pool.execute(
        "INSERT INTO api_tokens (id, name, token_hash, permissions) VALUES ($1, 'admin', $2, $3)"
        " ON CONFLICT (token_hash) DO NOTHING",
        uuid4(),
        hash_token(token),
        [ADMIN],
    )
    return token
