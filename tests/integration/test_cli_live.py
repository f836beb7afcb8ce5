"""Live progress and shells from the installed `temps` against the in-process platform:
`events -f` shows a create's steps in order, `--wait` prints the steps and the connection
string, `connect -c` runs one statement on PostgreSQL (local psql and the engine's image) and
Redis (redis-cli from the image: none is installed on the host)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import RUN_PREFIX as P
from tests.support import wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEMPS = str(Path(sys.executable).parent / "temps")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _env(platform: Any) -> dict[str, str]:
    token = (Path(platform.env["TEMPS_DATA_DIR"]) / "admin_token").read_text().strip()
    return {**os.environ, "TEMPS_API_URL": platform.base_url, "TEMPS_TOKEN": token}


async def temps(platform: Any, *args: str, timeout_s: float = 240) -> tuple[int, str, str]:
    """Exit code, stdout, stderr. Not subprocess.run: the API answers from this event loop."""
    proc = await asyncio.create_subprocess_exec(
        TEMPS,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(platform),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), ANSI.sub("", err.decode())


@pytest.fixture(scope="module")
async def redis_service(platform: Any) -> dict[str, Any]:
    """A Redis created with `--wait` (its progress on stderr kept for the test below)."""
    code, out, err = await temps(
        platform, "services", "create", f"{P}live-kv", "--type", "redis", "--wait", "--json"
    )
    assert code == 0, err
    return {**json.loads(out), "progress": err}


async def test_create_wait_shows_each_step_and_ends_with_the_address(
    redis_service: dict[str, Any],
) -> None:
    progress = redis_service["progress"]
    steps = [
        "primary: container created",
        "primary: started",
        "primary: accepting connections",
        "users configured",
        "operational on 127.0.0.1:",
    ]
    positions = [progress.find(step) for step in steps]
    assert -1 not in positions, progress
    assert positions == sorted(positions), progress
    tls_port = redis_service["connection_info"]["local_tls_port"]
    assert re.search(rf"operational in [0-9.]+s — rediss://127\.0\.0\.1:{tls_port}\n", progress)


async def test_events_follow_shows_a_creates_steps_in_order(
    platform: Any, api: httpx.AsyncClient
) -> None:
    name = f"{P}live-db"
    follower = await asyncio.create_subprocess_exec(
        TEMPS,
        "events",
        "-f",
        "-n",
        "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(platform),
    )
    assert follower.stdout is not None
    assert follower.stderr is not None
    try:
        started = await asyncio.wait_for(follower.stderr.readline(), 30)
        assert b"following new events" in started
        created = await api.post(
            "/api/external-services",
            json={"name": name, "service_type": "postgres", "parameters": {"replicas": 0}},
        )
        assert created.status_code == 202, created.text
        lines: list[str] = []
        while not any("ServiceProvisioned" in line for line in lines):
            raw = await asyncio.wait_for(follower.stdout.readline(), 120)
            assert raw, f"the follow ended: {lines}"
            line = raw.decode()
            if f"  {name}  " in line:
                lines.append(line)
    finally:
        follower.terminate()
        await asyncio.wait_for(follower.wait(), 10)
    order = [
        "ServiceRequested  postgres",
        "primary: container created",
        "primary: started",
        "primary: accepting connections",
        "users configured",
        "ServiceProvisioned  operational on 127.0.0.1:",
    ]
    found = [next((i for i, line in enumerate(lines) if step in line), -1) for step in order]
    assert -1 not in found, lines
    assert found == sorted(found), lines
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ", lines[0]), lines[0]


async def test_connect_runs_one_statement_on_postgres(
    platform: Any, api: httpx.AsyncClient
) -> None:
    name = f"{P}live-db"
    sid = next(
        s["id"] for s in (await api.get("/api/external-services")).json() if s["name"] == name
    )
    await wait_status(api, sid, "operational")
    code, out, err = await temps(platform, "connect", name, "-c", "select 'answer: ' || 41 + 1")
    assert (code, err) == (0, ""), err
    assert "answer: 42" in out
    # The engine's own image, as on a host without psql; an error is the client's exit code.
    code, out, err = await temps(
        platform,
        "connect",
        name,
        "--from-image",
        "-c",
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )
    assert code == 0, err
    assert " t\n" in out
    code, _, err = await temps(platform, "connect", name, "-c", "select * from no_such_table")
    assert code == 1
    assert "no_such_table" in err


async def test_connect_runs_one_command_on_redis_from_its_image(
    platform: Any, redis_service: dict[str, Any]
) -> None:
    name = redis_service["name"]
    code, out, err = await temps(platform, "connect", name, "-c", "SET greeting hello")
    assert code == 0, err
    code, out, err = await temps(platform, "connect", name, "-c", "GET greeting")
    assert (code, out) == (0, "hello\n"), err
