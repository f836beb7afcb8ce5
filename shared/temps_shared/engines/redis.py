"""Redis: parameters, container spec, readiness, live settings, connection info, credentials.

What can change on a live service is kept out of the command (a change there recreates the
container): memory, eviction, maxclients and persistence live in a config file the platform owns
on the volume, applied with CONFIG SET and saved with CONFIG REWRITE by `after_ready`, which runs
on every reconcile. The command holds only what never changes for a service (ports, TLS, paths).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote
from uuid import UUID

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from temps_shared.bus.consume import TerminalError
from temps_shared.crypto import generate_password
from temps_shared.engines.base import Endpoints, ServiceNotReadyError
from temps_shared.engines.redis_acl import (
    ADMIN_USER,
    MONITOR_USER,
    apply_users,
    link_user,
    platform_users,
    render_acl_file,
)
from temps_shared.engines.sizes import parse_size_mb
from temps_shared.ids import (
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SERVICE_ID,
    container_name,
    volume_name,
)
from temps_shared.links import LinkGrant, identifier_for
from temps_shared.runtime import ContainerSpec, DockerRuntime
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import ServerCertificate

if TYPE_CHECKING:
    from temps_shared.backups.protocol import EngineBackup

log = logging.getLogger(__name__)

PORT = 6379
TLS_PORT = 6380
PORTS = {"redis": PORT, "redis-tls": TLS_PORT}
# The image's contract (deploy/images/redis/docker-entrypoint.sh): the volume at /data, the
# platform's seeds under /etc/temps, copied where the `redis` user can read them.
DATA_MOUNT = "/data"
CONFIG_FILE = f"{DATA_MOUNT}/temps/redis.conf"
ACL_FILE = f"{DATA_MOUNT}/temps/users.acl"
SEED_DIR = "/etc/temps/redis"
TLS_SRC = "/etc/temps/tls"
TLS_DIR = "/run/temps-tls"
# Redis's own default save points, used when RDB persistence is on.
RDB_SAVE_POINTS = "3600 1 300 100 60 10000"
AOF_REWRITE_WAIT_S = 120.0
CLIENT_TIMEOUT_S = 5.0

EvictionPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]
Persistence = Literal["none", "rdb", "aof", "rdb+aof"]


class RedisParameters(BaseModel):
    """The spec's options; `memory` ("512MB") is accepted as an alias of `memory_mb`."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(
        512, ge=8, le=1048576, description="Redis maxmemory in MB (not a container cap)."
    )
    persistence: Persistence = Field(
        "none", description="none: nothing survives a restart; rdb, aof or both on the volume."
    )
    eviction: EvictionPolicy = Field(
        "allkeys-lru", description="maxmemory-policy: what Redis does when memory is full."
    )
    maxclients: int = Field(10000, ge=1, le=100000, description="Connected clients at most.")

    @model_validator(mode="before")
    @classmethod
    def _spec_aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "memory" in data:
            data = dict(data)
            try:
                data.setdefault("memory_mb", parse_size_mb(data.pop("memory")))
            except ValueError as exc:
                raise ValueError(f"memory (memory_mb): {exc}") from exc
        return data


_PARAMETER_OF = {
    "maxmemory-policy": "eviction",
    "maxmemory": "memory_mb",
    "maxclients": "maxclients",
    "appendonly": "persistence",
    "save": "persistence",
}


def live_settings(parameters: RedisParameters) -> dict[str, str]:
    """The settings applied with CONFIG SET, as CONFIG GET shows them (policy before memory:
    lowering maxmemory then evicts by the new policy)."""
    rdb, aof = parameters.persistence in ("rdb", "rdb+aof"), "aof" in parameters.persistence
    return {
        "maxmemory-policy": parameters.eviction,
        "maxmemory": str(parameters.memory_mb * 1024 * 1024),
        "maxclients": str(parameters.maxclients),
        "appendonly": "yes" if aof else "no",
        "save": RDB_SAVE_POINTS if rdb else "",
    }


def render_config(parameters: RedisParameters) -> str:
    """The first content of the platform's config file (later kept current by CONFIG REWRITE)."""
    lines = ["# Temps: this service's live settings (CONFIG SET + CONFIG REWRITE keep them)."]
    for key, value in live_settings(parameters).items():
        if key != "save":
            lines.append(f"{key} {value}")
        elif not value:
            lines.append('save ""')
        else:  # one pair per line: Redis 6.0 reads no other form
            points = value.split()
            lines += [f"save {s} {c}" for s, c in zip(points[::2], points[1::2], strict=True)]
    return "\n".join(lines) + "\n"


