"""Startup: the one function that owns the monitor's I/O clients."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

import docker
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.consume import consume
from temps_shared.bus.topology import MONITOR_CONSUMER
from temps_shared.crypto import KeyRing
from temps_shared.messages import Role
from temps_shared.metrics import instrumented, run_queue_sampler, start_metrics_server
from temps_shared.runtime import DockerRuntime
from temps_shared.store.certificate_authority import ensure_installation_ca
from temps_shared.store.migrations import apply_migrations
from temps_shared.store.pool import create_pool
from temps_shared.worker_process import run_worker

from temps_monitor.context import Monitor
from temps_monitor.cycle import run_cycles
from temps_monitor.handlers import make_handler
from temps_monitor.settings import MonitorSettings


async def serve(settings: MonitorSettings, stop: asyncio.Event) -> None:
    """Probe on schedule and answer ProbeNow until `stop` is set, then drain."""
    keyring = KeyRing.from_data_dir(settings.data_dir)
    pool = await create_pool(settings.database_dsn(), max_size=settings.monitor_concurrency + 4)
    nc = await connect_nats(
        settings.nats_url,
        Role.MONITOR,
        settings.data_dir,
        name=f"temps-monitor-{settings.monitor_instance_id}",
    )
    docker_client = docker.from_env()
    s3_executor = ThreadPoolExecutor(settings.monitor_concurrency, thread_name_prefix="s3-probe")
    metrics = start_metrics_server(settings.metrics_host, settings.metrics_port)
    try:
        await apply_migrations(pool)
        monitor = Monitor(
            pool=pool,
            js=nc.jetstream(),
            runtime=DockerRuntime(docker_client, settings.docker_network),
            keyring=keyring,
            ca_pem=(await ensure_installation_ca(pool, keyring, settings.data_dir)).cert_pem,
            settings=settings,
            s3_executor=s3_executor,
        )
        cycles = asyncio.create_task(run_cycles(monitor, stop), name="monitor-cycles")
        queue = asyncio.create_task(
            run_queue_sampler(
                monitor.js, [MONITOR_CONSUMER], stop, settings.metrics_queue_sample_s
            ),
            name="queue-depth",
        )
        try:
            await consume(
                monitor.js,
                MONITOR_CONSUMER,
                instrumented("monitor", make_handler(monitor)),
                stop=stop,
                concurrency=settings.monitor_concurrency,
            )
        finally:
            if not stop.is_set():  # the consumer failed: do not leave the loop behind
                cycles.cancel()
            queue.cancel()
            for task in (cycles, queue):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await pool.close()
        docker_client.close()
        s3_executor.shutdown(wait=False, cancel_futures=True)
        if metrics is not None:
            metrics.close()


def run() -> None:
    settings = MonitorSettings()
    # Docker calls run in threads: room for every probe in flight, and a few more.
    run_worker(
        "temps-monitor",
        settings,
        lambda stop: serve(settings, stop),
        threads=settings.monitor_concurrency * 2 + 4,
    )


if __name__ == "__main__":
    run()
