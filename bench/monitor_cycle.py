"""One health-monitor cycle over 50 services (PostgreSQL, Redis, S3): wall time and the monitor
process's CPU per service per cycle, against a bare liveness call per service (PostgreSQL
`SELECT 1` as the admin over TLS, Redis `PING`, S3 `ListBuckets`) made by the same process, with
the same concurrency, in the same run.

Self-contained: it starts its own nats-server, control-plane PostgreSQL (container) and the
API and provisioner as subprocesses, creates the services **through the API** (the real
provisioning path), then drives the monitor's own code in this process: `claim_due` over every
service, each claimed one through `probe_service` (container state, the engine probe as the
least-privilege identity, metrics, the WAL probe for PostgreSQL, events published), `BENCH_CYCLES`
times after one warm-up. The health projector runs in the API process: its CPU is not counted,
nor Docker's or the services' own. Everything it created is deleted at the end.

Environment: BENCH_POSTGRES (15), BENCH_REDIS (30), BENCH_S3 (5), BENCH_CYCLES (3),
BENCH_CONCURRENCY (8, the monitor's default). Needs the images (`make images`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx
import redis.asyncio as aioredis
from temps_monitor.context import Monitor
from temps_monitor.cycle import guarded_probe
from temps_monitor.schedule import claim_due, enrol
from temps_monitor.settings import MonitorSettings
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.credentials import ServerLayout, ensure_bus_files, server_dir
from temps_shared.crypto import KeyRing
from temps_shared.engines.s3_buckets import endpoint_url, s3_client
from temps_shared.messages import Role
from temps_shared.runtime import DockerRuntime
from temps_shared.store.certificate_authority import ensure_installation_ca
from temps_shared.store.pool import create_pool

COUNTS = {
    "postgres": int(os.environ.get("BENCH_POSTGRES", "15")),
    "redis": int(os.environ.get("BENCH_REDIS", "30")),
    "s3": int(os.environ.get("BENCH_S3", "5")),
}
CYCLES = int(os.environ.get("BENCH_CYCLES", "3"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
PARAMETERS = {"postgres": {"replicas": 0, "memory_mb": 128}, "redis": {"memory_mb": 32}, "s3": {}}
RUN = uuid.uuid4().hex[:4]
LABEL = "io.temps.bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.5)
    raise SystemExit(f"timed out after {timeout_s:.0f}s waiting for {what}")


@contextlib.contextmanager
def control_plane(client: docker.DockerClient, workdir: Path) -> Iterator[dict[str, str]]:
    """nats-server and a control-plane PostgreSQL, removed afterwards."""
    nats_port, db_port = free_port(), free_port()
    nats_bin = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    data_dir = workdir / "data"
    layout = ServerLayout(f"127.0.0.1:{nats_port}", str(workdir / "js"), str(server_dir(data_dir)))
    ensure_bus_files(data_dir, layout)  # as `make up` does: TLS, a user per role
    nats = subprocess.Popen(
        [nats_bin, "-c", str(server_dir(data_dir) / "nats-server.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = client.containers.run(
        "temps/postgres:15",
        detach=True,
        name=f"bench-controlplane-{RUN}",
        environment={
            "POSTGRES_USER": "temps",
            "POSTGRES_PASSWORD": "temps",
            "POSTGRES_DB": "temps",
        },
        ports={"5432/tcp": ("127.0.0.1", db_port)},
        labels={LABEL: "true"},
    )
    try:
        yield {
            "TEMPS_DATABASE_URL": f"postgresql://temps:temps@127.0.0.1:{db_port}/temps",
            "TEMPS_NATS_URL": f"tls://127.0.0.1:{nats_port}",
            "TEMPS_DATA_DIR": str(data_dir),
            "TEMPS_SERVICE_ADDRESSING": "loopback",
            "TEMPS_LOCAL_PORT_RANGE": "23000-23999",
            "TEMPS_LOG_LEVEL": "WARNING",
        }
    finally:
        db.remove(force=True, v=True)
        nats.terminate()
        nats.wait(timeout=10)


@contextlib.contextmanager
def platform_processes(env: dict[str, str], workdir: Path) -> Iterator[None]:
    procs = []
    for module in ("temps_api", "temps_provisioner"):
        log = (workdir / f"{module}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", module],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def create_services(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    created = []
    for service_type, count in COUNTS.items():
        for n in range(count):
            body = {
                "name": f"bench-{RUN}-{service_type[:2]}{n:02d}",
                "service_type": service_type,
                "parameters": PARAMETERS[service_type],
            }
            response = await api.post("/api/external-services", json=body)
            response.raise_for_status()
            created.append(response.json())

    async def all_operational() -> bool:
        listed = (await api.get("/api/external-services")).json()
        ours = [s for s in listed if s["name"].startswith(f"bench-{RUN}-")]
        failed = [s for s in ours if s["status"] == "failed"]
        if failed:
            raise SystemExit(f"{failed[0]['name']} failed: {failed[0]['status_reason']}")
        return len(ours) == len(created) and all(s["status"] == "operational" for s in ours)

    await until(all_operational, 900, "every service to be operational")
    return created


async def delete_services(api: httpx.AsyncClient, services: list[dict[str, Any]]) -> None:
    for service in services:
        await api.delete(f"/api/external-services/{service['id']}")

    async def all_gone() -> bool:
        listed = (await api.get("/api/external-services")).json()
        return not [s for s in listed if s["name"].startswith(f"bench-{RUN}-")]

    await until(all_gone, 600, "every service to be deleted")


async def bare_probe(
    api: httpx.AsyncClient, service: dict[str, Any]
) -> Callable[[], Awaitable[None]]:
    """The baseline: the cheapest liveness call per engine, as the admin, over the same path."""
    creds = (await api.get(f"/api/external-services/{service['id']}/credentials")).json()
    info = service["connection_info"]
    if service["service_type"] == "postgres":
        context = ssl.create_default_context(cadata=creds["ca_certificate"])

        async def postgres() -> None:
            conn = await asyncpg.connect(creds["local_connection_url"].split("?")[0], ssl=context)
            await conn.fetchval("SELECT 1")
            await conn.close()

        return postgres
    if service["service_type"] == "redis":

        async def ping() -> None:
            client = aioredis.Redis(
                port=info["local_port"], username=creds["username"], password=creds["password"]
            )
            await client.ping()
            await client.aclose()

        return ping
    client = s3_client(
        endpoint_url("127.0.0.1", info["local_port"]), creds, creds["ca_certificate"]
    )

    async def list_buckets() -> None:
        await asyncio.to_thread(client.list_buckets)

    return list_buckets


async def bounded(calls: list[Callable[[], Awaitable[None]]]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


async def measure(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Wall and CPU seconds of `work` (this process, every thread)."""
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - wall, time.process_time() - cpu


