"""PostgreSQL: container spec, sizing, readiness over TLS, connection info and credentials."""

from __future__ import annotations

import ssl
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from temps_shared.crypto import generate_password
from temps_shared.engines.base import Endpoints, ServiceNotReadyError
from temps_shared.engines.sizes import parse_size_gb, parse_size_mb
from temps_shared.ids import (
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SERVICE_ID,
    container_name,
    volume_name,
)
from temps_shared.runtime import ContainerSpec
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import ServerCertificate

PORT = 5432
DATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{DATA_MOUNT}/pgdata"  # a subdirectory: the volume root may hold other files
TLS_DIR = "/etc/temps/tls"
MAX_CONNECTIONS = 100


class PostgresParameters(BaseModel):
    """The spec's configuration options; `storage` and `memory` are accepted as aliases."""

    model_config = ConfigDict(extra="forbid")

    storage_gb: int = Field(10, ge=1, le=65536, description="Disk allocation in GB.")
    memory_mb: int = Field(
        1024, ge=128, le=1048576, description="Sizes PostgreSQL's memory settings (not a cap)."
    )
    replicas: int = Field(0, description="Read replicas.")
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

    @field_validator("replicas")
    @classmethod
    def _no_replicas_yet(cls, value: int) -> int:
        if value != 0:
            raise ValueError("read replicas are not available on this installation yet; use 0")
        return value


def memory_settings(memory_mb: int) -> dict[str, str]:
    """PostgreSQL memory settings sized from the service's memory allocation."""
    return {
        "shared_buffers": f"{max(16, memory_mb // 4)}MB",
        "effective_cache_size": f"{max(32, memory_mb * 3 // 4)}MB",
        "maintenance_work_mem": f"{max(16, memory_mb // 16)}MB",
        "work_mem": f"{max(1, memory_mb // (4 * MAX_CONNECTIONS))}MB",
    }


def server_command(parameters: PostgresParameters, *, archive_mode: bool = False) -> list[str]:
    settings = {
        "max_connections": str(MAX_CONNECTIONS),
        "shared_preload_libraries": "pg_stat_statements",
        "wal_level": "replica",
        "archive_mode": "on" if archive_mode else "off",
        **memory_settings(parameters.memory_mb),
    }
    command = ["postgres"]
    for key, value in settings.items():
        command += ["-c", f"{key}={value}"]
    return command


def _ssl_context(ca_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = True
    return context


def _url(user: str, password: str, host: str, port: int, database: str) -> str:
    return f"postgresql://{user}:{password}@{host}:{port}/{database}?sslmode=require"


class PostgresEngine:
    service_type = "postgres"
    ports = {"postgres": PORT}

    def parameters_model(self) -> type[BaseModel]:
        return PostgresParameters

    def generate_credentials(self, name: str) -> dict[str, str]:
        return {
            "username": "temps_admin",
            "password": generate_password(),
            "database": name.replace("-", "_"),
        }

    def container_spec(
        self,
        service: ServiceRecord,
        credentials: dict[str, str],
        local_ports: dict[str, int],
        certificate: ServerCertificate,
        image: str,
    ) -> ContainerSpec:
        parameters = PostgresParameters.model_validate(service.parameters)
        return ContainerSpec(
            name=container_name(service.service_type, service.name),
            image=image,
            command=server_command(parameters),
            labels={
                LABEL_MANAGED: "true",
                LABEL_SERVICE_ID: str(service.id),
                LABEL_ROLE: "primary",
            },
            volume=volume_name(service.service_type, service.name),
            mount_path=DATA_MOUNT,
            ports={PORT: local_ports["postgres"]},
            env={
                "POSTGRES_USER": credentials["username"],
                "POSTGRES_PASSWORD": credentials["password"],
                "POSTGRES_DB": credentials["database"],
                "PGDATA": PGDATA,
            },
            files={
                f"{TLS_DIR}/server.crt": certificate.cert_pem.encode(),
                f"{TLS_DIR}/server.key": certificate.key_pem.encode(),
                f"{TLS_DIR}/ca.crt": certificate.ca_pem.encode(),
            },
        )

    def connection_info(
        self, service: ServiceRecord, credentials: dict[str, str], local_ports: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "host": container_name(service.service_type, service.name),
            "port": PORT,
            "local_host": "127.0.0.1",
            "local_port": local_ports["postgres"],
            "database": credentials["database"],
            "username": credentials["username"],
        }

    async def check_ready(
        self, endpoints: Endpoints, credentials: dict[str, str], ca_pem: str
    ) -> None:
        host, port = endpoints["postgres"]
        try:
            conn = await asyncpg.connect(
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
        try:
            await conn.fetchval("SELECT 1", timeout=5)
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
        return None  # initdb created the admin role and the database

    def credentials_view(
        self,
        credentials: dict[str, str],
        connection_info: dict[str, Any],
        ca_pem: str,
    ) -> dict[str, Any]:
        user, password, db = (
            credentials["username"],
            credentials["password"],
            credentials["database"],
        )
        return {
            "username": user,
            "password": password,
            "database": db,
            "connection_url": _url(
                user, password, connection_info["host"], connection_info["port"], db
            ),
            "local_connection_url": _url(
                user, password, connection_info["local_host"], connection_info["local_port"], db
            ),
            "ca_certificate": ca_pem,
        }
