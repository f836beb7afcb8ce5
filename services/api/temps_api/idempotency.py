"""`Idempotency-Key` on POST: a repeat answers the first answer and does nothing more.

The key is claimed inside the transaction that does the work, so two concurrent repeats
serialise on it: the second waits, then replays what the first committed. The same key with
another method, path or body is a client error (422), never a replay.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi.responses import JSONResponse
from temps_shared.store.types import Connection

from temps_api.auth import Principal
from temps_api.errors import ApiError


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


Work = Callable[[Connection], Awaitable[Answer]]


def fingerprint(body: Any) -> str:
    """A hash of a request body (its JSON, keys sorted): equal for the same request."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def run_once(
    pool: asyncpg.Pool,
    principal: Principal,
    key: str | None,
    method: str,
    path: str,
    work: Work,
    body: Any = None,
) -> JSONResponse:
    """Run `work` in one transaction, at most once per (token, key); `body` is the request's
    (parsed), which a repeat must match."""
    request_hash = fingerprint(body)
    async with pool.acquire() as conn:
        if key is None:
            async with conn.transaction():
                return (await work(conn)).response()
        if len(key) > 200:
            raise ApiError(422, "invalid_input", "Idempotency-Key: at most 200 characters")
        async with conn.transaction():
            claimed = await conn.fetchval(
                "INSERT INTO idempotency_keys (token_id, key, method, path, request_hash)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                principal.token_id,
                key,
                method,
                path,
                request_hash,
            )
            if claimed:
                answer = await work(conn)
                await conn.execute(
                    "UPDATE idempotency_keys SET status_code = $3, body = $4, headers = $5"
                    " WHERE token_id = $1 AND key = $2",
                    principal.token_id,
                    key,
                    answer.status,
                    answer.body,
                    answer.headers,
                )
                return answer.response()
        row = await conn.fetchrow(
            "SELECT method, path, request_hash, status_code, body, headers FROM idempotency_keys"
            " WHERE token_id = $1 AND key = $2",
            principal.token_id,
            key,
        )
    assert row is not None
    if (row["method"], row["path"]) != (method, path):
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used for {row['method']} {row['path']}; use a new key",
        )
    if row["request_hash"] is not None and row["request_hash"] != request_hash:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used with another request body; use a new key",
        )
    return Answer(row["status_code"], row["body"], row["headers"] or {}).response()