@contextlib.asynccontextmanager
async def monitor(env: dict[str, str]) -> AsyncIterator[Monitor]:
    fields: dict[str, Any] = {k.removeprefix("TEMPS_").lower(): v for k, v in env.items()}
    settings = MonitorSettings(**fields, monitor_concurrency=CONCURRENCY)
    keyring = KeyRing.from_data_dir(settings.data_dir)
    pool = await create_pool(settings.database_dsn(), max_size=CONCURRENCY + 4)
    nc = await connect_nats(
        settings.nats_url, Role.MONITOR, settings.data_dir, name="bench-monitor"
    )
    client = docker.from_env()
    executor = ThreadPoolExecutor(CONCURRENCY)
    try:
        yield Monitor(
            pool=pool,
            js=nc.jetstream(),
            runtime=DockerRuntime(client, settings.docker_network),
            keyring=keyring,
            ca_pem=(await ensure_installation_ca(pool, keyring, settings.data_dir)).cert_pem,
            settings=settings,
            s3_executor=executor,
        )
    finally:
        await nc.drain()
        await pool.close()
        client.close()
        executor.shutdown()


async def monitor_cycle(m: Monitor) -> int:
    """Everything due now, claimed and probed as a replica's loop does it."""
    await enrol(m.pool, m.settings.monitor_period_s)
    await m.pool.execute("UPDATE monitor_schedule SET next_probe_at = now()")
    claimed = await claim_due(m.pool, 10_000, m.settings.monitor_period_s, "bench")
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(service_id: uuid.UUID) -> None:
        async with gate:
            await guarded_probe(m, service_id)

    await asyncio.gather(*(one(s) for s in claimed))
    return len(claimed)


