"""The pooled PostgreSQL endpoint (PgBouncer, transaction mode) against the direct one, in the
same run:

1. Simple-query throughput and latency: N concurrent clients, each on its own connection, run
   `SELECT 1` (simple query protocol) in a loop for T seconds, alternately through the pooled
   `DATABASE_URL` and the direct `DATABASE_DIRECT_URL` (direct, pooled, direct, pooled, … so the
   load other work puts on the host hits both alike). Targets: pooled throughput ≥ 0.9 x direct,
   pooled p99 ≤ direct p99 + 1.5 ms.
2. A memory change (`PATCH /api/external-services/{id}` parameters memory_mb) with two loops
   running: a client doing one small transaction every 20 ms through the pooled URL (the
   acceptance tests' loop, tests/integration/client_loops.py), and a prober opening a fresh
   direct connection every 20 ms. The restart time is how long the direct endpoint refused
   connections (first refusal → first success after it); the target is that the pooled client's
   longest wait stays ≤ restart time + 1 s, with no failed transaction.

Both connect as a link user (a project linked through the API: its injected variables), since
the pooler does not serve superusers. Self-contained: nats-server, a control-plane PostgreSQL
container, the API and the provisioner in this process (the parts bench/backup_throughput.py and
the integration tests use, imported from there). The clients run in this process too, on one
event loop: the figures include the client's own cost, alike for both endpoints. Needs Docker,
the images (`make images`, temps/pgbouncer:1 among them) and the venv. Example:

    python bench/pooler_overhead.py --clients 8 --seconds 10 --json /tmp/pooler.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import docker
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test tier's real parts, reused rather than copied

from backup_throughput import (  # noqa: E402  (bench/, this script's directory)
    control_plane_database,
    delete_service,
    nats_server,
)

from tests.integration.client_loops import TICK_S, Loop  # noqa: E402
from tests.integration.conftest import Platform  # noqa: E402
from tests.integration.pooled_service import linked_postgres  # noqa: E402
from tests.support import RUN_PORT_RANGE, eventually  # noqa: E402

RUN = uuid.uuid4().hex[:4]
NAME = f"bench-{RUN}-pool"
TARGET_RATIO = 0.9
TARGET_P99_ADDED_MS = 1.5
TARGET_WAIT_MARGIN_S = 1.0
CONNECT_TIMEOUT_S = 5.0
CHANGE_TIMEOUT_S = 180.0
WARMUP_S = 3.0


@dataclass
class Phase:
    endpoint: str
    clients: int
    seconds: float
    queries: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def qps(self) -> float:
        return self.queries / self.seconds


@dataclass
class Outage:
    """The direct endpoint probed with a fresh connection every TICK_S."""

    url: str
    context: ssl.SSLContext
    attempts: int = 0
    refusals: int = 0
    first_refusal: float | None = None
    back_at: float | None = None
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def refused_s(self) -> float:
        if self.first_refusal is None:
            return 0.0
        end = self.back_at if self.back_at is not None else time.monotonic()
        return end - self.first_refusal

    async def run(self) -> None:
        while not self.stop.is_set():
            self.attempts += 1
            try:
                conn = await asyncpg.connect(self.url, ssl=self.context, timeout=CONNECT_TIMEOUT_S)
                try:
                    await conn.execute("SELECT 1")
                finally:
                    await conn.close(timeout=CONNECT_TIMEOUT_S)
                if self.first_refusal is not None and self.back_at is None:
                    self.back_at = time.monotonic()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                self.refusals += 1
                if self.first_refusal is None:
                    self.first_refusal = time.monotonic()
                if len(self.errors) < 3:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(TICK_S)


async def load(
    label: str, url: str, context: ssl.SSLContext, clients: int, seconds: float
) -> Phase:
    """`clients` connections doing `SELECT 1` back to back for `seconds`."""
    connections = [
        await asyncpg.connect(url, ssl=context, timeout=CONNECT_TIMEOUT_S) for _ in range(clients)
    ]
    latencies: list[float] = []
    errors = 0
    try:
        for conn in connections:  # warm: TLS done, server connection assigned once
            await conn.execute("SELECT 1")
        deadline = time.monotonic() + seconds

        async def client(conn: asyncpg.Connection) -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    await conn.execute("SELECT 1")
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        await asyncio.wait_for(asyncio.gather(*(client(c) for c in connections)), seconds + 30)
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.close(timeout=CONNECT_TIMEOUT_S)
    if not latencies:
        raise SystemExit(f"{label}: no query succeeded")
    ms = sorted(x * 1000 for x in latencies)
    return Phase(
        endpoint=label,
        clients=clients,
        seconds=seconds,
        queries=len(ms),
        errors=errors,
        p50_ms=statistics.median(ms),
        p99_ms=ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        max_ms=ms[-1],
    )


def merged(phases: list[Phase]) -> Phase:
    """Rounds of one endpoint as one phase (p50/p99 as the worst round's: conservative)."""
    return Phase(
        endpoint=phases[0].endpoint,
        clients=phases[0].clients,
        seconds=sum(p.seconds for p in phases),
        queries=sum(p.queries for p in phases),
        errors=sum(p.errors for p in phases),
        p50_ms=max(p.p50_ms for p in phases),
        p99_ms=max(p.p99_ms for p in phases),
        max_ms=max(p.max_ms for p in phases),
    )


@contextlib.asynccontextmanager
async def running_platform(work: Path) -> AsyncIterator[Platform]:
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
                "TEMPS_BACKUP_SCHEDULER_PERIOD_S": "3600",
            }
        )
        await platform.start_api()
        await platform.start_provisioner()
        try:
            yield platform
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await platform.stop()


