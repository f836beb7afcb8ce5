"""Docker adapter: deterministic, labelled, hardened containers; every call off the event loop.

Ports are published on 127.0.0.1 only. Files reach a container through the archive API before
its first start (never a bind mount: when the caller runs in a container, bind paths would be
resolved on the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import tarfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig
from opentelemetry import trace

from temps_shared.ids import LABEL_MANAGED, LABEL_SERVICE_ID
from temps_shared.resources import DockerLimits
from temps_shared.runtime import container_limits

LOOPBACK = "127.0.0.1"
_tracer = trace.get_tracer("temps.docker")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _traced(
    operation: str,
) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Awaitable[_R]]]:
    """A client span `docker <operation>` around a DockerRuntime call made inside a trace (a
    command's, a request's), naming its target (a container, a volume or a service id);
    background polling outside any trace makes no span."""

    def wrap(call: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
        @functools.wraps(call)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            if not trace.get_current_span().get_span_context().is_valid:
                return await call(*args, **kwargs)
            target = args[1] if len(args) > 1 else None
            name = getattr(target, "name", target)
            attributes = {"docker.operation": operation}
            if isinstance(name, str):
                attributes["docker.target"] = name
            with _tracer.start_as_current_span(
                f"docker {operation}", kind=trace.SpanKind.CLIENT, attributes=attributes
            ):
                return await call(*args, **kwargs)

        return run

    return wrap


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
    limits: DockerLimits = field(default_factory=DockerLimits)  # caps; changed live, see below
    # Variables a container must not carry (a secret an earlier release passed in env): one
    # present is drift, so the next reconcile recreates the container without it.
    retired_env: frozenset[str] = frozenset()

    def drift(self, actual: ContainerState) -> list[str]:
        """What differs between this spec and the container as it is (empty: nothing).

        Read from the container itself, not from a label, so a container recreated by hand is
        judged by what it really runs. Env is left out: it holds secrets and only matters at the
        first start (initdb); files are refreshed separately. Resource caps change live
        (`DockerRuntime.update_limits`), a lifted memory cap too (raised to `LIFTED_MEMORY`);
        a lifted CPU cap, which Docker 20.10 cannot remove from a container, is drift.
        """
        differences = []
        if actual.image != self.image:
            differences.append(f"image {actual.image} → {self.image}")
        if actual.command != self.command:
            differences.append("command")
        if actual.host_ports != self.ports:
            differences.append(f"ports {actual.host_ports} → {self.ports}")
        if actual.mounts.get(self.mount_path) != self.volume:
            differences.append(f"volume at {self.mount_path}")
        if actual.limits.lifts(self.limits):
            differences.append("resource caps lifted")
        if actual.env_names & self.retired_env:
            differences.append(f"env {', '.join(sorted(actual.env_names & self.retired_env))}")
        return differences


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str  # stdout and stderr, interleaved


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    status: str  # created | running | paused | restarting | exited | dead
    labels: dict[str, str]
    exit_code: int
    host_ports: dict[int, int]
    image: str = ""
    command: list[str] = field(default_factory=list)
    mounts: dict[str, str] = field(default_factory=dict)  # mount path → volume name
    limits: DockerLimits = field(default_factory=DockerLimits)  # the caps live on it
    restart_count: int = 0
    oom_killed: bool = False
    started_at: str | None = None
    env_names: frozenset[str] = frozenset()  # names only: values may be secrets

    @property
    def running(self) -> bool:
        return self.status == "running"


def _state(container: Container) -> ContainerState:
    attrs: dict[str, Any] = container.attrs
    ports: dict[int, int] = {}
    for key, bindings in (attrs.get("HostConfig", {}).get("PortBindings") or {}).items():
        if bindings and bindings[0].get("HostPort"):
            ports[int(key.split("/")[0])] = int(bindings[0]["HostPort"])
    state, config = attrs.get("State", {}), attrs.get("Config", {})
    return ContainerState(
        id=container.id or "",
        name=container.name or "",
        status=state.get("Status", "unknown"),
        labels=dict(config.get("Labels") or {}),
        exit_code=int(state.get("ExitCode", 0)),
        host_ports=ports,
        image=config.get("Image", ""),
        command=list(config.get("Cmd") or []),
        mounts={
            m["Destination"]: m.get("Name", "")
            for m in attrs.get("Mounts") or []
            if m.get("Type") == "volume"
        },
        limits=container_limits.live_limits(attrs),
        env_names=frozenset(e.split("=", 1)[0] for e in config.get("Env") or []),
        restart_count=int(attrs.get("RestartCount", 0)),
        oom_killed=bool(state.get("OOMKilled", False)),
        started_at=state.get("StartedAt")
        if not str(state.get("StartedAt", "")).startswith("0001")
        else None,
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

        container = self._client.containers.create(
            spec.image,
            command=spec.command,
            name=spec.name,
            hostname=spec.name,
            environment=spec.env,
            labels=spec.labels,
            volumes={spec.volume: {"bind": spec.mount_path, "mode": "rw"}},
            ports={f"{c}/tcp": (LOOPBACK, h) for c, h in spec.ports.items()},
            network=self.network,
            # The stubs omit "unless-stopped", which Docker accepts.
            restart_policy={"Name": "unless-stopped"},  # type: ignore[arg-type]
            security_opt=["no-new-privileges:true"],
            pids_limit=spec.pids_limit,
            log_config=LogConfig(type="json-file", config={"max-size": "20m", "max-file": "3"}),
            **container_limits.create_kwargs(spec.limits),
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

    def _containers_of(self, service_id: str) -> list[ContainerState]:
        found = self._client.containers.list(
            all=True, filters={"label": f"{LABEL_SERVICE_ID}={service_id}"}
        )
        return [_state(c) for c in found]

    def _volumes_of(self, service_id: str) -> list[str]:
        found = self._client.volumes.list(filters={"label": f"{LABEL_SERVICE_ID}={service_id}"})
        return [v.name or "" for v in found]

    def _labelled(self, label: str) -> tuple[list[ContainerState], dict[str, dict[str, str]]]:
        containers = self._client.containers.list(all=True, filters={"label": label})
        volumes = self._client.volumes.list(filters={"label": label})
        return [_state(c) for c in containers], {v.name or "": v.attrs["Labels"] for v in volumes}

    def _file_exists(self, name: str, path: str) -> bool:
        try:
            self._client.containers.get(name).get_archive(path)
        except docker.errors.NotFound:
            return False
        return True

    def _exec_run(self, name: str, argv: list[str]) -> ExecResult:
        code, output = self._client.containers.get(name).exec_run(argv, stdout=True, stderr=True)
        assert isinstance(output, bytes)  # not streamed
        return ExecResult(int(code or 0), output.decode(errors="replace"))

    def _logs_tail(self, name: str, lines: int) -> list[str]:
        container = self._get(name)
        if container is None:
            return []
        raw: bytes = container.logs(tail=lines)
        return raw.decode(errors="replace").splitlines()

    # --- async API ----------------------------------------------------------------------------

    @_traced("inspect")
    async def inspect(self, name: str) -> ContainerState | None:
        container = await asyncio.to_thread(self._get, name)
        return _state(container) if container is not None else None

    @_traced("ensure_network")
    async def ensure_network(self) -> None:
        await asyncio.to_thread(self._ensure_network)

    @_traced("create")
    async def create(self, spec: ContainerSpec) -> ContainerState:
        """Create the volume (if missing) and the container, with its files, not started."""
        return await asyncio.to_thread(self._create, spec)

    @_traced("put_files")
    async def put_files(self, name: str, files: dict[str, bytes]) -> None:
        await asyncio.to_thread(self._put_files, name, files)

    @_traced("start")
    async def start(self, name: str) -> ContainerState:
        return await asyncio.to_thread(self._start, name)

    @_traced("stop")
    async def stop(self, name: str, timeout_s: int = 30) -> None:
        await asyncio.to_thread(self._stop, name, timeout_s)

    @_traced("remove")
    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self._remove, name)

    @_traced("remove_volume")
    async def remove_volume(self, name: str) -> None:
        await asyncio.to_thread(self._remove_volume, name)

    @_traced("volume_exists")
    async def volume_exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._volume_exists, name)

    @_traced("containers_of")
    async def containers_of(self, service_id: str) -> list[ContainerState]:
        """Every container labelled as the service's (primary and replicas, any state)."""
        return await asyncio.to_thread(self._containers_of, service_id)

    @_traced("volumes_of")
    async def volumes_of(self, service_id: str) -> list[str]:
        return await asyncio.to_thread(self._volumes_of, service_id)

    @_traced("labelled")
    async def labelled(self, label: str) -> tuple[list[ContainerState], dict[str, dict[str, str]]]:
        """Containers (any state) and volumes (name → labels) carrying `label` (`key=value`)."""
        return await asyncio.to_thread(self._labelled, label)

    @_traced("file_exists")
    async def file_exists(self, name: str, path: str) -> bool:
        """Whether `path` exists in the container (running or not), volumes included."""
        return await asyncio.to_thread(self._file_exists, name, path)

    @_traced("exec_run")
    async def exec_run(self, name: str, argv: list[str], timeout_s: float = 150.0) -> ExecResult:
        """Run `argv` inside the running container `name`. Docker records the arguments
        (`docker inspect` of the exec): never pass a secret; put it in a file instead. The
        command should bound itself too: the timeout stops the wait, not the process."""
        return await asyncio.wait_for(asyncio.to_thread(self._exec_run, name, argv), timeout_s)

    @_traced("host_info")
    async def host_info(self) -> dict[str, Any]:
        """This Docker host's CPUs and memory (what caps are judged against)."""
        info = await asyncio.to_thread(self._client.info)
        return {"cpus": int(info.get("NCPU", 0)), "memory_bytes": int(info.get("MemTotal", 0))}

    @_traced("update_limits")
    async def update_limits(self, name: str, limits: DockerLimits) -> None:
        """Set caps live (running or stopped container); `LimitUpdateError` when Docker refuses.
        A lifted memory cap is raised to `LIFTED_MEMORY`; Docker 20.10 cannot lift a CPU cap
        live: recreate the container for that."""
        await asyncio.to_thread(container_limits.update, self._client, name, limits)

    @_traced("usage_sample")
    async def usage_sample(self, name: str) -> dict[str, Any]:
        """CPU and memory usage of a running container (about a second: two samples)."""
        return await asyncio.to_thread(container_limits.usage_sample, self._client, name)

    @_traced("oom_kills_between")
    async def oom_kills_between(self, since: int, until: int) -> list[str]:
        return await asyncio.to_thread(
            container_limits.oom_kills_between, self._client, since, until
        )

    @_traced("logs_tail")
    async def logs_tail(self, name: str, lines: int = 20) -> list[str]:
        return await asyncio.to_thread(self._logs_tail, name, lines)
