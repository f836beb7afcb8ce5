"""The CLI's day-2 commands as a user runs them (the installed `temps` in a subprocess) against
the in-process platform, on one small real Redis: update, resize, scale, resources set and
cleared (as Docker holds them), health, runtime, stats, logs -f, tokens, audit, completion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.conftest import Platform
from tests.support import RUN_PREFIX as P
from tests.support import credentials

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEMPS = str(Path(sys.executable).parent / "temps")
MIB = 1024 * 1024


def _env(platform: Platform, **extra: str) -> dict[str, str]:
    token = (Path(platform.env["TEMPS_DATA_DIR"]) / "admin_token").read_text().strip()
    return {**os.environ, "TEMPS_API_URL": platform.base_url, "TEMPS_TOKEN": token, **extra}


async def _start(platform: Platform, *args: str, **env: str) -> asyncio.subprocess.Process:
    # Not subprocess.run: the API answers from this event loop.
    return await asyncio.create_subprocess_exec(
        TEMPS,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(platform, **env),
    )


async def temps(
    platform: Platform, *args: str, timeout_s: float = 240, **env: str
) -> tuple[int, str, str]:
    """Exit code, stdout, stderr."""
    proc = await _start(platform, *args, **env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def temps_json(platform: Platform, *args: str) -> Any:
    code, out, err = await temps(platform, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
async def redis(platform: Platform, api: httpx.AsyncClient) -> AsyncIterator[dict[str, Any]]:
    created = await temps_json(
        platform, "services", "create", f"{P}day2", "--type", "redis", "-p", "memory_mb=64",
        "--wait",
    )  # fmt: skip
    assert created["status"] == "operational"
    yield created
    await api.delete(f"/api/external-services/{created['id']}")


def _host_config(docker_client: docker.DockerClient, name: str) -> dict[str, Any]:
    config: dict[str, Any] = docker_client.containers.get(name).attrs["HostConfig"]
    return config


async def test_update_resize_and_scale(platform: Platform, redis: dict[str, Any]) -> None:
    name = redis["name"]
    updated = await temps_json(
        platform, "services", "update", name, "-p", "eviction=allkeys-lru", "--wait"
    )
    assert updated["parameters"]["eviction"] == "allkeys-lru"
    resized = await temps_json(platform, "services", "resize", name, "--memory", "96MB", "--wait")
    assert resized["parameters"]["memory_mb"] == 96
    assert resized["status"] == "operational"
    # Sizes an engine does not have, and replicas on Redis, are refused before any request.
    code, _, err = await temps(platform, "services", "resize", name, "--storage", "1GB")
    assert (code, err) == (2, "error: a redis service has no storage to resize\n")
    code, _, err = await temps(platform, "services", "scale", name, "--replicas", "1")
    assert (code, err) == (2, "error: only PostgreSQL has read replicas, not redis\n")


async def test_resources_set_and_cleared_as_docker_holds_them(
    platform: Platform, redis: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    name = redis["name"]
    code, out, err = await temps(
        platform, "services", "resources", name, "--memory-mb", "128", "--cpus", "0.5"
    )
    assert code == 0, err
    assert "primary" in out
    assert "applied" in out
    runtime = await temps_json(platform, "services", "runtime", name)
    container = runtime["members"][0]["container_name"]
    held = _host_config(docker_client, container)
    assert (held["Memory"], held["NanoCpus"]) == (128 * MIB, 500_000_000)
    # A cap not named keeps its value.
    answer = await temps_json(platform, "services", "resources", name, "--cpus", "1")
    assert answer["limits"] == {"memory_mb": 128, "swap_mb": None, "cpus": 1.0}
    shown = await temps_json(platform, "services", "resources", name)
    assert (shown["memory_mb"], shown["cpus"]) == (128, 1.0)

    cleared = await temps_json(platform, "services", "resources", name, "--clear")
    assert [m["outcome"] for m in cleared["applied"]] == ["applied"]
    assert cleared["applied"][0]["recreated"] is True  # Docker cannot lift a memory cap live
    held = _host_config(docker_client, container)
    assert (held["Memory"], held["NanoCpus"]) == (0, 0)


async def test_health_runtime_and_stats(platform: Platform, redis: dict[str, Any]) -> None:
    name = redis["name"]
    health = await temps_json(platform, "services", "health", name)
    assert health["health"]["status"] == "operational"
    assert health["wal_health"] is None  # PostgreSQL only
    code, out, err = await temps(platform, "services", "runtime", name)
    assert code == 0, err
    assert "primary" in out
    assert "running" in out

    code, out, err = await temps(
        platform, "services", "stats", name, "--watch", "--count", "2", "--interval", "0.5",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    samples = [json.loads(line) for line in out.splitlines()]
    assert len(samples) == 2
    assert all(s["members"][0]["memory_usage_bytes"] > 0 for s in samples)
    code, out, err = await temps(platform, "services", "stats", name, "--watch", "--count", "2")
    assert code == 0, err
    assert "MiB" in out


async def _read_until(stream: asyncio.StreamReader, marker: str, timeout_s: float) -> list[str]:
    """Lines up to the next one containing `marker` (the first line, for "")."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not (lines and marker in lines[-1]):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} within {timeout_s}s; got {lines}"
        raw = await asyncio.wait_for(stream.readline(), remaining)
        assert raw, f"the output ended before {marker!r}; got {lines}"
        lines.append(raw.decode().rstrip("\n"))
    return lines


