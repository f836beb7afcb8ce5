"""A PostgreSQL service linked to a project, seen as an application sees it: the link user's
pooled `DATABASE_URL` and direct `DATABASE_DIRECT_URL`, rewritten to their loopback
publications as `temps run` does. Shared by the pooler tests and bench/pooler_overhead.py."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from tests.support import eventually, revealed_variables, wait_status


def loopback(url: str, endpoint: dict[str, Any]) -> str:
    """What `temps run` does: the private host:port becomes its loopback publication."""
    private = f"@{endpoint['host']}:{endpoint['port']}/"
    assert private in url, (url, endpoint)
    return url.replace(private, f"@127.0.0.1:{endpoint['local_port']}/").split("?")[0]


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise AssertionError(f"{what}: {response.status_code} {response.text}")


async def linked_postgres(
    api: httpx.AsyncClient, name: str, project: str, **parameters: Any
) -> dict[str, Any]:
    """Create PostgreSQL 15 `name` (no replica, 256 MB unless `parameters` say otherwise),
    link project `project` to it, and wait until
    the link is active: {service (the record), project_id, variables (the link's, revealed),
    pooled and direct (loopback URLs), ssl (a context trusting the installation CA)}."""
    response = await api.post(
        "/api/external-services",
        json={
            "name": name,
            "service_type": "postgres",
            "version": "15",
            "parameters": {"replicas": 0, "memory_mb": 256, **parameters},
        },
    )
    _expect(response, 202, "create")
    service = await wait_status(api, response.json()["id"], "operational", timeout_s=180)
    response = await api.post("/api/projects", json={"name": project})
    _expect(response, 201, "project")
    project_id: str = response.json()["id"]
    response = await api.post(
        f"/api/external-services/{service['id']}/projects",
        json={"project_id": project_id, "environment": "production"},
    )
    _expect(response, 202, "link")

    async def active() -> bool:
        links = (await api.get(f"/api/external-services/{service['id']}/projects")).json()
        return any(x["project_id"] == project_id and x["status"] == "active" for x in links)

    await eventually(active, 60, "the link to be active")
    variables = await revealed_variables(api, project_id)
    info = service["connection_info"]
    return {
        "service": service,
        "project_id": project_id,
        "variables": variables,
        "pooled": loopback(variables["DATABASE_URL"], info["pooler"]),
        "direct": loopback(variables["DATABASE_DIRECT_URL"], info),
        "ssl": ssl.create_default_context(cadata=variables["TEMPS_CA_CERT"]),
    }
