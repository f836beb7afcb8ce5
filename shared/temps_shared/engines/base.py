"""What every engine module provides: PostgreSQL, Redis and S3 plug in the same way.

The provisioner owns the lifecycle (names, volumes, ports, certificates, Docker); an engine says
how its service type runs, when it is ready, what finishes its setup, and how it is reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from pydantic import BaseModel

from temps_shared.links import LinkGrant
from temps_shared.runtime import ContainerSpec, DockerRuntime
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import ServerCertificate

if TYPE_CHECKING:  # the engines import their backups on demand (the backup worker's code)
    from temps_shared.backups.protocol import EngineBackup

# Port name → (host, port) a worker dials: the private name and container port when workers
# run on the `temps` network, the loopback publication otherwise.
Endpoints = dict[str, tuple[str, int]]


def dial_endpoints(
    addressing: str, ports: dict[str, int], container: str, local_ports: dict[str, int]
) -> Endpoints:
    """Where a worker dials each of a container's ports: by the container's private name
    (`addressing` "private": workers on the `temps` network) or its loopback publications."""
    if addressing == "private":
        return {port_name: (container, port) for port_name, port in ports.items()}
    return {port_name: ("127.0.0.1", local_ports[port_name]) for port_name in ports}


class ServiceNotReadyError(Exception):
    """The service does not accept connections yet."""


class Engine(Protocol):
    service_type: str
    # Port name → container port; each is published on its own loopback port.
    ports: dict[str, int]

    def parameters_model(self) -> type[BaseModel]:
        """Validates `parameters` (defaults filled in, spec aliases accepted)."""
        ...

    def generate_credentials(self, name: str) -> dict[str, str]:
        """The admin credentials of a new service (stored encrypted, never in events)."""
        ...

    def container_spec(
        self,
        service: ServiceRecord,
        credentials: dict[str, str],
        local_ports: dict[str, int],
        certificate: ServerCertificate,
        image: str,
    ) -> ContainerSpec:
        """The container of the service; files (TLS, config) travel in `ContainerSpec.files`."""
        ...

    def connection_info(
        self, service: ServiceRecord, credentials: dict[str, str], local_ports: dict[str, int]
    ) -> dict[str, Any]:
        """Addresses (private and loopback) and non-secret names, as API.md's connection_info."""
        ...

    async def check_ready(
        self, endpoints: Endpoints, credentials: dict[str, str], ca_pem: str
    ) -> None:
        """Return when the service accepts an authenticated connection; raise
        `ServiceNotReadyError` otherwise."""
        ...

    async def after_ready(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        """Idempotent setup once the service is ready (e.g. a default bucket)."""
        ...

    def credentials_view(
        self, credentials: dict[str, str], connection_info: dict[str, Any], ca_pem: str
    ) -> dict[str, Any]:
        """The `/credentials` answer."""
        ...

    # --- links and rotation --------------------------------------------------------------

    def new_link_credentials(self, project: str, environment: str, link_id: UUID) -> dict[str, str]:
        """`{username, password, resource}` of a new link (a database, a bucket, or "")."""
        ...

    async def apply_links(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        credentials: dict[str, str],
        grants: list[LinkGrant],
        ca_pem: str,
        runtime: DockerRuntime,
    ) -> None:
        """Make the service's link users exactly `grants` (idempotent): an active grant's user
        exists with its password and least privileges on its own resource; a revoked one can no
        longer log in (its data stays). Open connections survive a password change."""
        ...

    async def rotate_admin(
        self,
        endpoints: Endpoints,
        service: ServiceRecord,
        previous: dict[str, str],
        credentials: dict[str, str],
        ca_pem: str,
    ) -> None:
        """Change the admin's secrets from `previous` to `credentials`; nothing when the
        previous ones no longer work (already rotated)."""
        ...

    def link_variables(
        self, connection_info: dict[str, Any], grant: LinkGrant
    ) -> tuple[dict[str, str], set[str]]:
        """The variables injected into a linked project + environment, and which are secret."""
        ...

    # --- backups -------------------------------------------------------------------------

    def backup(self) -> EngineBackup:
        """How this service type is backed up, restored and verified (a module of
        `temps_shared.backups`, imported on demand so the other processes never load it)."""
        ...
