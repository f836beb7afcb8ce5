"""What every engine module provides (PostgreSQL today; Redis and S3 plug in the same way)."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel

from temps_shared.runtime import ContainerSpec
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import ServerCertificate


class ServiceNotReadyError(Exception):
    """The service does not accept connections yet."""


class Engine(Protocol):
    service_type: str
    internal_port: int

    def parameters_model(self) -> type[BaseModel]: ...

    def generate_credentials(self, name: str) -> dict[str, str]: ...

    def container_spec(
        self,
        service: ServiceRecord,
        credentials: dict[str, str],
        local_port: int,
        certificate: ServerCertificate,
        image: str,
    ) -> ContainerSpec: ...

    def connection_info(
        self, service: ServiceRecord, credentials: dict[str, str], local_port: int
    ) -> dict[str, Any]: ...

    async def check_ready(
        self, host: str, port: int, credentials: dict[str, str], ca_pem: str
    ) -> None:
        """Return when the service accepts an authenticated connection; raise
        `ServiceNotReadyError` otherwise."""
        ...

    def credentials_view(
        self,
        credentials: dict[str, str],
        connection_info: dict[str, Any],
        ca_pem: str,
    ) -> dict[str, Any]: ...
