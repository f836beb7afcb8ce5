"""Helpers of the health monitor's integration tests (test_monitor.py)."""

from __future__ import annotations

import ssl
from typing import Any

import asyncpg
import docker
import httpx

from tests.support import eventually, wait_status

PGDATA_MOUNT = "/var/lib/postgresql/data"


async def create_postgres(api: httpx.AsyncClient, name: str, parameters: dict[str, Any]) -> str:
    response = await api.post(
        "/api/external-services",
        json={"name": name, "service_type": "postgres", "parameters": parameters},
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    await wait_status(api, service_id, "operational", timeout_s=120)
    return service_id


async def admin_connection(api: httpx.AsyncClient, service_id: str) -> asyncpg.Connection:
    creds = (await api.get(f"/api/external-services/{service_id}/credentials")).json()
    context = ssl.create_default_context(cadata=creds["ca_certificate"])
    return await asyncpg.connect(creds["local_connection_url"].split("?")[0], ssl=context)


async def health(api: httpx.AsyncClient, service_id: str, limit: int = 50) -> dict[str, Any]:
    response = await api.get(f"/api/external-services/{service_id}/health?limit={limit}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def status_of(api: httpx.AsyncClient, service_id: str) -> tuple[str, str | None]:
    body = (await api.get(f"/api/external-services/{service_id}")).json()
    return body["status"], body["status_reason"]


MONITOR_STATUSES = ("operational", "degraded", "down")


async def wait_for_status(
    api: httpx.AsyncClient, service_id: str, status: str, timeout_s: float, reason: str = ""
) -> str | None:
    """The status is projected from the event stream, the checks (and WAL snapshots) from the
    health stream: for a status the monitor sets, wait until the latest check agrees too."""

    async def probe() -> tuple[str, str | None] | None:
        current = await status_of(api, service_id)
        if current[0] != status or reason not in (current[1] or ""):
            return None
        if status in MONITOR_STATUSES:
            history = (await health(api, service_id, limit=1))["history"]
            if not history or history[0]["status"] != status:
                return None
        return current

    found = await eventually(probe, timeout_s, f"{service_id} {status} ({reason})", 0.1)
    return found[1]


async def converged(api: httpx.AsyncClient, service_id: str) -> None:
    """The provisioner converged the last generation asked for; the status is the monitor's
    again (operational, or degraded at once when it was degraded before)."""

    async def probe() -> bool:
        body = (await api.get(f"/api/external-services/{service_id}")).json()
        current = body["observed_generation"] == body["generation"]
        return bool(current and body["status"] in ("operational", "degraded"))

    await eventually(probe, 60, f"{service_id} to converge")


async def wal_warnings(api: httpx.AsyncClient, service_id: str) -> dict[str, dict[str, Any]]:
    response = await api.get(f"/api/external-services/{service_id}/wal-health")
    if response.status_code == 404:
        return {}
    return {w["kind"]: w for w in response.json()["warnings"]}


async def generate_wal(conn: asyncpg.Connection, segments: int) -> None:
    """`segments` new 16 MB WAL segments, cheaply: a tiny write, then a segment switch."""
    await conn.execute("CREATE TABLE IF NOT EXISTS wal_filler (v text)")
    for _ in range(segments):
        await conn.execute("INSERT INTO wal_filler VALUES ('x')")
        await conn.execute("SELECT pg_switch_wal()")


async def checks_with(
    api: httpx.AsyncClient, service_id: str, status: str, count: int
) -> list[dict[str, Any]] | None:
    found = [c for c in (await health(api, service_id))["history"] if c["status"] == status]
    return found if len(found) >= count else None


def recreate_with(docker_client: docker.DockerClient, name: str, extra: list[str]) -> None:
    """What an operator might do: recreate the container by hand with other server flags (as
    test_postgres.py's archive_mode repair test does)."""
    container = docker_client.containers.get(name)
    tls = container.get_archive("/etc/temps/tls")[0]
    attrs = container.attrs
    container.remove(force=True)
    binding = attrs["HostConfig"]["PortBindings"]["5432/tcp"][0]
    rogue = docker_client.containers.create(
        attrs["Config"]["Image"],
        command=[*attrs["Config"]["Cmd"], *extra],
        name=name,
        hostname=name,
        environment=attrs["Config"]["Env"],
        labels=attrs["Config"]["Labels"],
        volumes={f"{name}-data": {"bind": PGDATA_MOUNT, "mode": "rw"}},
        ports={"5432/tcp": (binding["HostIp"], int(binding["HostPort"]))},
        network="temps",
    )
    rogue.put_archive("/etc/temps", b"".join(tls))
    rogue.start()
