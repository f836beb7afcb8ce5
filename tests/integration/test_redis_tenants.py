"""Tenants on one Redis (issue 16) on real Redis 6, 7 and 8, and no secret in the metadata or the
process list of Redis and S3 (SeaweedFS) containers.

Lean on purpose (2 cores): one Redis per major version and one S3 service, reused by every test
of the module. Per version: project `a` links without a prefix; `b` tries the same (refused,
409 naming `a`'s link), then links with the prefix `b`; `c` shares `a`'s keyspace on purpose
(`shared_keyspace`); `d` asks for `b`'s prefix (refused, naming `b`'s link).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import docker
import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError
from temps_shared.crypto import KeyRing
from temps_shared.store.services import get_service

from tests.support import RUN_PREFIX as P
from tests.support import credentials, eventually, revealed_variables, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")

VERSIONS = ("6", "7", "8")
LIBRARY = "#!lua name={name}\nredis.register_function('hello', function() return '{says}' end)"


async def _create(api: httpx.AsyncClient, name: str, service_type: str, **extra: Any) -> str:
    response = await api.post(
        "/api/external-services", json={"name": name, "service_type": service_type, **extra}
    )
    assert response.status_code == 202, response.text
    service_id: str = response.json()["id"]
    return service_id


async def _project(api: httpx.AsyncClient, name: str) -> str:
    response = await api.post("/api/projects", json={"name": name})
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


async def _post_link(
    api: httpx.AsyncClient, service_id: str, project_id: str, **extra: Any
) -> httpx.Response:
    return await api.post(
        f"/api/external-services/{service_id}/projects",
        json={"project_id": project_id, "environment": "production", **extra},
    )


async def _wait_active(api: httpx.AsyncClient, service_id: str, link_ids: set[str]) -> None:
    async def active() -> bool:
        links = (await api.get(f"/api/external-services/{service_id}/projects")).json()
        return link_ids <= {x["id"] for x in links if x["status"] == "active"}

    await eventually(active, 90, f"links {sorted(link_ids)} to be active")


class Tenants:
    """One Redis service and its projects' links, as the tests see them."""

    def __init__(self, version: str, service: dict[str, Any]) -> None:
        self.version = version
        self.service = service
        self.id: str = service["id"]
        self.projects: dict[str, str] = {}  # a, b, c, d → project id
        self.links: dict[str, dict[str, Any]] = {}  # a, b, c → the 202 answer
        self.answers: dict[str, httpx.Response] = {}  # a, b (prefix b), c (shared) → answer
        self.refused: dict[str, httpx.Response] = {}  # b (no prefix), d (b's prefix)
        self.variables: dict[str, dict[str, str]] = {}
        self.admin: dict[str, Any] = {}

    def client(self, who: str) -> aioredis.Redis:
        """Project `who`'s link user on the loopback port ("admin": the service's admin)."""
        if who == "admin":
            username, password = self.admin["username"], self.admin["password"]
        else:
            username = self.variables[who]["REDIS_USERNAME"]
            password = self.variables[who]["REDIS_PASSWORD"]
        return aioredis.Redis(
            host="127.0.0.1",
            port=self.service["connection_info"]["local_port"],
            username=username,
            password=password,
            decode_responses=True,
            socket_timeout=30,
        )


async def _tenants(api: httpx.AsyncClient, version: str, service_id: str) -> Tenants:
    tenants = Tenants(version, await wait_status(api, service_id, "operational", timeout_s=120))
    for name in "abcd":
        tenants.projects[name] = await _project(api, f"{P}ten{version}{name}")

    async def link(name: str, **extra: Any) -> None:
        response = await _post_link(api, service_id, tenants.projects[name], **extra)
        tenants.answers[name] = response
        if response.status_code == 202:
            tenants.links[name] = response.json()

    await link("a")
    tenants.refused["b"] = await _post_link(api, service_id, tenants.projects["b"])
    await link("b", key_prefix="b")
    await link("c", shared_keyspace=True)
    tenants.refused["d"] = await _post_link(api, service_id, tenants.projects["d"], key_prefix="b")
    await _wait_active(api, service_id, {link["id"] for link in tenants.links.values()})
    for name in "abc":
        tenants.variables[name] = await revealed_variables(api, tenants.projects[name])
    tenants.admin = await credentials(api, service_id)
    return tenants