async def stalls(loop: Loop, every_s: float = 0.005) -> float:
    """The longest time the loop went without completing a transaction (minus its own sleep):
    a client stuck in a transaction that never returns is measured too."""
    longest, last_ok, last_at = 0.0, loop.ok, time.monotonic()
    while not loop.stop.is_set():
        await asyncio.sleep(every_s)
        now = time.monotonic()
        if loop.ok != last_ok:
            last_ok, last_at = loop.ok, now
        longest = max(longest, now - last_at - TICK_S)
    return longest


async def converge(api: httpx.AsyncClient, service_id: str, since: float) -> list[str]:
    """Poll until operational at the new generation; the status changes seen, timed."""
    timeline: list[str] = []
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < deadline:
        body = (await api.get(f"/api/external-services/{service_id}")).json()
        seen = f"{body['status']} gen {body['observed_generation']}/{body['generation']}"
        if not timeline or not timeline[-1].endswith(seen):
            timeline.append(f"+{time.monotonic() - since:.2f}s {seen}")
        if body["status"] == "failed":
            raise SystemExit(f"failed: {body['status_reason']}")
        if body["status"] == "operational" and body["observed_generation"] == body["generation"]:
            return timeline
        await asyncio.sleep(0.2)
    raise SystemExit(f"not converged after {CHANGE_TIMEOUT_S:.0f}s: {timeline}")


