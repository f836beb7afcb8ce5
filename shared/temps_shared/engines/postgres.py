"""PostgreSQL: container specs (primary and read replicas), sizing, readiness over TLS,
connection info and credentials. Replication SQL lives in `postgres_replication.py`."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from temps_shared.crypto import generate_password
from temps_shared.engines import pgbouncer
from temps_shared.engines import postgres_links as links
from temps_shared.engines import postgres_replication as replication
from temps_shared.engines.base import Endpoints, ServiceNotReadyError
from temps_shared.engines.postgres_monitoring import ensure_monitor_role, forget_plaintext_passwords
from temps_shared.engines.scram import password_clause
from temps_shared.engines.sizes import parse_size_gb, parse_size_mb
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

PORT = 5432
PORT_NAME = "postgres"
DATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{DATA_MOUNT}/pgdata"  # a subdirectory: the volume root may hold other files
TLS_DIR = "/etc/temps/tls"
REPLICATION_DIR = "/etc/temps/replication"
PASSWORD_FILE = "/etc/temps/secrets/postgres-password"  # POSTGRES_PASSWORD_FILE (initdb only)
# Secrets earlier releases passed in env: a container still carrying one is recreated.
RETIRED_ENV = frozenset({"POSTGRES_PASSWORD"})
# Its presence on the volume is what "WAL archiving intended" means (the backup work writes it).
ARCHIVE_CONFIG = f"{DATA_MOUNT}/temps/pgbackrest.conf"
MAX_CONNECTIONS = 100
MAX_REPLICAS = 5


class PostgresParameters(BaseModel):
    """The spec's configuration options; `storage` and `memory` are accepted as aliases."""

    model_config = ConfigDict(extra="forbid")

    storage_gb: int = Field(10, ge=1, le=65536, description="Disk allocation in GB.")
    memory_mb: int = Field(
        1024, ge=128, le=1048576, description="Sizes PostgreSQL's memory settings (not a cap)."
    )
    replicas: int = Field(1, ge=0, le=MAX_REPLICAS, description="Streaming read replicas.")
    backups: bool = Field(True, description="Automatic daily backups.")

    @model_validator(mode="before")
    @classmethod
    def _spec_aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for alias, field, parse in (
                ("storage", "storage_gb", parse_size_gb),
                ("memory", "memory_mb", parse_size_mb),
            ):
                if alias in data:  # the alias wins: a PATCH may send it over a stored value
                    try:
                        data[field] = parse(data.pop(alias))
                    except ValueError as exc:
                        raise ValueError(f"{alias} ({field}): {exc}") from exc
        return data


def memory_settings(memory_mb: int) -> dict[str, str]:
    """PostgreSQL memory settings sized from the service's memory allocation."""
    return {
        "shared_buffers": f"{max(16, memory_mb // 4)}MB",
        "effective_cache_size": f"{max(32, memory_mb * 3 // 4)}MB",
        "maintenance_work_mem": f"{max(16, memory_mb // 16)}MB",
        "work_mem": f"{max(1, memory_mb // (4 * MAX_CONNECTIONS))}MB",
    }


# pgBackRest's io-timeout does not bound one push against a store that hangs (measured: 182 s,
# with nothing in pg_stat_archiver): `timeout` does, and the failure then shows there. Plain
# TERM: a KILL's exit status would read as a crash to the archiver.
ARCHIVE_PUSH_TIMEOUT_S = 60
# A segment switch at least this often when WAL is written: the recovery point is at most
# about a minute behind.
ARCHIVE_TIMEOUT_S = 60


def archive_command(stanza: str) -> str:
    return (
        f"timeout {ARCHIVE_PUSH_TIMEOUT_S} pgbackrest --config={ARCHIVE_CONFIG}"
        f" --stanza={stanza} archive-push %p"
    )


def server_command(
    parameters: PostgresParameters, *, archive_stanza: str | None = None
) -> list[str]:
    """The server's command line. Archive settings live here, on the command line, where the
    reconcile controls them (a `-c` setting beats ALTER SYSTEM)."""
    settings = {
        "max_connections": str(MAX_CONNECTIONS),
        "shared_preload_libraries": "pg_stat_statements",
        "wal_level": "replica",
        "max_wal_senders": str(MAX_REPLICAS + 5),
        "max_replication_slots": str(MAX_REPLICAS + 5),
        "hot_standby": "on",
        "archive_mode": "on" if archive_stanza else "off",
        **(
            {
                "archive_command": archive_command(archive_stanza),
                "archive_timeout": str(ARCHIVE_TIMEOUT_S),
            }
            if archive_stanza
            else {}
        ),
        **memory_settings(parameters.memory_mb),
    }
    command = ["postgres"]
    for key, value in settings.items():
        command += ["-c", f"{key}={value}"]
    return command