@pytest.fixture(scope="module")
async def redis_tenants(api: httpx.AsyncClient) -> dict[str, Tenants]:
    """version → its service with projects a, b, c linked (d refused)."""
    ids = [await _create(api, f"{P}ten{v}", "redis", version=v) for v in VERSIONS]
    found = await asyncio.gather(*(_tenants(api, v, i) for v, i in zip(VERSIONS, ids, strict=True)))
    return dict(zip(VERSIONS, found, strict=True))


async def test_a_second_project_without_prefix_is_refused_naming_the_first(
    api: httpx.AsyncClient, redis_tenants: dict[str, Tenants]
) -> None:
    for version, t in redis_tenants.items():
        a_link = t.links["a"]
        refused = t.refused["b"]
        # A prefix, or sharing on purpose, is accepted.
        for name in "bc":
            assert t.answers[name].status_code == 202, (version, name, t.answers[name].text)
        assert refused.status_code == 409, (version, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "keyspace_shared"
        for named in (a_link["id"], f"{P}ten{version}a", "production", "shared_keyspace"):
            assert named in error["message"], (version, named, error["message"])
        assert error["details"] == [
            {
                "link_id": a_link["id"],
                "project_id": t.projects["a"],
                "project": f"{P}ten{version}a",
                "environment": "production",
                "key_prefix": None,
            }
        ]
        # The same prefix as another project's link is the same keyspace: refused, naming it.
        same_prefix = t.refused["d"]
        assert same_prefix.status_code == 409, (version, same_prefix.text)
        assert [d["link_id"] for d in same_prefix.json()["error"]["details"]] == [
            t.links["b"]["id"]
        ]
        # The choice is stored and shown.
        links = {
            x["project_id"]: x
            for x in (await api.get(f"/api/external-services/{t.id}/projects")).json()
        }
        assert set(links) == {t.projects[n] for n in "abc"}
        assert links[t.projects["b"]]["key_prefix"] == "b"
        assert links[t.projects["b"]]["shared_keyspace"] is False
        assert links[t.projects["c"]]["shared_keyspace"] is True
        # Nothing was stored for the refused requests: d has no variables.
        assert (
            await api.get(f"/api/projects/{t.projects['d']}/environments/production/variables")
        ).json()["variables"] == {}
        # Sharing is what `c` asked for: it sees `a`'s keys; `b` does not.
        async with t.client("a") as a, t.client("c") as c, t.client("b") as b:
            await a.set("orders:1", "a's")
            assert await c.get("orders:1") == "a's"
            with pytest.raises(NoPermissionError):
                await b.get("orders:1")


async def _run(client: aioredis.Redis, *command: Any) -> Any:
    return await client.execute_command(*command)  # type: ignore[no-untyped-call]


async def _refused(client: aioredis.Redis, *command: Any) -> None:
    with pytest.raises(NoPermissionError):
        await _run(client, *command)


async def test_link_users_cannot_touch_shared_state_or_list_the_keyspace(
    redis_tenants: dict[str, Tenants],
) -> None:
    for version, t in redis_tenants.items():
        major = int(version)
        async with t.client("admin") as admin, t.client("a") as a, t.client("b") as b:
            if major >= 7:
                # The attack: b's library replaced or dropped by a, so b's FCALL ran a's code.
                await _run(
                    admin,
                    "FUNCTION",
                    "LOAD",
                    "REPLACE",
                    LIBRARY.format(name="lib", says="original"),
                )
                for user in (a, b):
                    await _refused(
                        user,
                        "FUNCTION",
                        "LOAD",
                        "REPLACE",
                        LIBRARY.format(name="lib", says="trojan"),
                    )
                    await _refused(user, "FUNCTION", "FLUSH")
                    await _refused(user, "FUNCTION", "DELETE", "lib")
                assert await _run(b, "FCALL", "hello", "0") == "original"
            else:  # 6.0 has no FUNCTION: asking is an unknown command, not a permission
                with pytest.raises(ResponseError, match="unknown command"):
                    await _run(admin, "FUNCTION", "FLUSH")
            await b.set("b:1", "mine")
            await admin.set("elsewhere", "not b's")
            for user in (a, b):
                for command in (
                    ("SCRIPT", "FLUSH"),
                    ("SCRIPT", "KILL"),
                    ("RANDOMKEY",),
                    ("DBSIZE",),
                    ("KEYS", "*"),
                    ("SWAPDB", "0", "1"),
                    ("MIGRATE", "127.0.0.1", "1", "b:1", "0", "100"),
                    ("INFO", "keyspace"),
                    ("FLUSHALL",),
                ):
                    await _refused(user, *command)
            # SCAN is keyless and unfiltered by key patterns: refused to a prefixed user; a
            # user without prefix sees the whole keyspace anyway.
            await _refused(b, "SCAN", "0")
            cursor, keys = await a.scan(0, count=1000)
            assert "elsewhere" in keys or cursor != 0
            # Inside a script too.
            with pytest.raises(ResponseError):
                await b.eval("return redis.call('scan', '0')", 0)

            # b's own keys work: plain commands, scripts on declared and undeclared own keys,
            # the script cache (redis-py's Script and Lock load with SCRIPT LOAD).
            assert await b.get("b:1") == "mine"
            assert await b.incr("b:counter") == 1
            assert await b.eval("return redis.call('get', KEYS[1])", 1, "b:1") == "mine"
            assert await b.eval("return redis.call('get', 'b:1')", 0) == "mine"
            script = b.register_script("return redis.call('incr', KEYS[1])")
            assert await script(keys=["b:counter"]) == 2
            async with b.lock("b:lock", timeout=5):
                assert await b.exists("b:lock") == 1
            # ... and nothing beyond its prefix, even from a script.
            await _refused(b, "GET", "elsewhere")
            with pytest.raises(ResponseError):
                await b.eval("return redis.call('get', 'elsewhere')", 0)

            # Pub/Sub: 7+ limits b to channels under its prefix; 6.0 has no channel ACLs, so a
            # prefixed user gets none.
            if major >= 7:
                assert await b.publish("b:news", "hi") == 0
                await _refused(b, "PUBLISH", "news", "hi")
                await _refused(b, "PUBSUB", "CHANNELS")
            else:
                await _refused(b, "PUBLISH", "b:news", "hi")
            assert await a.publish("news", "hi") == 0  # a has every channel


async def test_reconcile_takes_old_rights_away(
    api: httpx.AsyncClient, redis_tenants: dict[str, Tenants], docker_client: docker.DockerClient
) -> None:
    """A link user made by an older platform (rights it no longer gets) is repaired, in memory
    and in the ACL file, by the next reconcile of its service."""
    old_rights = ["+scan", "+randomkey", "+dbsize", "+script", "+keys", "~*"]
    started: dict[str, int] = {}
    for version, t in redis_tenants.items():
        user = t.variables["b"]["REDIS_USERNAME"]
        extra = [*old_rights, "+function"] if int(version) >= 7 else old_rights
        async with t.client("admin") as admin:
            await _run(admin, "ACL", "SETUSER", user, *extra)
            await admin.acl_save()
        async with t.client("b") as b:
            assert await b.dbsize() >= 1  # the old rights work, before the repair
            await b.get("elsewhere")
        response = await api.post(f"/api/external-services/{t.id}/start")
        assert response.status_code == 202, response.text
        started[version] = response.json()["generation"]

    for version, t in redis_tenants.items():

        async def converged(t: Tenants = t, generation: int = started[version]) -> bool:
            body = (await api.get(f"/api/external-services/{t.id}")).json()
            return bool(
                body["observed_generation"] >= generation and body["status"] == "operational"
            )

        await eventually(converged, 90, f"the reconcile of redis {version}")
        user = t.variables["b"]["REDIS_USERNAME"]
        async with t.client("b") as b:
            for command in (("SCAN", "0"), ("RANDOMKEY",), ("DBSIZE",), ("SCRIPT", "FLUSH")):
                await _refused(b, *command)
            await _refused(b, "GET", "elsewhere")
            if int(version) >= 7:
                await _refused(b, "FUNCTION", "FLUSH")
            assert await b.get("b:1") == "mine"
        # Saved: the file a restart loads holds the repaired user too.
        container = docker_client.containers.get(f"temps-redis-{P}ten{version}")
        saved = container.exec_run(["cat", "/data/temps/users.acl"])
        assert saved.exit_code == 0
        assert isinstance(saved.output, bytes)
        saved_text = saved.output.decode()
        line = next(x for x in saved_text.splitlines() if f" {user} " in x)
        assert "-scan" in line, line
        assert "~*" not in line, line


async def _stored_secrets(database_url: str, data_dir: Path, service_id: str) -> list[str]:
    """Every secret stored for the service (monitor and backup passwords are never served)."""
    conn = await asyncpg.connect(database_url)
    try:
        record = await get_service(conn, UUID(service_id))
    finally:
        await conn.close()
    assert record is not None
    credentials = record.credentials(KeyRing.from_data_dir(data_dir))
    return [v for k, v in credentials.items() if "password" in k or k == "secret_key"]


def _processes(container: Any) -> bytes:
    """Every process's command line and environment inside the container (NUL-separated)."""
    result = container.exec_run(
        ["sh", "-c", "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ; echo; done"]
    )
    assert result.exit_code == 0, result.output
    output: bytes = result.output
    assert b"redis-server" in output or b"weed" in output  # really saw the server
    return output


async def test_no_secret_in_docker_inspect_or_the_process_list(
    api: httpx.AsyncClient,
    redis_tenants: dict[str, Tenants],
    docker_client: docker.DockerClient,
    database_url: str,
    data_dir: Path,
) -> None:
    s3_id = await _create(api, f"{P}ten-s3", "s3")
    await wait_status(api, s3_id, "operational", timeout_s=120)
    project = await _project(api, f"{P}ten-s3-app")
    response = await _post_link(api, s3_id, project)
    assert response.status_code == 202, response.text
    await _wait_active(api, s3_id, {response.json()["id"]})
    s3_link = await revealed_variables(api, project)
    s3_admin = await credentials(api, s3_id)

    checked: dict[str, list[str]] = {
        f"temps-s3-{P}ten-s3": [
            s3_admin["secret_key"],
            s3_link["S3_SECRET_KEY"],
            *await _stored_secrets(database_url, data_dir, s3_id),
        ]
    }
    for version, t in redis_tenants.items():
        checked[f"temps-redis-{P}ten{version}"] = [
            t.admin["password"],
            *(t.variables[n]["REDIS_PASSWORD"] for n in "abc"),
            *await _stored_secrets(database_url, data_dir, t.id),
        ]
    for name, secrets in checked.items():
        assert all(len(s) >= 16 for s in secrets), name
        container = docker_client.containers.get(name)
        config = container.attrs["Config"]
        inspected = json.dumps(container.attrs)  # Env, Cmd, Entrypoint, Args, Labels, Mounts…
        for part in (config["Env"] or [], config["Cmd"] or [], container.attrs["Args"]):
            assert part is not None
        assert not [m for m in container.attrs["Mounts"] if m["Type"] == "bind"], name
        processes = _processes(container)
        for n, secret in enumerate(secrets):  # booleans: a failure must not print the secret
            in_inspect, in_processes = secret in inspected, secret.encode() in processes
            assert not in_inspect, f"secret #{n} in `docker inspect {name}`"
            assert not in_processes, f"secret #{n} in a process of {name}"
    # The identities document of a link reached the container as a file, and is gone.
    listing = docker_client.containers.get(f"temps-s3-{P}ten-s3").exec_run(["ls", "/etc/temps/s3"])
    assert b"import-" not in listing.output
