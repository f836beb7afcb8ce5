"""Projects, links and injected variables on real PostgreSQL, Redis and S3 services: a user of
its own per project + environment, least privilege, reveal rules, rotation, unlink."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError

from tests.support import RUN_PREFIX as P
from tests.support import eventually, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _service(
    api: httpx.AsyncClient, name: str, service_type: str, **extra: Any
) -> dict[str, Any]:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": service_type, **extra}
    )
    assert response.status_code == 202, response.text
    return await wait_status(api, response.json()["id"], "operational", timeout_s=120)


async def _project(api: httpx.AsyncClient, name: str) -> str:
    response = await api.post("/api/projects", json={"name": name})
    assert response.status_code == 201, response.text
    assert response.json()["environments"] == ["production"]
    project_id: str = response.json()["id"]
    return project_id


async def _link(api: httpx.AsyncClient, service_id: str, project_id: str, **extra: Any) -> None:
    response = await api.post(
        f"/api/external-services/{service_id}/projects",
        json={"project_id": project_id, "environment": "production", **extra},
    )
    assert response.status_code == 202, response.text

    async def active() -> bool:
        links = (await api.get(f"/api/external-services/{service_id}/projects")).json()
        return any(x["project_id"] == project_id and x["status"] == "active" for x in links)

    await eventually(active, 60, "the link to be active")


async def _variables(api: httpx.AsyncClient, project_id: str) -> dict[str, str]:
    response = await api.get(
        f"/api/projects/{project_id}/environments/production/variables", params={"reveal": "true"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    variables: dict[str, str] = response.json()["variables"]
    return variables


def _loopback(url: str, service: dict[str, Any]) -> str:
    """What `temps run` does: the private host:port becomes the loopback publication (the
    primary's, and the pooler's: `DATABASE_URL` is the pooled endpoint)."""
    info = service["connection_info"]
    for endpoint in (info, info.get("pooler") or info):
        private = f"@{endpoint['host']}:{endpoint['port']}/"
        url = url.replace(private, f"@127.0.0.1:{endpoint['local_port']}/")
    return url


@pytest.fixture(scope="module")
async def projects(api: httpx.AsyncClient) -> dict[str, str]:
    return {name: await _project(api, f"{P}{name}") for name in ("a", "b", "c")}


@pytest.fixture(scope="module")
async def pg(api: httpx.AsyncClient, projects: dict[str, str]) -> dict[str, Any]:
    service = await _service(
        api, f"{P}lnk-pg", "postgres", version="15", parameters={"replicas": 0, "memory_mb": 256}
    )
    for name in ("a", "b"):
        await _link(api, service["id"], projects[name])
    return service


async def test_postgres_links_are_least_privileged(
    api: httpx.AsyncClient, projects: dict[str, str], pg: dict[str, Any]
) -> None:
    a, b = await _variables(api, projects["a"]), await _variables(api, projects["b"])
    assert a["DATABASE_URL"].endswith("?sslmode=require")
    assert a["DATABASE_URL"] == a["POSTGRES_URL"]
    assert a["POSTGRES_HOST"] == pg["connection_info"]["host"]
    assert a["TEMPS_CA_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    context = ssl.create_default_context(cadata=a["TEMPS_CA_CERT"])
    conn = await asyncpg.connect(_loopback(a["DATABASE_URL"], pg).split("?")[0], ssl=context)
    try:
        await conn.execute("CREATE TABLE notes (body text)")
        await conn.execute("INSERT INTO notes VALUES ('mine')")
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE ROLE intruder")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE DATABASE other")
    finally:
        await conn.close()
    # A's user cannot reach B's database (nor the service's own).
    for database in (b["POSTGRES_DB"], "postgres"):
        url = _loopback(a["DATABASE_URL"], pg).split("?")[0].rsplit("/", 1)[0] + f"/{database}"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(url, ssl=context)


async def test_reveal_needs_secrets_read_and_is_audited(
    api: httpx.AsyncClient, projects: dict[str, str], pg: dict[str, Any], platform: Any
) -> None:
    path = f"/api/projects/{projects['a']}/environments/production/variables"
    masked = (await api.get(path)).json()
    assert masked["variables"]["POSTGRES_PASSWORD"] == "********"
    assert "********@" in masked["variables"]["DATABASE_URL"]
    assert masked["links"][0]["status"] == "active"
    token = (
        await api.post(
            "/api/tokens", json={"name": f"{P}reader", "permissions": ["external_services:read"]}
        )
    ).json()["token"]
    async with platform.client(token) as reader:
        assert (await reader.get(path)).status_code == 200
        assert (await reader.get(path, params={"reveal": "true"})).status_code == 403
    await _variables(api, projects["a"])
    audit = (await api.get("/api/audit-log", params={"service_id": projects["a"]})).json()
    reveal = [row for row in audit if row["action"] == "project.variables_revealed"]
    assert reveal
    assert reveal[0]["actor"].startswith("token:admin:")
    assert reveal[0]["at"]


async def test_bad_link_requests(
    api: httpx.AsyncClient, projects: dict[str, str], pg: dict[str, Any]
) -> None:
    sid = pg["id"]
    unknown = "00000000-0000-0000-0000-000000000000"
    response = await api.post(
        f"/api/external-services/{sid}/projects",
        json={"project_id": unknown, "environment": "production"},
    )
    assert response.status_code == 404
    response = await api.post(
        f"/api/external-services/{sid}/projects",
        json={"project_id": projects["a"], "environment": "staging"},
    )
    assert response.status_code == 404
    response = await api.post(
        f"/api/external-services/{sid}/projects",
        json={"project_id": projects["a"], "environment": "production"},
    )
    assert response.status_code == 409
    response = await api.delete(f"/api/external-services/{sid}/projects/{projects['c']}")
    assert response.status_code == 404
    assert (await api.delete(f"/api/external-services/{sid}")).status_code == 409
    assert (
        await api.get(f"/api/projects/{unknown}/environments/production/variables")
    ).status_code == 404


async def test_rotation_replaces_every_secret_and_keeps_open_connections(
    api: httpx.AsyncClient, projects: dict[str, str], pg: dict[str, Any]
) -> None:
    sid = pg["id"]
    before = await _variables(api, projects["a"])
    admin_before = (await api.get(f"/api/external-services/{sid}/credentials")).json()
    context = ssl.create_default_context(cadata=before["TEMPS_CA_CERT"])
    link_url = _loopback(before["DATABASE_URL"], pg).split("?")[0]
    open_conn = await asyncpg.connect(link_url, ssl=context)
    rotated: list[dict[str, Any]] = []

    async def follow() -> None:
        async with api.stream(
            "GET", "/api/events", params={"service_id": sid}, timeout=None
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and '"CredentialsRotated"' in line:
                    rotated.append(json.loads(line.removeprefix("data: ")))
                    return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    assert (await api.post(f"/api/external-services/{sid}/rotate-credentials")).status_code == 202
    await asyncio.wait_for(follower, 60)
    assert "password" not in json.dumps(rotated[0])

    after = await _variables(api, projects["a"])
    assert after["POSTGRES_PASSWORD"] != before["POSTGRES_PASSWORD"]
    new_conn = await asyncpg.connect(
        _loopback(after["DATABASE_URL"], pg).split("?")[0], ssl=context
    )
    assert await new_conn.fetchval("SELECT body FROM notes") == "mine"
    await new_conn.close()
    assert await open_conn.fetchval("SELECT count(*) FROM notes") == 1  # still open
    await open_conn.close()
    # The old password is refused by PostgreSQL (direct) and by the pooler (which answers a
    # failed SCRAM exchange with its own protocol error).
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            _loopback(before["DATABASE_DIRECT_URL"], pg).split("?")[0], ssl=context
        )
    with pytest.raises(asyncpg.PostgresError):
        await asyncpg.connect(link_url, ssl=context)
    admin_after = (await api.get(f"/api/external-services/{sid}/credentials")).json()
    assert admin_after["password"] != admin_before["password"]
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(admin_before["local_connection_url"], ssl="require")
    conn = await asyncpg.connect(admin_after["local_connection_url"], ssl="require")
    await conn.close()


async def test_unlink_revokes_the_user_and_keeps_the_data(
    api: httpx.AsyncClient, projects: dict[str, str], pg: dict[str, Any]
) -> None:
    sid = pg["id"]
    variables = await _variables(api, projects["b"])
    url = _loopback(variables["DATABASE_DIRECT_URL"], pg).split("?")[0]
    pooled = _loopback(variables["DATABASE_URL"], pg).split("?")[0]
    assert (
        await api.delete(f"/api/external-services/{sid}/projects/{projects['b']}")
    ).status_code == 202

    async def refused() -> bool:
        try:
            conn = await asyncpg.connect(url, ssl="require")
        except asyncpg.InvalidAuthorizationSpecificationError:
            return True
        await conn.close()
        return False

    await eventually(refused, 60, "the unlinked user to be refused")
    with pytest.raises(asyncpg.PostgresError):  # the pooler finds no such login either
        await asyncpg.connect(pooled, ssl="require")
    admin = (await api.get(f"/api/external-services/{sid}/credentials")).json()
    conn = await asyncpg.connect(admin["local_connection_url"], ssl="require")
    assert await conn.fetchval(
        "SELECT 1 FROM pg_database WHERE datname = $1", variables["POSTGRES_DB"]
    )
    await conn.close()
    assert (
        await api.get(f"/api/projects/{projects['b']}/environments/production/variables")
    ).json()["variables"] == {}


async def test_redis_links(api: httpx.AsyncClient, projects: dict[str, str]) -> None:
    service = await _service(api, f"{P}lnk-rd", "redis")
    await _link(api, service["id"], projects["a"])
    await _link(api, service["id"], projects["c"], key_prefix="a")
    local = service["connection_info"]["local_port"]

    def client(variables: dict[str, str]) -> aioredis.Redis:
        return aioredis.Redis(
            host="127.0.0.1",
            port=local,
            username=variables["REDIS_USERNAME"],
            password=variables["REDIS_PASSWORD"],
            decode_responses=True,
        )

    a = await _variables(api, projects["a"])
    assert a["REDIS_URL"].startswith(f"redis://{a['REDIS_USERNAME']}:")
    app = client(a)
    # The spec's examples, as written.
    await app.set("session:123", json.dumps({"user": 1}), ex=3600)
    assert json.loads(await app.get("session:123")) == {"user": 1}
    assert await app.incr("rate:1.2.3.4") == 1
    await app.expire("rate:1.2.3.4", 60)
    subscriber = client(a)
    pubsub = subscriber.pubsub()
    await pubsub.subscribe("notifications")
    await app.publish("notifications", json.dumps({"hello": "world"}))

    async def received() -> dict[str, Any] | None:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        return message

    message = await eventually(received, 10, "the published message")
    assert json.loads(message["data"]) == {"hello": "world"}
    for forbidden in (("FLUSHALL",), ("CONFIG", "SET", "maxclients", "10")):
        with pytest.raises(NoPermissionError):
            await app.execute_command(*forbidden)
    await pubsub.aclose()
    await subscriber.aclose()
    await app.aclose()

    c = await _variables(api, projects["c"])
    assert c["REDIS_KEY_PREFIX"] == "a"
    prefixed = client(c)
    await prefixed.set("a:1", "ok")
    with pytest.raises(NoPermissionError):
        await prefixed.set("b:1", "no")
    await prefixed.aclose()

    # Rotation: the old link password stops working, the new variables work, keys stay.
    await _rotate(api, service["id"])
    renewed = await _variables(api, projects["a"])
    assert renewed["REDIS_PASSWORD"] != a["REDIS_PASSWORD"]
    with pytest.raises(AuthenticationError):
        await client(a).ping()
    fresh = client(renewed)
    assert await fresh.get("rate:1.2.3.4") == "1"
    await fresh.aclose()


async def _rotate(api: httpx.AsyncClient, service_id: str) -> None:
    """Rotate, and wait until the provisioner has converged to the rotated generation."""
    response = await api.post(f"/api/external-services/{service_id}/rotate-credentials")
    assert response.status_code == 202

    generation = response.json()["generation"]

    async def converged() -> bool:
        body = (await api.get(f"/api/external-services/{service_id}")).json()
        return bool(body["observed_generation"] >= generation and body["status"] == "operational")

    await eventually(converged, 90, "the rotation to be applied")


def _s3(variables: dict[str, str], service: dict[str, Any], ca_file: str) -> Any:
    info = service["connection_info"]
    return boto3.client(
        "s3",
        endpoint_url=f"https://127.0.0.1:{info['local_port']}",
        aws_access_key_id=variables["S3_ACCESS_KEY"],
        aws_secret_access_key=variables["S3_SECRET_KEY"],
        region_name=variables["S3_REGION"],
        verify=ca_file,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


async def test_s3_links_are_scoped_to_their_bucket(
    api: httpx.AsyncClient, projects: dict[str, str], tmp_path: Any
) -> None:
    service = await _service(api, f"{P}lnk-s3", "s3")
    await _link(api, service["id"], projects["a"])
    await _link(api, service["id"], projects["b"])
    a, b = await _variables(api, projects["a"]), await _variables(api, projects["b"])
    assert urlsplit(a["S3_ENDPOINT"]).hostname == service["connection_info"]["host"]
    assert a["AWS_ACCESS_KEY_ID"] == a["S3_ACCESS_KEY"]
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(a["TEMPS_CA_CERT"])
    client = _s3(a, service, str(ca_file))

    def exercise() -> None:
        client.put_object(Bucket=a["S3_BUCKET"], Key="hello.txt", Body=b"hi")
        body = client.get_object(Bucket=a["S3_BUCKET"], Key="hello.txt")["Body"].read()
        assert body == b"hi"
        with pytest.raises(botocore.exceptions.ClientError) as denied:
            client.put_object(Bucket=b["S3_BUCKET"], Key="x", Body=b"x")
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    await asyncio.to_thread(exercise)

    # Rotation: the old key pair is refused, the new one works, the objects stay.
    await _rotate(api, service["id"])
    renewed = await _variables(api, projects["a"])
    assert renewed["S3_ACCESS_KEY"] != a["S3_ACCESS_KEY"]
    old_client, new_client = client, _s3(renewed, service, str(ca_file))

    def after_rotation() -> None:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            old_client.get_object(Bucket=a["S3_BUCKET"], Key="hello.txt")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        body = new_client.get_object(Bucket=a["S3_BUCKET"], Key="hello.txt")["Body"].read()
        assert body == b"hi"

    await asyncio.to_thread(after_rotation)
