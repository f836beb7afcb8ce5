"""The API against its own OpenAPI document (issue 16): Schemathesis generates valid and invalid
requests for every operation and checks each answer — never a 5xx, never a status code, content
type or body the document does not list.

Bounded: a fixed number of examples per operation (derandomised, no shrinking), in two passes.
A read-only token goes over every operation (writes answer 403 or a 4xx before that); an admin
token goes over the operations that touch only what this test names — its own service (the run
prefix), its own project — or ids that do not exist. Creating services is left to the read-only
pass (a generated name would not carry the run prefix), and `/api/events` to its own tests (a
stream does not end).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P

pytestmark = pytest.mark.asyncio(loop_scope="session")

READ_EXAMPLES = 10  # per operation and generation mode, with the read-only token
WRITE_EXAMPLES = 6  # per operation and generation mode, with the admin token
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
NOT_GENERATED = {"GET /api/events"}
# With the admin token: these would create or delete what the test did not name (and a
# destination is checked by connecting to the generated endpoint, up to 15 s each).
READ_ONLY = {
    "POST /api/external-services",
    "PUT /api/backup-destination",
    "DELETE /api/backup-destination",
}
# With the admin token, only for ids that do not exist.
NEVER_OURS = {"DELETE /api/external-services/{service_id}"}


def _run(
    document: dict[str, Any],
    base_url: str,
    token: str,
    examples: int,
    ours: dict[str, str] | None,
    skip: set[str],
) -> int:
    """Every operation of `document` but `skip`; returns the number of requests made."""
    schema = schemathesis.openapi.from_dict(document)
    made = 0
    headers = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in skip:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            named = {p.name for p in operation.path_parameters}
            if ours and named and named <= set(ours) and label not in NEVER_OURS:
                fixed = {name: ours[name] for name in named}
                strategy = st.one_of(
                    strategy, operation.as_strategy(generation_mode=mode, path_parameters=fixed)
                )

            @given(case=strategy)
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                nonlocal made
                made += 1
                response = case.call(base_url=base_url, headers=headers, timeout=60)
                # Raises on the first answer that breaks the document, with a curl to replay it.
                case.validate_response(response, checks=CHECKS, headers=headers)

            with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no input)
                check()
    return made


async def test_every_answer_is_in_the_openapi_document(
    platform: Platform, api: httpx.AsyncClient
) -> None:
    document = (await api.get("/api/openapi.json")).json()
    events = document["paths"]["/api/events"]["get"]["responses"]
    assert "text/event-stream" in events["200"]["content"]
    assert {"401", "403", "422"} <= set(events)

    reader = await api.post(
        "/api/tokens",
        json={"name": f"{P}contract-read", "permissions": ["external_services:read"]},
    )
    assert reader.status_code == 201, reader.text
    service = await api.post(
        "/api/external-services",
        json={"name": f"{P}contract", "service_type": "redis", "parameters": {"memory_mb": 64}},
    )
    assert service.status_code == 202, service.text
    project = await api.post("/api/projects", json={"name": f"{P}contract"})
    assert project.status_code == 201, project.text
    ours = {
        "service_id": service.json()["id"],
        "project_id": project.json()["id"],
        "environment": "production",
    }
    admin = api.headers["Authorization"].removeprefix("Bearer ")
    try:
        read_made = await asyncio.to_thread(
            _run,
            document,
            platform.base_url,
            reader.json()["token"],
            READ_EXAMPLES,
            ours,
            NOT_GENERATED,
        )
        write_made = await asyncio.to_thread(
            _run,
            document,
            platform.base_url,
            admin,
            WRITE_EXAMPLES,
            ours,
            NOT_GENERATED | READ_ONLY,
        )
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await api.delete(f"/api/external-services/{ours['service_id']}")
            await api.delete(f"/api/tokens/{reader.json()['id']}")
    assert read_made > 200
    assert write_made > 100
