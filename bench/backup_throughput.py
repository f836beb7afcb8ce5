"""Backup throughput: a PostgreSQL database backed up through the platform (POST …/backups →
the backup worker's `pg_dump -Fc` inside the container → zstd → age → multipart upload →
catalogue `completed`) against the same dump by hand, `pg_dump -Fc | zstd | S3 put`, into the
same S3 (SeaweedFS), measured alternately in the same run (baseline, platform, baseline, …) so
the load other work puts on the host hits both alike. Also the backup worker's peak memory
(VmHWM of a fresh `temps-backup` process per database size), which must stay flat as the
database grows.

Self-contained: it starts the parts the integration tests use (nats-server, a control-plane
PostgreSQL container, the API and the provisioner in this process, SeaweedFS `weed mini` on
loopback, the backup worker as a subprocess) — a worker of `make up` would compete for the
backups and its memory could not be told apart. Needs Docker, the images (`make images`) and
the venv. Example:

    python bench/backup_throughput.py --sizes 256,1024 --rounds 2 --json /tmp/backup.json

Disk: about the largest size in the service's volume, plus WAL while it is generated, plus
`rounds` compressed copies in the store's temp directory (removed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import zstandard

ROOT = Path(__file__).resolve().parents[1]
# testcontainers as tests/conftest.py sets it: no reaper (no registry to pull it from; this
# script removes its own container), and this host has /.dockerenv.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
sys.path.insert(0, str(ROOT))  # the test tier's real parts, reused rather than copied

from temps_shared.backups.store import TRANSFER  # noqa: E402  (the worker's multipart shape)
from temps_shared.bus.credentials import ServerLayout, ensure_bus_files, server_dir  # noqa: E402
from testcontainers.community.postgres import PostgresContainer  # noqa: E402

from tests.integration.backup_store import SeaweedStore, seaweedfs_store  # noqa: E402
from tests.integration.conftest import Platform  # noqa: E402
from tests.support import RUN_PORT_RANGE, free_port  # noqa: E402

MB = 1024 * 1024
BASELINE_BUCKET = "bench-baseline"
BENCH_LABEL = "io.temps.bench"
ZSTD_LEVEL = 3  # the worker's (temps_shared.backups.codec.ZSTD_LEVEL)
POLL_S = 0.25
SERVICE_WAIT_S = 180.0
BATCH_ROWS = 250_000

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS events (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    account integer NOT NULL,
    kind text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    note text NOT NULL,
    payload text NOT NULL
)"""
# Wide-ish rows, about as compressible as application data: words from small vocabularies,
# numbers, and hex digests (random, so the dump does not compress to nothing).
INSERT_BATCH = """
INSERT INTO events (created_at, account, kind, amount, note, payload)
SELECT now() - g * interval '1 second',
       (random() * 100000)::int,
       (ARRAY['signup', 'login', 'purchase', 'refund', 'logout', 'view'])[1 + g % 6],
       round((random() * 1000)::numeric, 2),
       'customer ' || g % 5000 || ' from '
           || (ARRAY['Paris', 'Berlin', 'Lisbon', 'Oslo', 'Porto'])[1 + g % 5]
           || ' via ' || (ARRAY['web', 'ios', 'android', 'api'])[1 + g % 4],
       md5(random()::text) || ' ' || md5((g % 1000)::text) || ' '
           || repeat(substr(md5(random()::text), 1, 8), 3)
FROM generate_series($1::bigint, $2::bigint) g"""


@dataclass
class Run:
    baseline_s: float
    baseline_stored_bytes: int
    platform_s: float
    platform_stored_bytes: int
    worker_cpu_s: float = 0.0  # CPU the worker process spent on this backup (load-independent)
    worker_peak_rss_mb: float = 0.0  # the worker's peak during this backup alone

    @property
    def ratio(self) -> float:
        """Platform throughput over the baseline's (same bytes in, so the time ratio)."""
        return self.baseline_s / self.platform_s