async def memory_change(
    api: httpx.AsyncClient, linked: dict[str, Any], memory_mb: int
) -> dict[str, Any]:
    conn = await asyncpg.connect(linked["pooled"], ssl=linked["ssl"], timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS ticks (n int, at timestamptz)")
    finally:
        await conn.close()
    pooled = Loop(linked["pooled"], linked["ssl"], "pooled")
    direct = Outage(linked["direct"], linked["ssl"])
    tasks = [asyncio.create_task(pooled.run()), asyncio.create_task(direct.run())]
    watcher = asyncio.create_task(stalls(pooled))
    service_id = linked["service"]["id"]
    timeline: list[str] = []
    converged_s = float("nan")
    try:
        await asyncio.sleep(1)
        if pooled.ok < 10 or direct.refusals:
            raise SystemExit(f"loops not healthy before the change: {pooled}, {direct.errors}")
        started = time.monotonic()
        response = await api.patch(
            f"/api/external-services/{service_id}", json={"parameters": {"memory_mb": memory_mb}}
        )
        if response.status_code != 202:
            raise SystemExit(f"PATCH: {response.status_code} {response.text}")
        timeline = await converge(api, service_id, started)
        converged_s = time.monotonic() - started
        await asyncio.sleep(1)
    finally:
        pooled.stop.set()
        direct.stop.set()
        # Bounded: a client stuck in a held transaction is reported, not waited for forever.
        _, pending = await asyncio.wait(tasks, timeout=15)
        for task in pending:
            task.cancel()
        stalled_s = await watcher
    stuck = [name for name, t in zip(("pooled", "direct"), tasks, strict=True) if t in pending]
    return {
        "memory_mb": memory_mb,
        "converged_s": converged_s,
        "status_timeline": timeline,
        "pooled_transactions": pooled.ok,
        "pooled_failures": len(pooled.failures),
        "pooled_failure_samples": pooled.failures[:3],
        "pooled_longest_wait_s": max(pooled.longest_s, stalled_s),
        "stuck_at_end": stuck,
        "direct_attempts": direct.attempts,
        "direct_refusals": direct.refusals,
        "direct_refusal_samples": direct.errors,
        "restart_s": direct.refused_s,
    }


async def unlink_and_delete(api: httpx.AsyncClient, linked: dict[str, Any]) -> None:
    """A linked service cannot be deleted (409): the link goes first, then both."""
    service_id, project_id = linked["service"]["id"], linked["project_id"]
    await api.delete(f"/api/external-services/{service_id}/projects/{project_id}")

    async def unlinked() -> bool:
        links = (await api.get(f"/api/external-services/{service_id}/projects")).json()
        return not any(x["project_id"] == project_id and x["status"] == "active" for x in links)

    with contextlib.suppress(AssertionError):  # bounded; the delete's answer tells the rest
        await eventually(unlinked, 60, "the link to be removed")
    await delete_service(api, service_id)
    with contextlib.suppress(httpx.HTTPError):
        await api.delete(f"/api/projects/{project_id}")


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    async with running_platform(work) as platform, platform.client() as api:
        linked = await linked_postgres(api, NAME, f"bench-{RUN}-app", memory_mb=args.memory_mb)
        try:
            rounds: dict[str, list[Phase]] = {"direct": [], "pooled": []}
            # Warm-up, not counted: server connections opened, caches filled.
            for label in ("direct", "pooled"):
                await load(label, linked[label], linked["ssl"], args.clients, WARMUP_S)
            for _ in range(args.rounds):
                for label in ("direct", "pooled"):
                    phase = await load(
                        label, linked[label], linked["ssl"], args.clients, args.seconds
                    )
                    rounds[label].append(phase)
                    print(
                        f"  {label}: {phase.qps:,.0f} q/s, p99 {phase.p99_ms:.2f} ms",
                        flush=True,
                    )
            try:
                change: dict[str, Any] | None = await memory_change(api, linked, args.memory_mb * 2)
            except SystemExit as exc:  # the throughput figures are still reported
                print(f"memory change: {exc}", file=sys.stderr)
                change = None
        finally:
            await unlink_and_delete(api, linked)
    direct, pooled = merged(rounds["direct"]), merged(rounds["pooled"])
    ratio = pooled.qps / direct.qps
    added_ms = pooled.p99_ms - direct.p99_ms
    wait_bound = (change["restart_s"] if change else 0.0) + TARGET_WAIT_MARGIN_S
    return {
        "clients": args.clients,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "direct": asdict(direct) | {"qps": direct.qps},
        "pooled": asdict(pooled) | {"qps": pooled.qps},
        "rounds_detail": {k: [asdict(p) for p in v] for k, v in rounds.items()},
        "throughput_ratio": ratio,
        "p99_added_ms": added_ms,
        "memory_change": change,
        "targets": {
            "throughput_ratio_min": TARGET_RATIO,
            "p99_added_ms_max": TARGET_P99_ADDED_MS,
            "longest_wait_max_s": wait_bound,
        },
        "met": {
            "throughput": ratio >= TARGET_RATIO,
            "p99": added_ms <= TARGET_P99_ADDED_MS,
            "wait": change is not None
            and change["pooled_longest_wait_s"] <= wait_bound
            and change["pooled_failures"] == 0
            and not change["stuck_at_end"]
            and change["direct_refusals"] > 0,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    direct, pooled = result["direct"], result["pooled"]
    print(
        f"\n{result['clients']} clients x {result['seconds_per_round']:.0f} s x"
        f" {result['rounds']} rounds per endpoint, SELECT 1 (simple query):"
    )
    print(f"  {'endpoint':<8} {'q/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}")
    for row in (direct, pooled):
        print(
            f"  {row['endpoint']:<8} {row['qps']:>9,.0f} {row['p50_ms']:>8.2f}"
            f" {row['p99_ms']:>8.2f} {row['max_ms']:>8.2f} {row['errors']:>7}"
        )
    met = result["met"]
    print(
        f"  pooled/direct throughput {result['throughput_ratio']:.2f}x"
        f" (target >= {TARGET_RATIO}): {'met' if met['throughput'] else 'MISSED'}"
    )
    print(
        f"  p99 added {result['p99_added_ms']:+.2f} ms (target <= {TARGET_P99_ADDED_MS}):"
        f" {'met' if met['p99'] else 'MISSED'}"
    )
    change = result["memory_change"]
    if change is None:
        print("memory change: no figures (see the error above)")
        return
    print(
        f"memory change to {change['memory_mb']} MB (converged in {change['converged_s']:.1f} s):"
    )
    print(
        f"  direct endpoint refused connections for {change['restart_s']:.2f} s"
        f" ({change['direct_refusals']} of {change['direct_attempts']} fresh connections)"
    )
    print(
        f"  pooled client: {change['pooled_transactions']} transactions,"
        f" {change['pooled_failures']} failed, longest wait {change['pooled_longest_wait_s']:.2f} s"
        f" (target <= {result['targets']['longest_wait_max_s']:.2f} s):"
        f" {'met' if met['wait'] else 'MISSED'}"
    )
    print(f"  status: {', '.join(change['status_timeline'])}")
    if change["stuck_at_end"]:
        print(f"  still blocked 15 s after the change: {', '.join(change['stuck_at_end'])}")
    if not change["direct_refusals"]:
        print("  (the direct endpoint never refused: no restart seen, nothing proven)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per round and endpoint (20)")
    parser.add_argument("--rounds", type=int, default=2, help="direct/pooled pairs (2)")
    parser.add_argument("--memory-mb", type=int, default=256, help="start; the change doubles it")
    parser.add_argument("--json", type=Path, help="write the figures there as JSON")
    args = parser.parse_args()
    client = docker.from_env()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pooler-") as work:
            result = asyncio.run(bench(args, Path(work)))
    finally:
        # A safety net if deleting through the API did not finish.
        for container in client.containers.list(all=True, filters={"label": "io.temps.managed"}):
            if NAME in (container.name or ""):
                container.remove(force=True)
        for volume in client.volumes.list(filters={"label": "io.temps.managed"}):
            if NAME in (volume.name or ""):
                volume.remove(force=True)
        client.close()
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
