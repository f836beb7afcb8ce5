"""Sessions and tokens, the pure parts: token expiry from a create body, the token watch that
ends SSE streams, forwarded-header trust, and `temps projects delete`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from temps_api.audit import uvicorn_proxy_options
from temps_api.errors import ApiError
from temps_api.routes.events import stream_ended
from temps_api.routes.tokens import token_expiry
from temps_api.schemas import TokenCreate
from temps_api.token_watch import TokenWatch
from temps_cli.client import ExitCode

from tests.unit.test_cli_commands import temps

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _body(**extra: Any) -> TokenCreate:
    return TokenCreate(name="ci", permissions=["admin"], **extra)


def test_token_expiry_shapes() -> None:
    assert token_expiry(_body(), NOW) is None
    assert token_expiry(_body(expires_in_s=90), NOW) == NOW + timedelta(seconds=90)
    later = NOW + timedelta(days=2)
    assert token_expiry(_body(expires_at=later), NOW) == later


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"expires_at": NOW - timedelta(seconds=1)}, "in the future"),
        ({"expires_at": NOW.replace(tzinfo=None) + timedelta(days=1)}, "UTC offset"),
        ({"expires_at": NOW + timedelta(days=1), "expires_in_s": 5}, "not both"),
    ],
)
def test_token_expiry_refused(extra: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiError) as caught:
        token_expiry(_body(**extra), NOW)
    assert caught.value.status == 422
    assert words in caught.value.message
    assert caught.value.message.startswith("expires_at: ")


class _Pool:
    """What token_states asks of the database: rows of (id, expired) for the tokens that exist."""

    def __init__(self) -> None:
        self.tokens: dict[UUID, bool] = {}  # id → expired
        self.fail = False
        self.queries = 0

    async def fetch(self, _sql: str, ids: list[UUID]) -> list[dict[str, Any]]:
        self.queries += 1
        if self.fail:
            raise OSError("connection refused")
        return [{"id": i, "expired": self.tokens[i]} for i in ids if i in self.tokens]


async def test_token_watch_tells_only_the_streams_of_an_ended_token() -> None:
    pool = _Pool()
    a, b, c = uuid4(), uuid4(), uuid4()
    pool.tokens = {a: False, b: False, c: False}
    watch = TokenWatch(pool, period_s=3600)  # type: ignore[arg-type]
    told: list[tuple[str, str]] = []
    with (
        watch.watching(a, lambda why: told.append(("a1", why))),
        watch.watching(a, lambda why: told.append(("a2", why))),
        watch.watching(b, lambda why: told.append(("b", why))),
        watch.watching(c, lambda why: told.append(("c", why))),
    ):
        await watch.check()
        assert told == []
        assert pool.queries == 1  # one query for every stream
        del pool.tokens[b]  # revoked
        pool.tokens[c] = True  # expired
        await watch.check()
        assert sorted(told) == [("b", "token_revoked"), ("c", "token_expired")]
        await watch.check()  # told once
        assert len(told) == 2
        pool.fail = True  # a failed check keeps the streams
        del pool.tokens[a]
        await watch.check()
        assert len(told) == 2
        pool.fail = False
        await watch.check()
        assert sorted(told)[:2] == [("a1", "token_revoked"), ("a2", "token_revoked")]
    queries = pool.queries
    await watch.check()  # nothing watched: no query
    assert pool.queries == queries


def test_stream_ended_frame_has_no_id() -> None:
    frame = stream_ended("token_revoked")
    assert frame.endswith("\n\n")
    lines = frame.strip().splitlines()
    assert lines[0] == "event: stream_ended"
    assert json.loads(lines[1].removeprefix("data: ")) == {"reason": "token_revoked"}
    assert not any(line.startswith("id:") for line in lines)


def test_forwarded_headers_believed_only_from_configured_proxies() -> None:
    assert uvicorn_proxy_options("") == {"proxy_headers": False}
    assert uvicorn_proxy_options(" 10.0.0.5 , 172.18.0.0/16") == {
        "proxy_headers": True,
        "forwarded_allow_ips": ["10.0.0.5", "172.18.0.0/16"],
    }
    with pytest.raises(ValueError, match="everyone"):
        uvicorn_proxy_options("everyone")


PID = "5f0e9d8c-1b2a-4c3d-8e7f-6a5b4c3d2e1f"
PROJECT = {"id": PID, "name": "shop", "environments": ["production", "staging"]}


def _api(status: int, seen: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "GET":
            body = [PROJECT] if request.url.path == "/api/projects" else PROJECT
            return httpx.Response(200, json=body)
        if status == 204:
            return httpx.Response(204)
        return httpx.Response(
            status, json={"error": {"code": "still_linked", "message": "linked to redis 'c'"}}
        )

    return httpx.MockTransport(answer)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("projects", "delete", "shop", "--yes"), f"/api/projects/{PID}"),
        (
            ("projects", "delete-env", "shop", "staging", "--yes"),
            f"/api/projects/{PID}/environments/staging",
        ),
    ],
)
def test_cli_deletes_projects_and_environments(args: tuple[str, ...], path: str) -> None:
    seen: list[str] = []
    result = temps(_api(204, seen), *args)
    assert result.exit_code == 0, result.output
    assert f"DELETE {path}" in seen
    refused = temps(_api(409, []), *args)
    assert refused.exit_code == ExitCode.CONFLICT
    assert "linked to redis 'c'" in refused.output
    assert temps(_api(204, []), *args[:-1]).exit_code == ExitCode.INPUT  # no --yes, no tty
