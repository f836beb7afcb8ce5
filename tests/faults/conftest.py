"""A platform whose every part can be killed: nats-server, the control-plane PostgreSQL
container, and the API, provisioner and monitor as subprocesses (restarted like the compose
stack's `restart: unless-stopped`). The managed services are real Docker containers."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import docker
import httpx
import pytest
from nats.aio.client import Client
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.credentials import ServerLayout, ensure_bus_files, server_dir
from temps_shared.messages import Role

from tests.integration.conftest import _nats_server, admin_token, docker_client
from tests.support import RUN_PORT_RANGE, RUN_PREFIX, TEST_LABEL, free_port

__all__ = ["docker_client"]  # the integration tier's fixture, re-exported for this tier

ROOT = Path(__file__).resolve().parents[2]
# Short periods, so a trial sees the self-healing paths within seconds.
RESYNC_PERIOD_S = 5.0
MONITOR_PERIOD_S = 3.0
# Test-only switch: `TEMPS_FAULT_BREAK=outbox` runs the API from tests/faults/broken_api.py, a
# build whose outbox relay marks rows published before it publishes them (at most once) — the
# suite must then fail. Never set in CI.
BREAK = os.environ.get("TEMPS_FAULT_BREAK", "")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s}s")


class NatsServer:
    """nats-server as `make up` configures it, killable and restarted on its store and port."""

    def __init__(self, data_dir: Path, store_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        layout = ServerLayout(
            listen=f"127.0.0.1:{self.port}",
            store_dir=str(store_dir),
            files_dir=str(server_dir(data_dir)),
        )
        ensure_bus_files(data_dir, layout)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = _nats_server(["-c", str(server_dir(self.data_dir) / "nats-server.conf")])
        _wait_port(self.port, 30, "nats-server")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class ControlPlaneDb:
    """The control-plane PostgreSQL in a container on a fixed loopback port: `docker kill` +
    `docker start` keeps its data (the container's own volume) and its address."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.port = free_port()
        password = secrets.token_hex(16)
        self.url = f"postgresql://temps:{password}@127.0.0.1:{self.port}/temps"
        self.container = client.containers.run(
            "temps/postgres:15",
            detach=True,
            name=f"{RUN_PREFIX}faults-controlplane",
            environment={
                "POSTGRES_USER": "temps",
                "POSTGRES_PASSWORD": password,
                "POSTGRES_DB": "temps",
            },
            ports={"5432/tcp": ("127.0.0.1", self.port)},
            labels={TEST_LABEL: "control-plane"},
        )

    async def wait_ready(self, timeout_s: float = 60) -> None:
        """Ready over TCP (an init-time server listens on its socket only)."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                conn = await asyncpg.connect(self.url, timeout=2)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return
        raise AssertionError(f"control-plane database not ready in {timeout_s}s: {last!r}")

    def kill(self) -> None:
        self.container.kill()

    def start(self) -> None:
        self.container.start()

    def pause(self) -> None:
        self.container.pause()

    def unpause(self) -> None:
        self.container.unpause()

    def ensure_running(self) -> None:
        self.container.reload()
        if self.container.status == "paused":
            self.container.unpause()
        elif self.container.status != "running":
            self.container.start()

    def remove(self) -> None:
        self.container.remove(force=True, v=True)


# The platform's processes: module to run, by role name.
MODULES = {
    "api": "tests.faults.broken_api" if BREAK == "outbox" else "temps_api",
    "provisioner": "temps_provisioner",
    "monitor": "temps_monitor",
}


class Supervisor:
    """The API, the provisioner and the monitor as subprocesses; a dead one is restarted (as
    compose's restart policy would), and each death not caused by the suite is counted."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def start(self, role: str) -> None:
        self.starts += 1
        log = open(self.logs / f"{role}-{self.starts}.log", "wb")  # noqa: SIM115
        self.procs[role] = subprocess.Popen(
            [sys.executable, "-m", MODULES[role]],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own descriptor

    def kill(self, role: str) -> None:
        proc = self.procs[role]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def restart_dead(self, skip: set[str] | None = None) -> list[str]:
        """Start every role whose process is gone (but those in `skip`); the roles that had died
        on their own."""
        died = []
        for role in MODULES:
            proc = self.procs.get(role)
            if role in (skip or set()):
                continue
            if proc is None or proc.poll() is not None:
                if proc is not None and proc.returncode != -signal.SIGKILL:
                    died.append(f"{role} (exit {proc.returncode})")
                self.start(role)
        return died

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class Cluster:
    """Everything a trial may kill, and how to bring it back."""

    def __init__(
        self,
        docker: docker.DockerClient,
        db: ControlPlaneDb,
        nats: NatsServer,
        supervisor: Supervisor,
        data_dir: Path,
        api_port: int,
    ) -> None:
        self.docker = docker
        self.db = db
        self.nats = nats
        self.supervisor = supervisor
        self.data_dir = data_dir
        self.api_url = f"http://127.0.0.1:{api_port}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {admin_token(self.data_dir)}"},
            timeout=15,
            limits=httpx.Limits(keepalive_expiry=1),  # uvicorn drops idle ones after 5 s
        )

    async def api_healthy(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.api_url, timeout=3) as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get("/api/health")).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        return False

    async def restore(self, timeout_s: float = 90) -> list[str]:
        """Every part up again (NATS, database, processes) and the API answering; the processes
        that had died on their own."""
        if self.nats.proc is None or self.nats.proc.poll() is not None:
            self.nats.start()
        await asyncio.to_thread(self.db.ensure_running)
        await self.db.wait_ready()
        died = self.supervisor.restart_dead()
        if not await self.api_healthy(timeout_s):
            raise AssertionError(f"the API did not become healthy within {timeout_s}s")
        return died

    async def bus(self, role: Role) -> Client:
        return await connect_nats(self.nats.url, role, self.data_dir, name=f"faults-{role}")


