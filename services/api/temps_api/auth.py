"""Bearer tokens: random, stored as SHA-256 hashes, each with permissions."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
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

    def can(self, permission: str) -> bool:
        return ADMIN in self.permissions or permission in self.permissions


def new_token() -> str:
    return "temps_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits: a fast hash is enough, no password-hashing needed.
    return hashlib.sha256(token.encode()).hexdigest()


async def find_principal(pool: asyncpg.Pool, token: str) -> Principal | None:
    row = await pool.fetchrow(
        "UPDATE api_tokens SET last_used_at = now() WHERE token_hash = $1"
        " RETURNING id, name, permissions",
        hash_token(token),
    )
    if row is None:
        return None
    return Principal(row["id"], row["name"], frozenset(row["permissions"]))


async def create_token(conn: Executor, name: str, permissions: list[str]) -> tuple[UUID, str]:
    token, token_id = new_token(), uuid4()
    await conn.execute(
        "INSERT INTO api_tokens (id, name, token_hash, permissions) VALUES ($1, $2, $3, $4)",
        token_id,
        name,
        hash_token(token),
        permissions,
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