@dataclass
class SizeResult:
    target_mb: int
    database_bytes: int
    runs: list[Run] = field(default_factory=list)
    worker_idle_rss_mb: float = 0.0  # the worker's RSS before its first backup
    worker_peak_rss_mb: float = 0.0  # VmHWM of the worker process at this size

    @property
    def ratio_total(self) -> float:
        """All baseline seconds over all platform seconds: steadier than the median of the
        per-round ratios when the host's load changes between the halves of a round."""
        return sum(r.baseline_s for r in self.runs) / sum(r.platform_s for r in self.runs)

    def mb_per_s(self, seconds: float) -> float:
        return self.database_bytes / MB / seconds

    def summary(self) -> dict[str, Any]:
        ratios = [r.ratio for r in self.runs]
        return {
            "target_mb": self.target_mb,
            "database_mb": round(self.database_bytes / MB, 1),
            "runs": [
                {
                    **asdict(r),
                    "baseline_mb_s": round(self.mb_per_s(r.baseline_s), 2),
                    "platform_mb_s": round(self.mb_per_s(r.platform_s), 2),
                    "ratio": round(r.ratio, 3),
                }
                for r in self.runs
            ],
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_total": round(self.ratio_total, 3),
            "worker_idle_rss_mb": round(self.worker_idle_rss_mb, 1),
            "worker_peak_rss_mb": round(self.worker_peak_rss_mb, 1),
        }


# --- the platform's parts -----------------------------------------------------------------


