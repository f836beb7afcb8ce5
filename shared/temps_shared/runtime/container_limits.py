"""Docker calls about resources: live caps, usage samples, OOM kills (blocking; the runtime
adapter runs them off the event loop)."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import docker
import docker.errors

from temps_shared.ids import LABEL_MANAGED
from temps_shared.resources import LIFTED_MEMORY, DockerLimits

log = logging.getLogger(__name__)


class LimitUpdateError(Exception):
    """Docker refused the update (e.g. a memory cap below the current usage)."""


def live_limits(attrs: dict[str, Any]) -> DockerLimits:
    host = attrs.get("HostConfig") or {}
    memory = int(host.get("Memory") or 0)
    swap = int(host.get("MemorySwap") or 0)
    return DockerLimits(
        memory=memory,
        memory_swap=swap if swap > 0 else 0,  # -1 means unlimited swap
        nano_cpus=int(host.get("NanoCpus") or 0),
    )


def create_kwargs(limits: DockerLimits) -> dict[str, Any]:
    """Caps for `containers.create` (nothing when uncapped, so Docker's defaults apply)."""
    kwargs: dict[str, Any] = {}
    if limits.memory:
        kwargs["mem_limit"] = limits.memory
        kwargs["memswap_limit"] = limits.memory_swap or limits.memory
    if limits.nano_cpus:
        kwargs["nano_cpus"] = limits.nano_cpus
    return kwargs


def update(client: docker.DockerClient, name: str, limits: DockerLimits) -> None:
    """Set caps on a container, running or stopped, without restarting it. One raw call:
    docker-py's update() cannot send NanoCpus at API 1.41, and mixing it with CpuQuota answers
    409. A memory cap to lift (wanted 0, the container capped) cannot be unset (Docker reads 0
    as "unchanged"): memory and memory+swap go to `LIFTED_MEMORY`, which reads back as no cap."""
    api: Any = client.api  # its raw-request helpers are not in the stubs
    body: dict[str, int] = {}
    if limits.memory:
        body["Memory"] = limits.memory
        body["MemorySwap"] = limits.memory_swap or limits.memory
    elif 0 < live_limits(api.inspect_container(name)).memory < LIFTED_MEMORY:
        body["Memory"] = body["MemorySwap"] = LIFTED_MEMORY
    if limits.nano_cpus:
        body["NanoCpus"] = limits.nano_cpus
    if not body:
        return
    try:
        response = api._post_json(api._url("/containers/{0}/update", name), data=body)
        api._raise_for_status(response)
    except docker.errors.APIError as exc:
        raise LimitUpdateError(exc.explanation or str(exc)) from exc


def _one_shot(client: docker.DockerClient, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], client.api.stats(name, stream=False, one_shot=True))


# The container's cumulative CPU time, read inside it: cgroup v1 in ns, v2 in µs.
_CPU_USAGE = (
    "if [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ];"
    " then echo ns $(cat /sys/fs/cgroup/cpuacct/cpuacct.usage);"
    " else echo us $(sed -n 's/^usage_usec //p' /sys/fs/cgroup/cpu.stat); fi"
)
CPU_INTERVAL_S = 0.5


def _read_cpu_ns(client: docker.DockerClient, name: str) -> int:
    """Nanoseconds of CPU the container has used so far."""
    api = client.api
    run = api.exec_create(name, ["sh", "-c", _CPU_USAGE], stdout=True, stderr=False)
    unit, value = api.exec_start(run["Id"]).decode().split()
    return int(value) * (1000 if unit == "us" else 1)


def _cpu_percent(client: docker.DockerClient, name: str) -> float | None:
    """CPU over `CPU_INTERVAL_S` from the container's own counters, in percent of one core (as
    Docker's formula gives); None if they cannot be read."""
    try:
        first, started = _read_cpu_ns(client, name), time.monotonic()
        time.sleep(CPU_INTERVAL_S)
        second, elapsed = _read_cpu_ns(client, name), time.monotonic() - started
    except (docker.errors.APIError, ValueError):
        return None
    return max(0.0, (second - first) / (elapsed * 1e9) * 100.0)


def usage_sample(client: docker.DockerClient, name: str) -> dict[str, Any]:
    """CPU and memory of one container. Memory comes from Docker's one-shot stats; the CPU rate
    from the container's cgroup counters read twice half a second apart (Docker's own
    two-reading stats take two seconds: it hands out one reading per second), falling back to
    two one-shot readings where the counters cannot be read."""
    stats = _one_shot(client, name)
    cpu_percent = _cpu_percent(client, name)
    cpu = stats.get("cpu_stats") or {}
    online = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or []) or 1
    if cpu_percent is None:
        later = _one_shot(client, name)
        pre, cpu = cpu, later.get("cpu_stats") or {}
        cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
            "total_usage", 0
        )
        system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        cpu_percent = cpu_delta / system_delta * online * 100.0 if system_delta > 0 else 0.0
    memory = stats.get("memory_stats") or {}
    details = memory.get("stats") or {}
    # Page cache is reclaimable: leave it out (cgroup v1 "cache", v2 "inactive_file").
    cache = details.get(
        "total_inactive_file", details.get("inactive_file", details.get("cache", 0))
    )
    used = max(0, int(memory.get("usage", 0)) - int(cache))
    limit = int(memory.get("limit", 0))
    return {
        "cpu_percent": round(cpu_percent, 2),
        "memory_usage_bytes": used,
        "memory_limit_bytes": limit,
        "memory_percent": round(used / limit * 100.0, 2) if limit else 0.0,
        "online_cpus": online,
    }


def oom_kills_between(client: docker.DockerClient, since: int, until: int) -> list[str]:
    """Names of managed containers in which the kernel OOM-killed a process in [since, until).
    A killed backend leaves the container running: only Docker's `oom` event tells. The call
    returns once `until` has passed, so a caller can poll in windows and stop between them."""
    events = client.events(
        decode=True,
        since=since,
        until=until,
        filters={"event": "oom", "label": f"{LABEL_MANAGED}=true", "type": "container"},
    )
    try:
        return [
            name
            for event in events
            if (name := (event.get("Actor") or {}).get("Attributes", {}).get("name", ""))
        ]
    finally:
        events.close()
