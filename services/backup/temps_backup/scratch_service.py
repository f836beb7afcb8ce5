"""A throw-away copy of a service for a test restore: a container of the service's image and
version, with fresh credentials and its own CA, on an internal Docker network created for it
(no route out, no published port), with its own volume. Everything carries `LABEL_SCRATCH`
(the backup id) so an orphan left by a killed worker can be found and removed; the context
manager removes all of it whatever happens. Blocking (Docker SDK): run in a worker thread.

Engines dialled over the network (S3: boto3 against the scratch's address) need the worker to
reach the internal network. On the host that is the Linux bridge; a worker in a container (the
compose deployment) joins the scratch's network for the verification: it finds its own
container from the bind mount Docker makes of /etc/hostname (/proc/self/mountinfo), and is
disconnected before the network is removed. (docker exec-based figures would avoid the join,
but S3 has no CLI in its image to read objects and ETags with.)"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

import docker
from temps_shared.backups.protocol import ServiceHandle
from temps_shared.engines import ENGINES
from temps_shared.resources import ResourceLimits
from temps_shared.runtime import container_limits
from temps_shared.runtime.container_io import ExecFailed
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import create_ca, issue_server_certificate

LABEL_SCRATCH = "io.temps.verify-scratch"  # value: the backup being verified
READY_WAIT_S = 120.0

T = TypeVar("T")


def scratch_name(backup_id: UUID) -> str:
    return f"temps-verify-{backup_id.hex[:16]}"


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directories = sorted(
            {"/".join(p.strip("/").split("/")[:i]) for p in files
             for i in range(1, len(p.strip("/").split("/")))}
        )  # fmt: skip
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            archive.addfile(info)
        for path, content in files.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(content), 0o600, now
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _internal_network(client: docker.DockerClient, name: str, labels: dict[str, str]) -> str:
    """Create the internal network `name` on a subnet of its own, so the scratch's address is
    known before it starts and its certificate can name it (engines dialled over TLS check
    it); the address."""
    for _attempt in range(5):
        # Docker picks a free subnet; it is then pinned (only a configured subnet lets a
        # container have a chosen address). Another network may take it meanwhile: retry.
        probe = client.networks.create(name, driver="bridge", internal=True, labels=labels)
        probe.reload()
        config = probe.attrs["IPAM"]["Config"][0]
        probe.remove()
        hosts = ipaddress.ip_network(config["Subnet"]).hosts()
        gateway = config.get("Gateway") or str(next(hosts))
        address = next(str(h) for h in hosts if str(h) != gateway)
        pool = docker.types.IPAMPool(subnet=config["Subnet"], gateway=gateway)
        try:
            client.networks.create(
                name,
                driver="bridge",
                internal=True,
                labels=labels,
                ipam=docker.types.IPAMConfig(pool_configs=[pool]),
            )
        except docker.errors.APIError:
            continue
        return address
    raise ExecFailed("no subnet could be reserved for the scratch network")


_HOSTNAME_MOUNT = re.compile(r"/containers/([0-9a-f]{64})/hostname$")


def container_id_from_mountinfo(mountinfo: str) -> str | None:
    """The id of the Docker container whose /etc/hostname is bind-mounted here (None on the
    host: there /etc/hostname is no mount; other containers' mounts do not name it)."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/etc/hostname":
            match = _HOSTNAME_MOUNT.search(fields[3])
            if match:
                return match.group(1)
    return None


def own_container(client: docker.DockerClient) -> str | None:
    """The container this process runs in, if it needs to join a bridge network to reach
    one (None on the host, or in a container on the host's network)."""
    try:
        with open("/proc/self/mountinfo") as file:
            found = container_id_from_mountinfo(file.read())
    except OSError:
        return None
    if found is None:
        return None
    try:
        attrs = client.api.inspect_container(found)
    except docker.errors.NotFound:
        return None  # another Docker engine's container (e.g. docker-in-docker)
    return None if attrs["HostConfig"].get("NetworkMode") == "host" else found


def join_network(client: docker.DockerClient, name: str, container_id: str | None) -> None:
    """Connect the worker's own container to the scratch network (nothing on the host)."""
    if container_id is not None:
        client.networks.get(name).connect(container_id)


def remove_scratch(client: docker.DockerClient, name: str) -> None:
    """Container, then volume and network (each may already be gone); a worker's container
    joined to the network (this one, or a killed one's) is disconnected first."""
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name).remove(force=True, v=True)
    with contextlib.suppress(docker.errors.NotFound):
        client.volumes.get(name).remove(force=True)
    with contextlib.suppress(docker.errors.NotFound):
        network = client.networks.get(name)
        for joined in list(network.attrs.get("Containers") or {}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.disconnect(joined, force=True)
        network.remove()


def _created_before(created: str, cutoff: float) -> bool:
    """Docker's RFC 3339 time (nanoseconds, Z or offset) before the epoch time `cutoff`."""
    head, _, rest = created.partition(".")
    zone = "+00:00" if rest.endswith("Z") or not rest else rest[-6:]
    when = datetime.fromisoformat(head + zone) if rest else datetime.fromisoformat(head)
    return when.astimezone(UTC).timestamp() < cutoff


def remove_orphans(client: docker.DockerClient, older_than_s: float) -> list[str]:
    """Remove the scratches made more than `older_than_s` ago (a worker killed mid-verification
    leaves its scratch behind; a running verification is younger); their names."""
    cutoff = time.time() - older_than_s
    label = {"label": LABEL_SCRATCH}
    names = {
        str(c["Names"][0]).lstrip("/")
        for c in client.api.containers(all=True, filters=label)
        if int(c["Created"]) < cutoff
    }
    names |= {
        str(n["Name"])
        for n in client.api.networks(filters=label)
        if _created_before(str(n["Created"]), cutoff)
    }
    for name in sorted(names):
        remove_scratch(client, name)
    return sorted(names)


@contextlib.contextmanager
def scratch_service(
    client: docker.DockerClient,
    service: ServiceRecord,
    image: str,
    backup_id: UUID,
    identity: str,
    timeout_s: float,
) -> Iterator[ServiceHandle]:
    """A running scratch copy of `service` (empty: the caller restores into it)."""
    engine = ENGINES[service.service_type]
    name = scratch_name(backup_id)
    labels = {LABEL_SCRATCH: str(backup_id)}
    credentials = engine.generate_credentials(service.name)
    limits = ResourceLimits.from_stored(service.resources).docker()
    remove_scratch(client, name)  # a previous attempt at this verification, killed
    try:
        address = _internal_network(client, name, labels)
        ca = create_ca("Temps verification scratch CA")
        certificate = issue_server_certificate(ca, [name, "localhost"], ["127.0.0.1", address])
        # The spec wants a loopback port per port name; none is published (see below).
        spec = engine.container_spec(
            service, credentials, dict.fromkeys(engine.ports, 0), certificate, image
        )
        client.volumes.create(name, labels=labels)
        container = client.containers.create(
            image,
            command=spec.command,
            name=name,
            hostname=name,
            environment=spec.env,
            labels=labels,
            volumes={name: {"bind": spec.mount_path, "mode": "rw"}},
            network=name,
            networking_config={name: client.api.create_endpoint_config(ipv4_address=address)},
            security_opt=["no-new-privileges:true"],
            pids_limit=spec.pids_limit,
            **container_limits.create_kwargs(limits),
        )
        if spec.files:
            container.put_archive("/", _tar(spec.files))
        container.start()
        # Reachable from the host running the worker (Linux bridge); a worker in a container
        # joins the network (left in remove_scratch).
        join_network(client, name, own_container(client))
        yield ServiceHandle(
            client=client,
            container=name,
            credentials=credentials,
            endpoints={port_name: (address, port) for port_name, port in engine.ports.items()},
            ca_pem=ca.cert_pem,
            identity=identity,
            timeout_s=timeout_s,
        )
    finally:
        remove_scratch(client, name)


def when_ready(probe: Callable[[], T], what: str, wait_s: float = READY_WAIT_S) -> T:
    """`probe()`'s answer once it stops failing (the server is starting), bounded."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return probe()
        except (ExecFailed, docker.errors.APIError) as exc:
            if time.monotonic() >= deadline:
                raise ExecFailed(f"{what} was not ready within {wait_s:.0f}s: {exc}") from exc
        time.sleep(0.5)