@contextlib.contextmanager
def nats_server(data_dir: Path, store_dir: Path) -> Iterator[str]:
    """The bus as `make up` configures it (TLS, a user per role), on a free loopback port."""
    port = free_port()
    layout = ServerLayout(
        listen=f"127.0.0.1:{port}", store_dir=str(store_dir), files_dir=str(server_dir(data_dir))
    )
    ensure_bus_files(data_dir, layout)
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    proc = subprocess.Popen(
        [binary, "-c", str(server_dir(data_dir) / "nats-server.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"tls://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def control_plane_database() -> Iterator[str]:
    container = PostgresContainer(
        "temps/postgres:15",
        username="temps",
        password=secrets.token_hex(16),
        dbname="temps",
        driver=None,
    ).with_kwargs(labels={BENCH_LABEL: "control-plane"})
    container.ports["5432"] = ("127.0.0.1", free_port())  # type: ignore[assignment]  # docker's
    with container:
        yield container.get_connection_url()


@contextlib.asynccontextmanager
async def running_platform(work: Path, store: SeaweedStore) -> AsyncIterator[Platform]:
    data_dir = work / "data"
    data_dir.mkdir()
    (work / "jetstream").mkdir()
    with nats_server(data_dir, work / "jetstream") as nats_url, control_plane_database() as db:
        platform = Platform(
            {
                "TEMPS_DATABASE_URL": db,
                "TEMPS_NATS_URL": nats_url,
                "TEMPS_DATA_DIR": str(data_dir),
                "TEMPS_SERVICE_ADDRESSING": "loopback",
                "TEMPS_LOCAL_PORT_RANGE": "{}-{}".format(*RUN_PORT_RANGE),
                "TEMPS_LOG_LEVEL": "WARNING",
                "TEMPS_RESYNC_PERIOD_S": "3600",
                "TEMPS_RESYNC_ON_DOWN": "false",
                # No scheduled backups, retention or deadline rounds during the measurement.
                "TEMPS_BACKUP_SCHEDULER_PERIOD_S": "3600",
                "TEMPS_BACKUP_STORE_ENDPOINT": store.endpoint,
                "TEMPS_BACKUP_STORE_ACCESS_KEY": store.access_key,
                "TEMPS_BACKUP_STORE_SECRET_KEY": store.secret_key,
            }
        )
        await platform.start_api()
        await platform.start_provisioner()
        try:
            yield platform
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await platform.stop()


class Worker:
    """`temps-backup` as a subprocess, its memory sampled from /proc."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "temps_backup"],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _status_mb(self, field: str) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        (line,) = [x for x in status.splitlines() if x.startswith(f"{field}:")]
        return int(line.split()[1]) / 1024

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS")

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the process ever had."""
        return self._status_mb("VmHWM")

    def reset_peak(self) -> bool:
        """Start VmHWM afresh (Linux: 5 → /proc/<pid>/clear_refs); False if not allowed."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (/proc/<pid>/stat fields 14 and 15)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --- the database ---------------------------------------------------------------------------


async def connect(creds: dict[str, Any]) -> asyncpg.Connection:
    context = ssl.create_default_context(cadata=creds["ca_certificate"])
    url = creds["local_connection_url"].split("?")[0]
    return await asyncpg.connect(url, ssl=context, command_timeout=1800)


async def grow_to(creds: dict[str, Any], target_mb: int, deadline_s: float) -> int:
    """Insert batches of rows until the database is at least `target_mb`; its size."""
    conn = await connect(creds)
    deadline = time.monotonic() + deadline_s
    try:
        await conn.execute(CREATE_TABLE)
        size_query = "SELECT pg_database_size(current_database())"
        while await conn.fetchval(size_query) < target_mb * MB:
            if time.monotonic() > deadline:
                raise SystemExit(f"the database did not reach {target_mb} MB in {deadline_s}s")
            start = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM events")
            await conn.execute(INSERT_BATCH, start, start + BATCH_ROWS - 1)
        # Hint bits and the visibility map set now, so no dump pays for the first read.
        await conn.execute("VACUUM (FREEZE, ANALYZE) events")
        await conn.execute("CHECKPOINT")
        return int(await conn.fetchval(size_query))
    finally:
        await conn.close()


# --- baseline: pg_dump -Fc | zstd | S3 put, by hand -------------------------------------------


def _zstd_stream(source: IO[bytes]) -> tuple[IO[bytes], subprocess.Popen[bytes] | None]:
    """`source` through zstd: the `zstd` binary if there is one, else python-zstandard."""
    binary = shutil.which("zstd")
    if binary is None:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(source), None
    proc = subprocess.Popen(
        [binary, f"-{ZSTD_LEVEL}", "-q", "-c"], stdin=source, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    return proc.stdout, proc


def baseline(container: str, creds: dict[str, Any], store: SeaweedStore, timeout_s: float) -> Run:
    """Seconds and stored bytes of `pg_dump -Fc | zstd | S3 put` (the platform half is filled
    in by the caller). The password goes through the environment, never argv."""
    key = f"baseline/{uuid.uuid4()}.dump.zst"
    started = time.monotonic()
    dump = subprocess.Popen(
        ["docker", "exec", "-e", "PGPASSWORD", container, "pg_dump", "-h", "127.0.0.1",
         "-p", "5432", "-U", creds["username"], "-Fc", "-d", creds["database"]],
        env={**os.environ, "PGPASSWORD": creds["password"]},
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert dump.stdout is not None
    compressed, zstd = _zstd_stream(dump.stdout)

    def kill_pipeline() -> None:  # a stuck pipeline ends at the deadline, the upload with it
        for proc in (dump, zstd):
            if proc is not None:
                proc.kill()

    timer = threading.Timer(timeout_s, kill_pipeline)
    timer.start()
    try:
        s3 = store.client()
        s3.upload_fileobj(compressed, BASELINE_BUCKET, key, Config=TRANSFER)
        if dump.wait(timeout=30) != 0 or (zstd is not None and zstd.wait(timeout=30) != 0):
            raise SystemExit(f"the baseline pipeline failed (pg_dump {dump.returncode})")
    finally:
        timer.cancel()
        for proc in (dump, zstd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    seconds = time.monotonic() - started
    stored = int(s3.head_object(Bucket=BASELINE_BUCKET, Key=key)["ContentLength"])
    s3.delete_object(Bucket=BASELINE_BUCKET, Key=key)  # keeps the store's disk small
    return Run(seconds, stored, 0.0, 0)


# --- the platform ---------------------------------------------------------------------------


async def platform_backup(api: httpx.AsyncClient, service_id: str, timeout_s: float) -> Run:
    """Seconds from POST …/backups to the catalogue saying `completed`, and the stored size."""
    started = time.monotonic()
    response = await api.post(f"/api/external-services/{service_id}/backups")
    if response.status_code != 202:
        raise SystemExit(f"POST backups: {response.status_code} {response.text}")
    backup_id = response.json()["id"]
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        entry = (await api.get(f"/api/external-services/{service_id}/backups/{backup_id}")).json()
        if entry["state"] == "failed":
            raise SystemExit(f"backup {backup_id} failed: {entry['reason']}")
        if entry["state"] == "completed":
            return Run(0.0, 0, time.monotonic() - started, int(entry["size_bytes"]))
        await asyncio.sleep(POLL_S)
    raise SystemExit(f"backup {backup_id} did not complete in {timeout_s}s")


async def wait_status(api: httpx.AsyncClient, service_id: str, status: str) -> None:
    deadline = time.monotonic() + SERVICE_WAIT_S
    while time.monotonic() < deadline:
        body = (await api.get(f"/api/external-services/{service_id}")).json()
        if body.get("status") == status:
            return
        if body.get("status") == "failed":
            raise SystemExit(f"service failed: {body.get('status_reason')}")
        await asyncio.sleep(POLL_S)
    raise SystemExit(f"service {service_id} not {status} after {SERVICE_WAIT_S}s")


async def delete_service(api: httpx.AsyncClient, service_id: str) -> None:
    await api.delete(f"/api/external-services/{service_id}")
    deadline = time.monotonic() + SERVICE_WAIT_S
    while time.monotonic() < deadline:
        if (await api.get(f"/api/external-services/{service_id}")).status_code == 404:
            return
        await asyncio.sleep(POLL_S)
    print(f"warning: service {service_id} still listed after {SERVICE_WAIT_S}s", file=sys.stderr)


# --- the run --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, work: Path) -> list[SizeResult]:
    results: list[SizeResult] = []
    (work / "store").mkdir()
    with seaweedfs_store(work / "store") as store:
        store.client().create_bucket(Bucket=BASELINE_BUCKET)
        async with running_platform(work, store) as platform, platform.client() as api:
            api.timeout = httpx.Timeout(60)
            name = f"bench-bk-{uuid.uuid4().hex[:6]}"
            created = await api.post(
                "/api/external-services",
                json={
                    "name": name,
                    "service_type": "postgres",
                    "version": "15",
                    "parameters": {"replicas": 0},
                },
            )
            if created.status_code != 202:
                raise SystemExit(f"create: {created.status_code} {created.text}")
            service_id = created.json()["id"]
            try:
                await wait_status(api, service_id, "operational")
                # The backup alone: no test restore after it (its load would fall on the next
                # round) and no scheduled backup in the middle.
                schedule = await api.patch(
                    f"/api/external-services/{service_id}/backups",
                    json={"enabled": False, "verify": "off"},
                )
                if schedule.status_code != 200:
                    raise SystemExit(f"PATCH backups: {schedule.status_code} {schedule.text}")
                creds = (await api.get(f"/api/external-services/{service_id}/credentials")).json()
                container = f"temps-postgres-{name}"
                for target_mb in args.sizes:
                    # A fresh worker per size: its VmHWM is this size's peak alone. Started
                    # first, so it is up before the first backup is asked for.
                    worker = Worker(platform.env, work / f"worker-{target_mb}.log")
                    try:
                        print(f"generating {target_mb} MB …", flush=True)
                        started = time.monotonic()
                        size = await grow_to(creds, target_mb, args.timeout_s)
                        print(
                            f"  database is {size / MB:.0f} MB ({time.monotonic() - started:.0f}s)",
                            flush=True,
                        )
                        result = SizeResult(target_mb, size)
                        result.worker_idle_rss_mb = worker.rss_mb()
                        for round_ in range(1, args.rounds + 1):
                            run = await asyncio.to_thread(
                                baseline, container, creds, store, args.timeout_s
                            )
                            cpu_before, per_round = worker.cpu_s(), worker.reset_peak()
                            measured = await platform_backup(api, service_id, args.timeout_s)
                            run.worker_cpu_s = worker.cpu_s() - cpu_before
                            if per_round:
                                run.worker_peak_rss_mb = worker.peak_rss_mb()
                            run.platform_s = measured.platform_s
                            run.platform_stored_bytes = measured.platform_stored_bytes
                            result.runs.append(run)
                            print(
                                f"  round {round_}: baseline {run.baseline_s:.1f}s, "
                                f"platform {run.platform_s:.1f}s (worker CPU "
                                f"{run.worker_cpu_s:.1f}s, peak RSS "
                                f"{run.worker_peak_rss_mb:.0f} MB), ratio {run.ratio:.2f}",
                                flush=True,
                            )
                        result.worker_peak_rss_mb = max(
                            [worker.peak_rss_mb(), *(r.worker_peak_rss_mb for r in result.runs)]
                        )
                    finally:
                        worker.stop()
                    results.append(result)
            finally:
                await delete_service(api, service_id)
    return results


def print_table(results: list[SizeResult]) -> None:
    header = (
        f"{'size MB':>8} {'run':>4} {'baseline s':>10} {'MB/s':>7} {'platform s':>10} "
        f"{'MB/s':>7} {'ratio':>6} {'stored B/P MB':>14} {'worker CPU s':>12} "
        f"{'worker peak MB':>15}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        for index, run in enumerate(result.runs, 1):
            stored = f"{run.baseline_stored_bytes / MB:.0f}/{run.platform_stored_bytes / MB:.0f}"
            print(
                f"{result.database_bytes / MB:>8.0f} {index:>4} {run.baseline_s:>10.1f} "
                f"{result.mb_per_s(run.baseline_s):>7.1f} {run.platform_s:>10.1f} "
                f"{result.mb_per_s(run.platform_s):>7.1f} {run.ratio:>6.2f} {stored:>14} "
                f"{run.worker_cpu_s:>12.1f} {run.worker_peak_rss_mb:>15.1f}"
            )
    for result in results:
        median = statistics.median(r.ratio for r in result.runs)
        verdict = "meets" if median >= 0.8 else "BELOW"
        print(
            f"{result.database_bytes / MB:.0f} MB: median ratio {median:.2f}x, "
            f"total-time ratio {result.ratio_total:.2f}x "
            f"(platform / baseline throughput; {verdict} the 0.8x target), "
            f"worker RSS idle {result.worker_idle_rss_mb:.1f} MB, "
            f"peak {result.worker_peak_rss_mb:.1f} MB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[256, 1024],
        help="database sizes in MB, ascending (default 256,1024)",
    )
    parser.add_argument("--size-mb", type=int, help="one size only (overrides --sizes)")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/platform pairs per size")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="bound of each step")
    parser.add_argument("--json", type=Path, help="write the figures there as JSON")
    args = parser.parse_args()
    if args.size_mb:
        args.sizes = [args.size_mb]
    args.sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as work:
        results = asyncio.run(bench(args, Path(work)))
    print_table(results)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "target_ratio": 0.8,
                    "baseline": f"docker exec pg_dump -Fc | zstd -{ZSTD_LEVEL} | boto3 multipart",
                    "sizes": [r.summary() for r in results],
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
