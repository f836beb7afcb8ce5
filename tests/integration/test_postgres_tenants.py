"""Tenants on one PostgreSQL server (issue 16), on 13, 15 and 17: a link's user reaches no
database but its own and creates in no schema it does not own (13's template1 trojan); no
password in pg_stat_statements, its query-text file, the server log or `docker inspect` after
create, link and rotate; and an old service (doors open, plaintext in the statistics, password in
env) is repaired by its next reconcile.

Lean on purpose (2 cores): one service per version, two linked projects each, shared by the
module's tests (which run in order: isolation, secrets after a rotation, then the repair).
"""

from __future__ import annotations

import io
import json
import ssl
import tarfile
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import docker
import httpx
import pytest
from temps_shared.crypto import KeyRing
from temps_shared.store.services import get_service

from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, revealed_variables, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
VERSIONS = ("13", "15", "17")
PGSS_TEXTS = "/var/lib/postgresql/data/pgdata/pg_stat_tmp/pgss_query_texts.stat"
# In every database: (schema, role) where a role that neither owns the schema (nor is a member
# of its owner) nor is a superuser may CREATE — PUBLIC's grants show up for every role.
FOREIGN_CREATORS = """
SELECT n.nspname, r.rolname FROM pg_namespace n CROSS JOIN pg_roles r
WHERE has_schema_privilege(r.oid, n.oid, 'CREATE') AND NOT r.rolsuper
  AND NOT pg_has_role(r.oid, n.nspowner, 'MEMBER')
ORDER BY 1, 2
"""


async def _project(api: httpx.AsyncClient, name: str) -> str:
    response = await api.post("/api/projects", json={"name": name})
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


async def _link(api: httpx.AsyncClient, service_id: str, project_id: str) -> None:
    response = await api.post(
        f"/api/external-services/{service_id}/projects",
        json={"project_id": project_id, "environment": "production"},
    )
    assert response.status_code == 202, response.text

    async def active() -> bool:
        links = (await api.get(f"/api/external-services/{service_id}/projects")).json()
        return any(x["project_id"] == project_id and x["status"] == "active" for x in links)

    await eventually(active, 60, "the link to be active")


async def _admin(api: httpx.AsyncClient, service_id: str, database: str = "") -> asyncpg.Connection:
    creds = await credentials(api, service_id)
    url = creds["local_connection_url"].split("?")[0]
    if database:
        url = url.rsplit("/", 1)[0] + f"/{database}"
    return await asyncpg.connect(
        url, ssl=ssl.create_default_context(cadata=creds["ca_certificate"])
    )


async def _as_link(tenant: dict[str, Any], project: str, database: str) -> asyncpg.Connection:
    """Project `project`'s link user, on `database`, through the loopback publication."""
    variables, info = tenant["variables"][project], tenant["service"]["connection_info"]
    return await asyncpg.connect(
        host="127.0.0.1",
        port=info["local_port"],
        user=variables["POSTGRES_USER"],
        password=variables["POSTGRES_PASSWORD"],
        database=database,
        ssl=ssl.create_default_context(cadata=variables["TEMPS_CA_CERT"]),
    )


async def _stored_secrets(database_url: str, data_dir: Path, service_id: str) -> set[str]:
    """Every secret the platform keeps for the service (monitor and replication included)."""
    conn = await asyncpg.connect(database_url)
    try:
        record = await get_service(conn, UUID(service_id))
    finally:
        await conn.close()
    assert record is not None
    creds = record.credentials(KeyRing.from_data_dir(data_dir))
    return {v for k, v in creds.items() if "password" in k}


async def _collect_passwords(
    api: httpx.AsyncClient, database_url: str, data_dir: Path, tenant: dict[str, Any]
) -> None:
    """Add every password handed out or kept for the service to `tenant["passwords"]`."""
    sid = tenant["service"]["id"]
    found = {(await credentials(api, sid))["password"]}
    found |= await _stored_secrets(database_url, data_dir, sid)
    for project in ("a", "b"):
        tenant["variables"][project] = await revealed_variables(api, tenant["projects"][project])
        found.add(tenant["variables"][project]["POSTGRES_PASSWORD"])
    assert all(len(p) >= 16 for p in found)
    tenant["passwords"] |= found