@pytest.fixture(scope="session")
async def cluster(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("faults-data")
    logs = tmp_path_factory.mktemp("faults-logs")
    db = ControlPlaneDb(docker_client)
    nats = NatsServer(data_dir, tmp_path_factory.mktemp("faults-jetstream"))
    supervisor: Supervisor | None = None
    try:
        nats.start()
        await db.wait_ready()
        api_port = free_port()
        env = {
            "TEMPS_DATABASE_URL": db.url,
            "TEMPS_NATS_URL": nats.url,
            "TEMPS_DATA_DIR": str(data_dir),
            "TEMPS_SERVICE_ADDRESSING": "loopback",
            "TEMPS_LOCAL_PORT_RANGE": "{}-{}".format(*RUN_PORT_RANGE),
            "TEMPS_COMMAND_ACK_WAIT_S": "5",
            "TEMPS_LOG_LEVEL": "WARNING",
            "TEMPS_API_PORT": str(api_port),
            "TEMPS_RESYNC_PERIOD_S": str(RESYNC_PERIOD_S),
            "TEMPS_RESYNC_POLL_S": "0.5",
            "TEMPS_MONITOR_PERIOD_S": str(MONITOR_PERIOD_S),
            "TEMPS_MONITOR_PROBE_TIMEOUT_S": "2",
        }
        supervisor = Supervisor(env, logs)
        supervisor.start("api")  # first: it runs the migrations and declares the streams
        running = Cluster(docker_client, db, nats, supervisor, data_dir, api_port)
        assert await running.api_healthy(90), f"the API did not start (logs in {logs})"
        supervisor.start("provisioner")
        supervisor.start("monitor")
        print(f"\nfault suite: logs in {logs}")
        yield running
    finally:
        if supervisor is not None:
            supervisor.stop_all()
        nats.stop()
        db.remove()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.faults.trial import REPORTS  # here: trial.py imports this module

    if not REPORTS:
        return
    longest = max(REPORTS, key=lambda r: r.longest_convergence_s)
    faults = sum(sum("FAULT" in line for line in r.faults) for r in REPORTS)
    exits = [e for r in REPORTS for e in r.unexpected_exits]
    terminalreporter.write_line(
        f"fault suite: {len(REPORTS)} trials passed, {faults} faults injected,"
        f" {sum(r.accepted for r in REPORTS)} requests accepted"
        f" ({sum(r.doubtful for r in REPORTS)} after a lost answer);"
        f" longest convergence {longest.longest_convergence_s:.1f}s"
        f" ({longest.longest_service}, seed {longest.seed});"
        f" trial durations {min(r.duration_s for r in REPORTS):.0f}-"
        f"{max(r.duration_s for r in REPORTS):.0f}s;"
        f" processes that died on their own: {exits or 'none'}"
    )
