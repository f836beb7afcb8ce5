"""Input guards of the API that need no platform: the request body guard (size, content type,
finite JSON), bounded validation answers, caps against a host, sizes, Last-Event-ID,
Idempotency-Key fingerprints and the error answers in the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ValidationError
from temps_api.errors import (
    MAX_PROBLEMS,
    MAX_TEXT,
    ApiError,
    document_errors,
    install_error_handlers,
    validation_error,
)
from temps_api.idempotency import fingerprint
from temps_api.request_guard import RequestGuard, is_stream_sequence
from temps_api.resource_limits import judge_against_host
from temps_shared.engines.sizes import parse_size_gb, parse_size_mb
from temps_shared.resources import MIB, ResourceLimits

LIMIT = 64 * 1024


class _Item(BaseModel):
    n: int


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter()

    @router.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    @router.post("/items")
    async def items(body: list[_Item]) -> int:
        return len(body)

    @router.get("/ping")
    async def ping() -> str:
        return "pong"

    document_errors(app, router)
    app.include_router(router)
    app.add_middleware(RequestGuard, max_body_bytes=LIMIT)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_a_body_within_the_limit_reaches_the_route(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", json={"a": 1.5, "b": [1, 2, {"c": None}]})
    assert response.status_code == 200
    assert response.json() == {"a": 1.5, "b": [1, 2, {"c": None}]}
    assert (await client.get("/ping")).json() == "pong"


async def test_an_oversized_body_is_refused_by_its_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/echo",
        content=b"{" + b" " * LIMIT + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


async def test_an_oversized_chunked_body_is_refused_while_streaming(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 16 * 1024
            yield b" " * (16 * 1024)

    response = await client.post(
        "/echo", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert sent > LIMIT


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_a_body_that_is_not_json_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/echo", content=b'{"a": 1}', headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"


async def test_json_variants_of_the_media_type_are_accepted(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await client.post(
            "/echo", content=b'{"a": 1}', headers={"content-type": content_type}
        )
        assert response.status_code == 200, (content_type, response.text)


@pytest.mark.parametrize(
    "raw",
    [
        '{"a": 1e400}',
        '{"a": -1e400}',
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": [-Infinity]}',
        '{"a": {"b": 1' + "0" * 30 + "}}",
        '{"a": 1' + "0" * 5000 + "}",
        "[" * 100 + "]" * 100,
        "[" * 30_000 + "]" * 30_000,
        '{"a": ',
    ],
)
async def test_json_the_api_cannot_hold_is_422(client: httpx.AsyncClient, raw: str) -> None:
    response = await client.post(
        "/echo", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert len(response.content) < 1000


async def test_validation_answers_are_bounded(client: httpx.AsyncClient) -> None:
    body = [{"n": "x" * 10}] * 2000 + [{"k" * 10_000: 1}]
    response = await client.post("/items", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert len(error["details"]) == MAX_PROBLEMS
    assert "more" in error["message"]
    assert len(response.content) < MAX_PROBLEMS * 2 * (MAX_TEXT + 50) * 2


def test_validation_error_cuts_long_fields() -> None:
    class Model(BaseModel):
        model_config = {"extra": "forbid"}

    with pytest.raises(ValidationError) as info:
        Model.model_validate({"k" * 5000: 1})
    error = validation_error(info.value, prefix="parameters")
    assert len(error.details[0]["field"]) <= MAX_TEXT
    assert len(error.message) < 2 * MAX_TEXT


def test_the_document_lists_each_routes_errors() -> None:
    document = _app().openapi()
    echo = document["paths"]["/echo"]["post"]["responses"]
    assert {"413", "415", "422"} <= set(echo)
    assert echo["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert set(document["paths"]["/ping"]["get"]["responses"]) == {"200"}
    assert "ErrorBody" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cpus": 0.0001}, "cpus"),
        ({"cpus": 0.009}, "cpus"),
        ({"cpus": 1e5}, "cpus"),
        ({"memory_mb": 10**15}, "memory_mb"),
        ({"memory_mb": 5}, "memory_mb"),
        ({"memory_mb": 64, "swap_mb": 10**15}, "swap_mb"),
    ],
)
def test_caps_docker_cannot_take_are_invalid(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ResourceLimits.model_validate(body)
    assert info.value.errors()[0]["loc"] == (field,)


HOST = {"cpus": 2, "memory_bytes": 4096 * MIB}


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        (ResourceLimits(cpus=2.5), "cpus"),
        (ResourceLimits(memory_mb=4097), "memory_mb"),
        (ResourceLimits(memory_mb=512, swap_mb=5000), "swap_mb"),
    ],
)
def test_caps_beyond_the_host_are_refused(limits: ResourceLimits, field: str) -> None:
    with pytest.raises(ApiError) as info:
        judge_against_host(limits, HOST)
    assert info.value.status == 422
    assert info.value.message.startswith(f"resources.{field}:")


def test_caps_the_host_can_give_pass() -> None:
    judge_against_host(ResourceLimits(cpus=2, memory_mb=4096, swap_mb=4096), HOST)
    judge_against_host(ResourceLimits(cpus=0.01, memory_mb=6), HOST)
    judge_against_host(ResourceLimits(cpus=64), {"cpus": 0, "memory_bytes": 0})  # unknown host


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "9" * 400 + "TB", "9" * 400])
def test_sizes_must_be_finite(value: object) -> None:
    with pytest.raises(ValueError, match=r"finite|size"):
        parse_size_mb(value)
    with pytest.raises(ValueError, match=r"finite|size"):
        parse_size_gb(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("0", True),
        ("42", True),
        ("9223372036854775806", True),
        ("9223372036854775807", False),
        ("99999999999999999999999", False),
        ("-1", False),
        ("1.5", False),
        ("²", False),
        ("١٢", False),
        ("", False),
    ],
)
def test_last_event_id_must_be_a_stream_sequence(value: str, ok: bool) -> None:
    assert is_stream_sequence(value) is ok


def test_fingerprints_ignore_key_order_but_not_values() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint(json.loads('{"b": [1, 2], "a": 1}'))
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint(None) == fingerprint(None)


def test_caps_stored_before_validation_cannot_wedge_a_service() -> None:
    stored = {"swap_mb": 64, "cpus": 0.0001, "memory_mb": 256}
    assert ResourceLimits.from_stored(stored) == ResourceLimits(memory_mb=256, swap_mb=64)
    assert ResourceLimits.from_stored({"memory_mb": 10**15}) == ResourceLimits()
    assert ResourceLimits.from_stored(None) == ResourceLimits()