def _exec(container: Any, *command: str) -> str:
    result = container.exec_run(list(command))
    assert result.exit_code == 0, result.output
    output: bytes = result.output
    return output.decode(errors="replace")


async def _leaks(
    api: httpx.AsyncClient, docker_client: docker.DockerClient, tenant: dict[str, Any]
) -> list[str]:
    """Where any of the tenant's passwords shows: statistics, their file, logs, inspect."""
    sid, passwords = tenant["service"]["id"], tenant["passwords"]
    places: dict[str, str] = {}
    conn = await _admin(api, sid)
    try:
        rows = await conn.fetch("SELECT query FROM pg_stat_statements")
        assert rows  # the view tracks (the role statements would be among them)
        places["pg_stat_statements"] = "\n".join(r["query"] for r in rows)
    finally:
        await conn.close()
    containers = await _containers(docker_client, sid)
    assert containers
    for container in containers:
        places[f"docker inspect {container.name}"] = json.dumps(container.attrs)
        places[f"docker logs {container.name}"] = container.logs().decode(errors="replace")
        if container.labels.get("io.temps.role") == "primary":
            places["pgss_query_texts.stat"] = _exec(container, "cat", PGSS_TEXTS)
    return sorted(
        f"{place} holds a password"
        for place, text in places.items()
        if any(p in text for p in passwords)
    )