def server_command() -> list[str]:
    """Everything that never changes for a service; the live settings come from the file."""
    return [
        "redis-server",
        CONFIG_FILE,
        "--bind", "0.0.0.0",
        "--port", str(PORT),
        "--tls-port", str(TLS_PORT),
        "--tls-cert-file", f"{TLS_DIR}/server.crt",
        "--tls-key-file", f"{TLS_DIR}/server.key",
        "--tls-ca-cert-file", f"{TLS_DIR}/ca.crt",
        "--tls-auth-clients", "no",
        "--aclfile", ACL_FILE,
        "--dir", DATA_MOUNT,
        # Snapshots for replicas and `redis-cli --rdb` stream from memory, at once, and leave
        # no file behind when persistence is off.
        "--repl-diskless-sync", "yes",
        "--repl-diskless-sync-delay", "0",
        "--rdb-del-sync-files", "yes",
    ]  # fmt: skip


def major_version(version: str) -> int:
    head = version.split(".")[0]
    return int(head) if head.isdigit() else 99


def _client(
    endpoint: tuple[str, int], username: str, password: str, ca_pem: str | None = None
) -> aioredis.Redis:
    """One connection, no retries of its own (callers poll with their own deadlines); with
    `ca_pem`, TLS verified against the installation CA, host name included."""
    host, port = endpoint
    tls: dict[str, Any] = {}
    if ca_pem is not None:
        tls = {"ssl": True, "ssl_ca_data": ca_pem, "ssl_check_hostname": True}
    return aioredis.Redis(
        host=host,
        port=port,
        username=username,
        password=password,
        socket_timeout=CLIENT_TIMEOUT_S,
        socket_connect_timeout=CLIENT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
        decode_responses=True,
        **tls,
    )


def _url(user: str, password: str, host: str, port: int, scheme: str = "redis") -> str:
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/0"


async def _apply_settings(client: aioredis.Redis, parameters: RedisParameters) -> list[str]:
    """CONFIG SET what differs, then make it durable in the platform's file; the names changed."""
    changed: list[str] = []
    for key, value in live_settings(parameters).items():
        current = (await client.config_get(key)).get(key) or ""
        if " ".join(current.split()) == value:
            continue
        try:
            await client.config_set(key, value)
        except ResponseError as exc:
            # e.g. more clients than the container's file limit allows: retrying cannot help,
            # the user must change the parameter.
            raise TerminalError(
                f"parameters.{_PARAMETER_OF[key]}: Redis refused {key} {value!r}: {exc}"
            ) from exc
        changed.append(key)
        if key == "appendonly" and value == "yes":
            await _wait_aof_rewrite(client)
        elif key == "save" and value:
            # Keys written before RDB was switched on reach the disk now, not at the next
            # save point (SCHEDULE: after an AOF rewrite that may be running).
            await client.bgsave(schedule=True)
    if changed:
        await client.config_rewrite()
    return changed


async def _wait_aof_rewrite(client: aioredis.Redis) -> None:
    """Switching AOF on writes the first AOF in the background; until it is written a shutdown
    is refused ("Writing initial AOF, can't exit"), so wait for it (bounded)."""
    deadline = time.monotonic() + AOF_REWRITE_WAIT_S
    while time.monotonic() < deadline:
        info = await client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        await asyncio.sleep(0.05)
    log.warning("the first AOF rewrite is still running after %.0fs", AOF_REWRITE_WAIT_S)


