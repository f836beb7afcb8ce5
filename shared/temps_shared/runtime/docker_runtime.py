"""Docker adapter: deterministic, labelled, hardened containers; every call off the event loop.

Ports are published on 127.0.0.1 only. Files reach a container through the archive API before
its first start (never a bind mount: when the caller runs in a container, bind paths would be
resolved on the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig

from temps_shared.ids import LABEL_MANAGED, LABEL_SPEC_HASH

LOOPBACK = "127.0.0.1"


class ImageMissingError(Exception):
    """The image is not on this host (nothing is ever pulled)."""


class PortInUseError(Exception):
    """Docker could not bind the requested loopback port."""

    def __init__(self, port: int, detail: str) -> None:
        super().__init__(f"loopback port {port} is in use: {detail}")
        self.port = port


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    command: list[str]
    labels: dict[str, str]
    volume: str
    mount_path: str
    ports: dict[int, int]  # container port → loopback host port
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # absolute path → content (mode 0600)
    pids_limit: int = 512

    def spec_hash(self) -> str:
        """What, when it changes, needs a recreate. Env is left out: it holds secrets and only
        matters at the first start (initdb)."""
        material = json.dumps(
            {
                "image": self.image,
                "command": self.command,
                "ports": self.ports,
                "volume": self.volume,
                "mount": self.mount_path,
            },
            sort_keys=True,
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    status: str  # created | running | paused | restarting | exited | dead
    labels: dict[str, str]
    exit_code: int
    host_ports: dict[int, int]

    @property
    def spec_hash(self) -> str | None:
        return self.labels.get(LABEL_SPEC_HASH)

    @property
    def running(self) -> bool:
        return self.status == "running"


def _state(container: Container) -> ContainerState:
    attrs: dict[str, Any] = container.attrs
    ports: dict[int, int] = {}
    for key, bindings in (attrs.get("HostConfig", {}).get("PortBindings") or {}).items():
        if bindings and bindings[0].get("HostPort"):
            ports[int(key.split("/")[0])] = int(bindings[0]["HostPort"])
    state = attrs.get("State", {})
    return ContainerState(
        id=container.id or "",
        name=container.name or "",
        status=state.get("Status", "unknown"),
        labels=dict(attrs.get("Config", {}).get("Labels") or {}),
        exit_code=int(state.get("ExitCode", 0)),
        host_ports=ports,
    )


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        dirs: set[str] = set()
        for path in files:
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            archive.addfile(info)
        for path, content in files.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(content), 0o600, now
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class DockerRuntime:
    def __init__(self, client: docker.DockerClient, network: str) -> None:
        self._client = client
        self.network = network

    # --- blocking helpers, always run through asyncio.to_thread -----------------------------

    def _get(self, name: str) -> Container | None:
        try:
            return self._client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def _ensure_network(self) -> None:
        if not self._client.networks.list(names=[self.network]):
            try:
                self._client.networks.create(
                    self.network, driver="bridge", labels={LABEL_MANAGED: "true"}
                )
            except docker.errors.APIError as exc:  # created concurrently
                if exc.status_code != 409:
                    raise

    def _create(self, spec: ContainerSpec) -> ContainerState:
        try:
            self._client.images.get(spec.image)
        except docker.errors.ImageNotFound as exc:
            raise ImageMissingError(
                f"image {spec.image} is not built on this host (run `make images`)"
            ) from exc
        if not self._client.volumes.list(filters={"name": f"^{spec.volume}$"}):
            self._client.volumes.create(spec.volume, labels=spec.labels)
        labels = {**spec.labels, LABEL_SPEC_HASH: spec.spec_hash()}
        container = self._client.containers.create(
            spec.image,
            command=spec.command,
            name=spec.name,
            hostname=spec.name,
            environment=spec.env,
            labels=labels,
            volumes={spec.volume: {"bind": spec.mount_path, "mode": "rw"}},
            ports={f"{c}/tcp": (LOOPBACK, h) for c, h in spec.ports.items()},
            network=self.network,
            # The stubs omit "unless-stopped", which Docker accepts.
            restart_policy={"Name": "unless-stopped"},  # type: ignore[arg-type]
            security_opt=["no-new-privileges:true"],
            pids_limit=spec.pids_limit,
            log_config=LogConfig(type="json-file", config={"max-size": "20m", "max-file": "3"}),
        )
        if spec.files:
            container.put_archive("/", _tar(spec.files))
        container.reload()
        return _state(container)

    def _put_files(self, name: str, files: dict[str, bytes]) -> None:
        container = self._client.containers.get(name)
        container.put_archive("/", _tar(files))

    def _start(self, name: str) -> ContainerState:
        container = self._client.containers.get(name)
        try:
            container.start()
        except docker.errors.APIError as exc:
            text = str(exc)
            if "port is already allocated" in text or "address already in use" in text:
                port = next(iter(_state(container).host_ports.values()), 0)
                raise PortInUseError(port, text) from exc
            raise
        container.reload()
        return _state(container)

    def _stop(self, name: str, timeout_s: int) -> None:
        container = self._get(name)
        if container is not None and container.status in ("running", "restarting", "paused"):
            container.stop(timeout=timeout_s)

    def _remove(self, name: str) -> None:
        container = self._get(name)
        if container is not None:
            container.remove(force=True)

    def _remove_volume(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._client.volumes.get(name).remove(force=True)

    def _volume_exists(self, name: str) -> bool:
        try:
            self._client.volumes.get(name)
        except docker.errors.NotFound:
            return False
        return True

    def _logs_tail(self, name: str, lines: int) -> list[str]:
        container = self._get(name)
        if container is None:
            return []
        raw: bytes = container.logs(tail=lines)
        return raw.decode(errors="replace").splitlines()

    # --- async API ----------------------------------------------------------------------------

    async def inspect(self, name: str) -> ContainerState | None:
        container = await asyncio.to_thread(self._get, name)
        return _state(container) if container is not None else None

    async def ensure_network(self) -> None:
        await asyncio.to_thread(self._ensure_network)

    async def create(self, spec: ContainerSpec) -> ContainerState:
        """Create the volume (if missing) and the container, with its files, not started."""
        return await asyncio.to_thread(self._create, spec)

    async def put_files(self, name: str, files: dict[str, bytes]) -> None:
        await asyncio.to_thread(self._put_files, name, files)

    async def start(self, name: str) -> ContainerState:
        return await asyncio.to_thread(self._start, name)

    async def stop(self, name: str, timeout_s: int = 30) -> None:
        await asyncio.to_thread(self._stop, name, timeout_s)

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self._remove, name)

    async def remove_volume(self, name: str) -> None:
        await asyncio.to_thread(self._remove_volume, name)

    async def volume_exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._volume_exists, name)

    async def logs_tail(self, name: str, lines: int = 20) -> list[str]:
        return await asyncio.to_thread(self._logs_tail, name, lines)