@pytest.fixture(scope="module")
async def tenants(
    api: httpx.AsyncClient, database_url: str, data_dir: Path
) -> dict[str, dict[str, Any]]:
    """Per version: one service, DDL statements logged by the server (so a role statement
    carrying a password would land in the log), and projects a and b linked to it."""
    created = {}
    for major in VERSIONS:
        response = await api.post(
            "/api/external-services",
            json={
                "name": f"{P}ten{major}",
                "service_type": "postgres",
                "version": major,
                "parameters": {"replicas": 0, "memory_mb": 256},
            },
        )
        assert response.status_code == 202, response.text
        created[major] = response.json()["id"]
    tenants: dict[str, dict[str, Any]] = {}
    for major, sid in created.items():
        service = await wait_status(api, sid, "operational", timeout_s=180)
        conn = await _admin(api, sid)
        try:
            await conn.execute("ALTER SYSTEM SET log_statement = 'ddl'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        projects = {k: await _project(api, f"{P}ten{major}{k}") for k in ("a", "b")}
        for project_id in projects.values():
            await _link(api, sid, project_id)
        tenants[major] = {
            "service": service,
            "projects": projects,
            "variables": {},
            "passwords": set(),
        }
        await _collect_passwords(api, database_url, data_dir, tenants[major])
    return tenants


@pytest.mark.parametrize("major", VERSIONS)
async def test_link_users_reach_only_their_database_and_plant_no_trojan(
    api: httpx.AsyncClient, tenants: dict[str, dict[str, Any]], major: str
) -> None:
    tenant = tenants[major]
    admin_db = (await credentials(api, tenant["service"]["id"]))["database"]
    # Issue 16's attack: A's user opens template1 to plant `public.lower(varchar)` (copied into
    # every database created afterwards) — it cannot even connect.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _as_link(tenant, "a", "template1")
    for database in ("postgres", admin_db, tenant["variables"]["b"]["POSTGRES_DB"]):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _as_link(tenant, "a", database)
    with pytest.raises(asyncpg.PostgresError, match="not currently accepting connections"):
        await _as_link(tenant, "a", "template0")
    # In its own database A's user owns `public` and creates there.
    conn = await _as_link(tenant, "a", tenant["variables"]["a"]["POSTGRES_DB"])
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS public.notes (body text)")
    finally:
        await conn.close()
    # In every database, no role but a schema's owner may create in it (PUBLIC neither).
    conn = await _admin(api, tenant["service"]["id"])
    try:
        databases = await conn.fetch("SELECT datname FROM pg_database WHERE datallowconn")
    finally:
        await conn.close()
    assert {"template1", "postgres", admin_db} <= {r["datname"] for r in databases}
    for row in databases:
        conn = await _admin(api, tenant["service"]["id"], row["datname"])
        try:
            assert [tuple(r) for r in await conn.fetch(FOREIGN_CREATORS)] == [], row["datname"]
        finally:
            await conn.close()


@pytest.mark.parametrize("major", VERSIONS)
async def test_no_password_in_statistics_logs_or_inspect_after_create_link_and_rotate(
    api: httpx.AsyncClient,
    docker_client: docker.DockerClient,
    database_url: str,
    data_dir: Path,
    tenants: dict[str, dict[str, Any]],
    major: str,
) -> None:
    tenant = tenants[major]
    sid = tenant["service"]["id"]
    if major == VERSIONS[-1]:  # one version with a read replica: it holds replicator secrets
        await _converge(
            api, sid, await api.patch(sid_path(sid), json={"parameters": {"replicas": 1}})
        )
        roles = {c.labels.get("io.temps.role") for c in await _containers(docker_client, sid)}
        assert roles == {"primary", "replica-1", "pooler"}  # every one searched for secrets
    assert await _leaks(api, docker_client, tenant) == []  # after create and link
    response = await api.post(f"{sid_path(sid)}/rotate-credentials")
    await _converge(api, sid, response)
    before = set(tenant["passwords"])
    await _collect_passwords(api, database_url, data_dir, tenant)
    assert tenant["passwords"] - before  # new ones, every one searched for
    assert await _leaks(api, docker_client, tenant) == []
    # The roles took the passwords (sent as verifiers): the plaintext logs in.
    conn = await _as_link(tenant, "a", tenant["variables"]["a"]["POSTGRES_DB"])
    await conn.close()
    conn = await _admin(api, sid)
    try:
        verifiers = await conn.fetch("SELECT rolname, rolpassword FROM pg_authid WHERE rolcanlogin")
    finally:
        await conn.close()
    assert all(r["rolpassword"].startswith("SCRAM-SHA-256$4096:") for r in verifiers), verifiers
    if major == VERSIONS[-1]:
        await _converge(
            api, sid, await api.patch(sid_path(sid), json={"parameters": {"replicas": 0}})
        )
        roles = {c.labels.get("io.temps.role") for c in await _containers(docker_client, sid)}
        assert roles == {"primary", "pooler"}


def sid_path(service_id: str) -> str:
    return f"/api/external-services/{service_id}"


async def _containers(docker_client: docker.DockerClient, service_id: str) -> list[Any]:
    return docker_client.containers.list(
        all=True, filters={"label": f"io.temps.service-id={service_id}"}
    )


async def _converge(api: httpx.AsyncClient, service_id: str, response: httpx.Response) -> None:
    """Wait until the provisioner has applied the request `response` answered."""
    assert response.status_code == 202, response.text
    generation = response.json()["generation"]

    async def converged() -> bool:
        body = (await api.get(sid_path(service_id))).json()
        assert body["status"] != "failed", body["status_reason"]
        return bool(body["observed_generation"] >= generation and body["status"] == "operational")

    await eventually(converged, 120, f"generation {generation} to be applied")


async def _answers(api: httpx.AsyncClient, service_id: str) -> bool:
    try:
        conn = await _admin(api, service_id)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _recreate_with_password_in_env(
    docker_client: docker.DockerClient, name: str, password: str
) -> None:
    """What an earlier release made: the same container, the admin password in its env."""
    old = docker_client.containers.get(name)
    attrs = old.attrs
    config, host = attrs["Config"], attrs["HostConfig"]
    stream, _ = old.get_archive("/etc/temps")
    files = b"".join(stream)
    old.stop(timeout=10)
    old.remove()
    env = [e for e in config["Env"] if not e.startswith("POSTGRES_PASSWORD_FILE=")]
    new = docker_client.containers.create(
        config["Image"],
        command=config["Cmd"],
        name=name,
        hostname=name,
        environment=[*env, f"POSTGRES_PASSWORD={password}"],
        labels=config["Labels"],
        volumes={m["Name"]: {"bind": m["Destination"], "mode": "rw"} for m in attrs["Mounts"]},
        ports={
            key: (b[0]["HostIp"], int(b[0]["HostPort"])) for key, b in host["PortBindings"].items()
        },
        network=next(iter(attrs["NetworkSettings"]["Networks"])),
    )
    with tarfile.open(fileobj=io.BytesIO(files)) as archive:
        assert archive.getnames()  # the TLS files (and the secrets) of the old container
    new.put_archive("/etc", files)
    new.start()


@pytest.mark.parametrize("major", VERSIONS)
async def test_an_old_service_is_repaired_by_the_next_reconcile(
    api: httpx.AsyncClient,
    docker_client: docker.DockerClient,
    tenants: dict[str, dict[str, Any]],
    major: str,
) -> None:
    tenant = tenants[major]
    sid, name = tenant["service"]["id"], f"temps-postgres-{P}ten{major}"
    creds = await credentials(api, sid)
    a_db, a_user = (
        tenant["variables"]["a"]["POSTGRES_DB"],
        tenant["variables"]["a"]["POSTGRES_USER"],
    )
    a_password = tenant["variables"]["a"]["POSTGRES_PASSWORD"]
    # What a service made before issue 16 looks like (13's defaults everywhere).
    conn = await _admin(api, sid)
    try:
        await conn.execute("GRANT CONNECT, TEMPORARY ON DATABASE template1, postgres TO PUBLIC")
        await conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        await conn.execute("SET log_statement = 'none'")
        await conn.execute(f"ALTER ROLE \"{a_user}\" PASSWORD '{a_password}'")  # old style
        assert a_password in "".join(
            r["query"] for r in await conn.fetch("SELECT query FROM pg_stat_statements")
        )
    finally:
        await conn.close()
    for database in ("template1", a_db):
        conn = await _admin(api, sid, database)
        try:
            await conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
            await conn.execute(f'ALTER SCHEMA public OWNER TO "{creds["username"]}"')
        finally:
            await conn.close()
    await (await _as_link(tenant, "a", "template1")).close()  # the door is open again
    _recreate_with_password_in_env(docker_client, name, creds["password"])
    assert "POSTGRES_PASSWORD" in docker_client.containers.get(name).attrs["Config"]["Env"][-1]
    await eventually(lambda: _answers(api, sid), 60, "the hand-made container to answer")
    assert set(await _leaks(api, docker_client, tenant)) >= {
        "pg_stat_statements holds a password",
        "pgss_query_texts.stat holds a password",
        f"docker inspect {name} holds a password",
    }  # the simulated old state leaks

    # The next reconcile (a Stop → Start) repairs it all.
    assert (await api.post(f"/api/external-services/{sid}/stop")).status_code == 202
    await wait_status(api, sid, "stopped")
    assert (await api.post(f"/api/external-services/{sid}/start")).status_code == 202
    generation = (await api.get(f"/api/external-services/{sid}")).json()["generation"]

    async def converged() -> bool:
        body = (await api.get(f"/api/external-services/{sid}")).json()
        assert body["status"] != "failed", body["status_reason"]
        return bool(body["observed_generation"] >= generation and body["status"] == "operational")

    await eventually(converged, 120, "the Start reconcile")
    assert await _leaks(api, docker_client, tenant) == []
    env = docker_client.containers.get(name).attrs["Config"]["Env"]
    assert not any(e.startswith("POSTGRES_PASSWORD=") for e in env)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _as_link(tenant, "a", "template1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _as_link(tenant, "a", "postgres")
    for database in ("template1", a_db, creds["database"]):
        conn = await _admin(api, sid, database)
        try:
            assert [tuple(r) for r in await conn.fetch(FOREIGN_CREATORS)] == [], database
        finally:
            await conn.close()
    # A's user owns its `public` again and creates there; its data survived the recreate.
    conn = await _as_link(tenant, "a", a_db)
    try:
        await conn.execute("CREATE TABLE after_repair (v int)")
        assert await conn.fetchval("SELECT count(*) FROM notes") == 0
    finally:
        await conn.close()
