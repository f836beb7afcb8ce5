"""Startup: the one function that owns the monitor's I/O clients."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from temps_shared.bus.consume import consume
from temps_shared.bus.topology import MONITOR_CONSUMER
from temps_shared.crypto import KeyRing
from temps_shared.messages import Role
from temps_shared.metrics import run_queue_sampler
from temps_shared.runtime import DockerRuntime
from temps_shared.store.certificate_authority import ensure_installation_ca
from temps_shared.worker import worker_clients
from temps_shared.worker_process import run_worker

from temps_monitor.context import Monitor
from temps_monitor.cycle import run_cycles
from temps_monitor.handlers import make_handler
from temps_monitor.settings import MonitorSettings


async def serve(settings: MonitorSettings, stop: asyncio.Event) -> None:
    """Probe on schedule and answer ProbeNow until `stop` is set, then drain."""
    keyring = KeyRing.from_data_dir(settings.data_dir)
    s3_executor = ThreadPoolExecutor(settings.monitor_concurrency, thread_name_prefix="s3-probe")
    try:
        async with worker_clients(
            settings,
            Role.MONITOR,
            f"temps-monitor-{settings.monitor_instance_id}",
            pool_size=settings.monitor_concurrency + 4,
        ) as clients:
            monitor = Monitor(
                pool=clients.pool,
                js=clients.js,
                runtime=DockerRuntime(clients.docker, settings.docker_network),
                keyring=keyring,
                ca_pem=(
                    await ensure_installation_ca(clients.pool, keyring, settings.data_dir)
                ).cert_pem,
                settings=settings,
                s3_executor=s3_executor,
            )
            await _consume(monitor, stop)
    finally:
        s3_executor.shutdown(wait=False, cancel_futures=True)


async def _consume(monitor: Monitor, stop: asyncio.Event) -> None:
    settings = monitor.settings
    cycles = asyncio.create_task(run_cycles(monitor, stop), name="monitor-cycles")
    queue = asyncio.create_task(
        run_queue_sampler(monitor.js, [MONITOR_CONSUMER], stop, settings.metrics_queue_sample_s),
        name="queue-depth",
    )
    try:
        await consume(
            monitor.js,
            MONITOR_CONSUMER,
            make_handler(monitor),
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