class RedisEngine:
    service_type = "redis"
    ports = PORTS
    # The spec's default where this installation builds it (API.md); else the newest.
    default_version = "7"

    def parameters_model(self) -> type[BaseModel]:
        return RedisParameters

    def generate_credentials(self, name: str) -> dict[str, str]:
        return {
            "username": ADMIN_USER,
            "password": generate_password(),
            "monitor_password": generate_password(),
            "backup_password": generate_password(),
        }

    def container_spec(
        self,
        service: ServiceRecord,
        credentials: dict[str, str],
        local_ports: dict[str, int],
        certificate: ServerCertificate,
        image: str,
    ) -> ContainerSpec:
        parameters = RedisParameters.model_validate(service.parameters)
        users = platform_users(credentials, major_version(service.version))
        return ContainerSpec(
            name=container_name(service.service_type, service.name),
            image=image,
            command=server_command(),
            labels={
                LABEL_MANAGED: "true",
                LABEL_SERVICE_ID: str(service.id),
                LABEL_ROLE: "primary",
            },
            volume=volume_name(service.service_type, service.name),
            mount_path=DATA_MOUNT,
            ports={PORT: local_ports["redis"], TLS_PORT: local_ports["redis-tls"]},
            files={
                f"{TLS_SRC}/server.crt": certificate.cert_pem.encode(),
                f"{TLS_SRC}/server.key": certificate.key_pem.encode(),
                f"{TLS_SRC}/ca.crt": certificate.ca_pem.encode(),
                f"{SEED_DIR}/redis.conf": render_config(parameters).encode(),
                f"{SEED_DIR}/users.acl": render_acl_file(users).encode(),
            },
        )

    def connection_info(
        self, service: ServiceRecord, credentials: dict[str, str], local_ports: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "host": container_name(service.service_type, service.name),
            "port": PORT,
            "local_host": "127.0.0.1",
            "local_port": local_ports["redis"],
            "tls_port": TLS_PORT,
            "local_tls_port": local_ports["redis-tls"],
        }

    async def check_ready(
        self, endpoints: Endpoints, credentials: dict[str, str], ca_pem: str
    ) -> None:
        """Both ports answer the monitor user (the TLS one verified against the CA); a server
        still loading its data answers LOADING, which counts as not ready."""
        password = credentials["monitor_password"]
        for client in (
            _client(endpoints["redis"], MONITOR_USER, password),
            _client(endpoints["redis-tls"], MONITOR_USER, password, ca_pem),
        ):
            try:
                await client.ping()
            except (RedisError, OSError) as exc:
                raise ServiceNotReadyError(str(exc) or type(exc).__name__) from exc
            finally:
                await client.aclose()

    async def after_ready(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        """Users and live settings as the desired state says; idempotent, saved when changed."""
        parameters = RedisParameters.model_validate(service.parameters)
        client = _client(endpoints["redis"], credentials["username"], credentials["password"])
        try:
            await apply_users(client, platform_users(credentials, major_version(service.version)))
            changed = await _apply_settings(client, parameters)
        finally:
            await client.aclose()
        if changed:
            log.info("redis %s: applied %s live", service.name, ", ".join(changed))

    def credentials_view(
        self, credentials: dict[str, str], connection_info: dict[str, Any], ca_pem: str
    ) -> dict[str, Any]:
        user, password = credentials["username"], credentials["password"]
        return {
            "username": user,
            "password": password,
            "connection_url": _url(
                user, password, connection_info["host"], connection_info["port"]
            ),
            "local_connection_url": _url(
                user, password, connection_info["local_host"], connection_info["local_port"]
            ),
            "ca_certificate": ca_pem,
        }

    def new_link_credentials(self, project: str, environment: str, link_id: UUID) -> dict[str, str]:
        name = "link_" + identifier_for(project, environment, link_id)
        return {"username": name, "password": generate_password(), "resource": ""}

    async def apply_links(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        grants: list[LinkGrant],
        ca_pem: str,
        runtime: DockerRuntime,
    ) -> None:
        major = major_version(service.version)
        client = _client(endpoints["redis"], credentials["username"], credentials["password"])
        try:
            await apply_users(client, [link_user(g, major) for g in grants])
        finally:
            await client.aclose()

    async def rotate_admin(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        previous: dict[str, str],
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        client = _client(endpoints["redis"], previous["username"], previous["password"])
        try:
            # `reset` + the new password: sessions already authenticated stay.
            await apply_users(client, platform_users(credentials, major_version(service.version)))
        except RedisError:
            return  # the previous password no longer works: rotated on an earlier delivery
        finally:
            await client.aclose()

    def link_variables(
        self, connection_info: dict[str, Any], grant: LinkGrant
    ) -> tuple[dict[str, str], set[str]]:
        host, port = connection_info["host"], connection_info["port"]
        variables = {
            "REDIS_URL": _url(grant.username, grant.password, host, port),
            # The TLS port: verify the server against TEMPS_CA_CERT (the installation CA).
            "REDIS_TLS_URL": _url(
                grant.username,
                grant.password,
                host,
                connection_info.get("tls_port", TLS_PORT),
                scheme="rediss",
            ),
            "REDIS_HOST": host,
            "REDIS_PORT": str(port),
            "REDIS_USERNAME": grant.username,
            "REDIS_PASSWORD": grant.password,
        }
        if grant.key_prefix:
            variables["REDIS_KEY_PREFIX"] = grant.key_prefix
        return variables, {"REDIS_PASSWORD"}

    def backup(self) -> EngineBackup:
        from temps_shared.backups.redis import RedisBackup  # on demand: the backup worker's code

        return RedisBackup()