async def run(env: dict[str, str]) -> None:
    token_file = Path(env["TEMPS_DATA_DIR"]) / "admin_token"
    await until(lambda: asyncio.to_thread(token_file.exists), 120, "the API's admin token")
    base_url = f"http://127.0.0.1:{env['TEMPS_API_PORT']}"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as api:
        await until(lambda: _ok(api), 120, "the API")
        started = time.monotonic()
        services = await create_services(api)
        listed = {s["id"]: s for s in (await api.get("/api/external-services")).json()}
        services = [listed[s["id"]] for s in services]
        total = len(services)
        print(f"{total} services operational in {time.monotonic() - started:.0f}s: {COUNTS}")
        try:
            baseline_calls = [await bare_probe(api, s) for s in services]
            async with monitor(env) as m:
                await bounded(baseline_calls)  # warm-up: connections, TLS, boto3 clients
                assert await monitor_cycle(m) == total
                cycles, bare = [], []
                for _ in range(CYCLES):
                    cycles.append(await measure(lambda: _checked_cycle(m, total)))
                    bare.append(await measure(lambda: bounded(baseline_calls)))
                verdicts = await _verdicts(m, total)
            report(total, cycles, bare)
            print(f"  verdicts of the last checks: {verdicts}")
        finally:
            await delete_services(api, services)


async def _ok(api: httpx.AsyncClient) -> bool:
    return (await api.get("/api/health")).status_code == 200


async def _checked_cycle(m: Monitor, total: int) -> None:
    probed = await monitor_cycle(m)
    if probed != total:
        raise SystemExit(f"the cycle claimed {probed} of {total} services")


async def _verdicts(m: Monitor, total: int) -> dict[str, int]:
    """The latest verdict of every service, once the health projector has them all."""
    query = (
        "SELECT h.status, count(*) FROM service_health h JOIN services s ON s.id = h.service_id"
        " WHERE s.name LIKE $1 GROUP BY h.status"
    )

    async def projected() -> bool:
        rows = await m.pool.fetch(query, f"bench-{RUN}-%")
        return bool(sum(r["count"] for r in rows) == total)

    await until(projected, 60, "the health projector")
    rows = await m.pool.fetch(query, f"bench-{RUN}-%")
    return {r["status"]: r["count"] for r in rows}


def report(total: int, cycles: list[tuple[float, float]], bare: list[tuple[float, float]]) -> None:
    wall = statistics.median(w for w, _ in cycles)
    cpu = statistics.median(c for _, c in cycles)
    bare_wall = statistics.median(w for w, _ in bare)
    bare_cpu = statistics.median(c for _, c in bare)
    print(f"concurrency {CONCURRENCY}, {len(cycles)} measured cycles (medians):")
    print(
        f"  monitor cycle: {wall:.2f}s wall = {wall / total * 1000:.1f} ms/service;"
        f" CPU {cpu:.2f}s = {cpu / total * 1000:.1f} ms/service/cycle"
    )
    print(
        f"  bare liveness: {bare_wall:.2f}s wall = {bare_wall / total * 1000:.1f} ms/service;"
        f" CPU {bare_cpu:.2f}s = {bare_cpu / total * 1000:.1f} ms/service"
    )
    print(f"  ratio monitor/bare: wall {wall / bare_wall:.1f}x, CPU {cpu / bare_cpu:.1f}x")
    print(f"  at the default 30 s period: {cpu / 30 * 100:.2f}% of one core for {total} services")


def main() -> int:
    client = docker.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="temps-bench-monitor-"))
    try:
        with control_plane(client, workdir) as env:
            env["TEMPS_API_PORT"] = str(free_port())
            with platform_processes(env, workdir):
                asyncio.run(run(env))
    finally:
        # A safety net if deleting through the API did not finish.
        for container in client.containers.list(all=True, filters={"label": "io.temps.managed"}):
            if f"-bench-{RUN}-" in (container.name or ""):
                container.remove(force=True)
        for volume in client.volumes.list(filters={"label": "io.temps.managed"}):
            if f"-bench-{RUN}-" in (volume.name or ""):
                volume.remove(force=True)
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