def replica_member(index: int) -> str:
    return f"replica-{index}"


def _ssl_context(ca_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = True
    return context


async def connect(
    endpoint: tuple[str, int], credentials: dict[str, str], ca_pem: str
) -> asyncpg.Connection:
    """An admin connection over verified TLS; `ServiceNotReadyError` if it cannot be opened."""
    host, port = endpoint
    try:
        return await asyncpg.connect(
            host=host,
            port=port,
            user=credentials["username"],
            password=credentials["password"],
            database=credentials["database"],
            ssl=_ssl_context(ca_pem),
            timeout=5,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, ssl.SSLError) as exc:
        raise ServiceNotReadyError(str(exc) or type(exc).__name__) from exc


def _url(user: str, password: str, host: str, port: int, database: str) -> str:
    return f"postgresql://{user}:{password}@{host}:{port}/{database}?sslmode=require"


class PostgresEngine:
    service_type = "postgres"
    ports = {PORT_NAME: PORT}

    def parameters_model(self) -> type[BaseModel]:
        return PostgresParameters

    def generate_credentials(self, name: str) -> dict[str, str]:
        return {
            "username": "temps_admin",
            "password": generate_password(),
            "database": name.replace("-", "_"),
            "replication_password": generate_password(),
            "monitor_password": generate_password(),
            "pooler_password": generate_password(),
            "pooler_admin_password": generate_password(),
        }

    def replica_count(self, service: ServiceRecord) -> int:
        return PostgresParameters.model_validate(service.parameters).replicas

    def _spec(
        self,
        service: ServiceRecord,
        role: str,
        replica: int | None,
        command: list[str],
        local_port: int,
        env: dict[str, str],
        files: dict[str, bytes],
        image: str,
    ) -> ContainerSpec:
        return ContainerSpec(
            name=container_name(service.service_type, service.name, replica),
            image=image,
            command=command,
            labels={LABEL_MANAGED: "true", LABEL_SERVICE_ID: str(service.id), LABEL_ROLE: role},
            volume=volume_name(service.service_type, service.name, replica),
            mount_path=DATA_MOUNT,
            ports={PORT: local_port},
            env={"PGDATA": PGDATA, **env},
            files=files,
            retired_env=RETIRED_ENV,
        )

    @staticmethod
    def _tls_files(certificate: ServerCertificate) -> dict[str, bytes]:
        return {
            f"{TLS_DIR}/server.crt": certificate.cert_pem.encode(),
            f"{TLS_DIR}/server.key": certificate.key_pem.encode(),
            f"{TLS_DIR}/ca.crt": certificate.ca_pem.encode(),
        }

    def container_spec(
        self,
        service: ServiceRecord,
        credentials: dict[str, str],
        local_ports: dict[str, int],
        certificate: ServerCertificate,
        image: str,
        *,
        archiving: bool = False,
    ) -> ContainerSpec:
        """The primary; `archiving` when the volume holds the archive configuration."""
        parameters = PostgresParameters.model_validate(service.parameters)
        return self._spec(
            service,
            "primary",
            None,
            server_command(parameters, archive_stanza=service.name if archiving else None),
            local_ports[PORT_NAME],
            {
                "POSTGRES_USER": credentials["username"],
                "POSTGRES_PASSWORD_FILE": PASSWORD_FILE,
                "POSTGRES_DB": credentials["database"],
            },
            # The initial password as a file (archive API), never in env: `docker inspect`
            # shows a container's environment to anyone who may talk to Docker.
            {**self._tls_files(certificate), PASSWORD_FILE: credentials["password"].encode()},
            image,
        )

    def replica_spec(
        self,
        service: ServiceRecord,
        index: int,
        credentials: dict[str, str],
        local_ports: dict[str, int],
        certificate: ServerCertificate,
        image: str,
    ) -> ContainerSpec:
        """Read replica `index` (1-based): cloned from the primary, then streaming from it."""
        parameters = PostgresParameters.model_validate(service.parameters)
        conninfo = replication.primary_conninfo(
            container_name(service.service_type, service.name),
            credentials["replication_password"],
            application_name=replication.slot_name(index),
            ca_file="/run/temps-tls/ca.crt",
        )
        files = {
            **self._tls_files(certificate),
            f"{REPLICATION_DIR}/primary.conninfo": conninfo.encode(),
            f"{REPLICATION_DIR}/slot": replication.slot_name(index).encode(),
        }
        return self._spec(
            service,
            replica_member(index),
            index,
            server_command(parameters),
            local_ports[replica_member(index)],
            {},
            files,
            image,
        )

    def connection_info(
        self, service: ServiceRecord, credentials: dict[str, str], local_ports: dict[str, int]
    ) -> dict[str, Any]:
        replicas = [
            {
                "member": replica_member(n),
                "host": container_name(service.service_type, service.name, n),
                "port": PORT,
                "local_host": "127.0.0.1",
                "local_port": local_ports[replica_member(n)],
            }
            for n in range(1, self.replica_count(service) + 1)
            if replica_member(n) in local_ports
        ]
        info: dict[str, Any] = {
            "host": container_name(service.service_type, service.name),
            "port": PORT,
            "local_host": "127.0.0.1",
            "local_port": local_ports[PORT_NAME],
            "database": credentials["database"],
            "username": credentials["username"],
            "replicas": replicas,
        }
        if pgbouncer.PORT_NAME in local_ports:
            # The pooled endpoint (PgBouncer, transaction mode): what DATABASE_URL names.
            info["pooler"] = {
                "host": pgbouncer.container(service),
                "port": pgbouncer.PORT,
                "local_host": "127.0.0.1",
                "local_port": local_ports[pgbouncer.PORT_NAME],
                "pool_mode": pgbouncer.POOL_MODE,
            }
        return info

    async def check_ready(
        self, endpoints: Endpoints, credentials: dict[str, str], ca_pem: str
    ) -> None:
        conn = await connect(endpoints[PORT_NAME], credentials, ca_pem)
        try:
            await conn.fetchval("SELECT 1", timeout=5)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise ServiceNotReadyError(str(exc) or type(exc).__name__) from exc
        finally:
            await conn.close(timeout=5)

    async def check_replica_ready(
        self, endpoint: tuple[str, int], credentials: dict[str, str], ca_pem: str
    ) -> None:
        """Ready when it accepts connections as a standby (read-only, recovering)."""
        conn = await connect(endpoint, credentials, ca_pem)
        try:
            if not await conn.fetchval("SELECT pg_is_in_recovery()", timeout=5):
                raise ServiceNotReadyError("the replica is not in recovery (not a standby)")
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise ServiceNotReadyError(str(exc) or type(exc).__name__) from exc
        finally:
            await conn.close(timeout=5)

    async def after_ready(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        """The replication role, exactly one physical slot per wanted replica, the health
        monitor's read-only role (services created before it have no password for it), and the
        tenant defaults (`postgres_links`): closed databases, schema `public` for its database's
        owner only, no plaintext password left in pg_stat_statements. On every reconcile, so an
        existing service is repaired by the next one."""
        conn = await connect(endpoints[PORT_NAME], credentials, ca_pem)
        try:
            await replication.ensure_role(conn, credentials["replication_password"])
            await replication.ensure_slots(conn, self.replica_count(service))
            if "monitor_password" in credentials:
                await ensure_monitor_role(conn, credentials["monitor_password"])
            await links.close_public_doors(conn, credentials["database"])
            databases = await links.connectable_databases(conn)
            await pgbouncer.ensure_auth_role(conn, pgbouncer.secrets(credentials)[0])
            await forget_plaintext_passwords(conn)
        finally:
            await conn.close(timeout=5)
        await self._lock_public_schemas(endpoints, credentials, ca_pem, databases)
        conn = await connect(
            endpoints[PORT_NAME], {**credentials, "database": pgbouncer.AUTH_DATABASE}, ca_pem
        )
        try:
            await pgbouncer.ensure_lookup_function(conn)
        finally:
            await conn.close(timeout=5)

    async def _lock_public_schemas(
        self,
        endpoints: Endpoints,
        credentials: dict[str, str],
        ca_pem: str,
        databases: list[str],
    ) -> None:
        """`links.lock_public_schema` in each of `databases` (template1 first: what it holds
        is copied into every database created afterwards)."""
        for database in sorted(databases, key=lambda d: d != "template1"):
            conn = await connect(
                endpoints[PORT_NAME], {**credentials, "database": database}, ca_pem
            )
            try:
                await links.lock_public_schema(conn)
            finally:
                await conn.close(timeout=5)

    async def replication_status(
        self, endpoints: Endpoints, credentials: dict[str, str], ca_pem: str
    ) -> list[dict[str, Any]]:
        conn = await connect(endpoints[PORT_NAME], credentials, ca_pem)
        try:
            return await replication.status(conn)
        finally:
            await conn.close(timeout=5)

    def credentials_view(
        self, credentials: dict[str, str], connection_info: dict[str, Any], ca_pem: str
    ) -> dict[str, Any]:
        user, password = credentials["username"], credentials["password"]
        db = credentials["database"]
        info = connection_info
        return {
            "username": user,
            "password": password,
            "database": db,
            "connection_url": _url(user, password, info["host"], info["port"], db),
            "local_connection_url": _url(
                user, password, info["local_host"], info["local_port"], db
            ),
            "ca_certificate": ca_pem,
        }

    def new_link_credentials(self, project: str, environment: str, link_id: UUID) -> dict[str, str]:
        name = identifier_for(project, environment, link_id)
        return {"username": name, "password": generate_password(), "resource": name}

    async def apply_links(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        grants: list[LinkGrant],
        ca_pem: str,
        runtime: DockerRuntime,
    ) -> None:
        conn = await connect(endpoints[PORT_NAME], credentials, ca_pem)
        try:
            await links.close_public_doors(conn, credentials["database"])
            for grant in grants:
                await links.apply_grant(conn, grant)
        finally:
            await conn.close(timeout=5)
        # A new link database is a copy of template1: its `public` goes to the link's role.
        await self._lock_public_schemas(
            endpoints, credentials, ca_pem, [g.resource for g in grants if g.active]
        )

    async def rotate_admin(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        previous: dict[str, str],
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        try:
            conn = await connect(endpoints[PORT_NAME], previous, ca_pem)
        except ServiceNotReadyError:
            return  # the previous password no longer works: rotated on an earlier delivery
        try:
            # A SCRAM verifier, not the password: pg_stat_statements and logs keep the text.
            await conn.execute(
                f'ALTER ROLE "{credentials["username"]}" {password_clause(credentials["password"])}'
            )
        finally:
            await conn.close(timeout=5)

    def link_variables(
        self, connection_info: dict[str, Any], grant: LinkGrant
    ) -> tuple[dict[str, str], set[str]]:
        """`DATABASE_URL` (and `POSTGRES_URL`) name the pooled endpoint (PgBouncer, transaction
        mode) when the service has one; `DATABASE_DIRECT_URL` always names PostgreSQL itself
        (session features, LISTEN/NOTIFY, advisory locks, migrations). The discrete
        `POSTGRES_HOST`/`POSTGRES_PORT` are the direct endpoint's."""
        user, password, database = grant.username, grant.password, grant.resource
        direct = _url(user, password, connection_info["host"], connection_info["port"], database)
        pooler = connection_info.get("pooler")
        url = _url(user, password, pooler["host"], pooler["port"], database) if pooler else direct
        variables = {
            "DATABASE_URL": url,
            "DATABASE_DIRECT_URL": direct,
            "POSTGRES_URL": url,
            "POSTGRES_HOST": connection_info["host"],
            "POSTGRES_PORT": str(connection_info["port"]),
            "POSTGRES_DB": database,
            "POSTGRES_USER": user,
            "POSTGRES_PASSWORD": password,
        }
        replicas = connection_info.get("replicas") or []
        if replicas:
            variables["DATABASE_REPLICA_URL"] = ",".join(
                _url(user, password, r["host"], r["port"], database) for r in replicas
            )
        return variables, {"POSTGRES_PASSWORD"}

    def backup(self) -> EngineBackup:
        from temps_shared.backups.postgres import (
            PostgresBackup,  # on demand: the backup worker's code
        )

        return PostgresBackup()
