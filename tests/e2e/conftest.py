"""The compose stack, brought up by the same script as `make up`, on its own project, port and
data directory so it never touches a platform the developer runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from tests.support import docker_for_tests, free_port

REPO = Path(__file__).resolve().parents[2]
NAME_PREFIX = "e2e-"


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    data_dir: Path
    first_up: str = ""  # what the first `up.sh` printed

    def run(
        self, script: str, *args: str, timeout_s: int = 900
    ) -> subprocess.CompletedProcess[str]:
        """Run a deploy/ script against this stack; fail with its output if it fails."""
        result = subprocess.run(
            [str(REPO / "deploy" / script), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
        return result

    @property
    def token(self) -> str:
        return (self.data_dir / "admin_token").read_text().strip()

    def project_containers(self, client: docker.DockerClient) -> dict[str, str]:
        project = self.env["TEMPS_COMPOSE_PROJECT"]
        found = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        return {c.name or "": c.id or "" for c in found}


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    with docker_for_tests(NAME_PREFIX) as client:
        yield client


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("temps-e2e-data")
    port = free_port()
    env = {
        "TEMPS_COMPOSE_PROJECT": "temps-e2e",
        "TEMPS_API_PORT": str(port),
        "TEMPS_NATS_PORT": str(free_port()),
        "TEMPS_CONTROLPLANE_DB_PORT": str(free_port()),
        "TEMPS_BACKUP_STORE_PORT": str(free_port()),
        "TEMPS_DATA_DIR": str(data_dir),
        # The stack's CLI launcher goes here, not onto the host's PATH.
        "TEMPS_BIN_DIR": str(tmp_path_factory.mktemp("temps-e2e-bin")),
    }
    running = Stack(env=env, base_url=f"http://127.0.0.1:{port}", data_dir=data_dir)
    running.run("compose.sh", "down", "--volumes", "--timeout", "5")  # a known state
    running.first_up = running.run("up.sh").stdout
    yield running
    running.run("compose.sh", "down", "--volumes", "--timeout", "10")


@pytest.fixture(scope="session")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30
    ) as client:
        yield client