async def test_logs_follow_prints_new_lines_once_until_ctrl_c(
    platform: Platform, api: httpx.AsyncClient, redis: dict[str, Any]
) -> None:
    creds = await credentials(api, redis["id"])
    proc = await _start(platform, "services", "logs", redis["name"], "-f", "--tail", "3")
    assert proc.stdout is not None
    saved = "Background saving terminated with success"
    try:
        first = await _read_until(proc.stdout, "", 30)  # the tail, before any new line
        # Real new log lines: each BGSAVE makes Redis log its start and its end.
        async with aioredis.Redis.from_url(creds["local_connection_url"]) as admin:
            await admin.bgsave()
            seen = await _read_until(proc.stdout, saved, 30)
            await admin.bgsave()
            seen += await _read_until(proc.stdout, saved, 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)  # Ctrl-C ends the follow, cleanly
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    output = first + seen + rest.decode().splitlines()
    assert len([line for line in output if saved in line]) == 2  # each new line once
    assert output.count(first[0]) == 1  # the tail is not printed again by later polls


async def test_tokens_create_list_and_revoke(platform: Platform) -> None:
    created = await temps_json(
        platform, "tokens", "create", f"{P}cli", "-p", "external_services:read",
        "--expires-in", "1h",
    )  # fmt: skip
    assert created["expires_at"] is not None
    listed = await temps_json(platform, "tokens", "list")
    assert created["id"] in [t["id"] for t in listed]
    code, _, err = await temps(platform, "services", "list", TEMPS_TOKEN=created["token"])
    assert code == 0, err

    code, _, err = await temps(platform, "tokens", "revoke", f"{P}cli")
    assert code == 0, err
    code, _, err = await temps(platform, "services", "list", TEMPS_TOKEN=created["token"])
    assert code == 4, err
    code, _, err = await temps(platform, "tokens", "revoke", f"{P}cli")
    assert code == 3, err


async def test_audit_names_the_services_changes(platform: Platform, redis: dict[str, Any]) -> None:
    await temps_json(platform, "services", "update", redis["name"], "-p", "maxclients=500")
    entries = await temps_json(platform, "audit", "--service", redis["name"], "--limit", "5")
    assert 1 <= len(entries) <= 5
    assert {e["target"] for e in entries} == {redis["id"]}
    assert entries[0]["action"] == "service.update"
    assert entries[0]["details"] == {"parameters": {"maxclients": 500}}


async def test_completion_of_service_names_fails_silently_without_an_api(
    platform: Platform, redis: dict[str, Any]
) -> None:
    words = f"temps services show {P}day"
    complete = {"_TEMPS_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "3"}
    code, out, err = await temps(platform, **complete)
    assert (code, out.split(), err) == (0, [redis["name"]], "")
    code, out, err = await temps(platform, **complete, TEMPS_API_URL="http://127.0.0.1:9")
    assert (code, out.strip(), err) == (0, "", "")
