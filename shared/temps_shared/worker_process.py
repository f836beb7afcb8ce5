"""Running a worker process: logging, tracing, and a stop event set by SIGTERM/SIGINT, so the
worker drains in-flight work before it exits."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from temps_shared.settings import TempsSettings
from temps_shared.telemetry import setup_logging, setup_tracing


def run_worker(
    name: str,
    settings: TempsSettings,
    serve: Callable[[asyncio.Event], Awaitable[None]],
    *,
    threads: int | None = None,
) -> None:
    """Run `serve(stop)` until it returns; `threads` sizes the pool that blocking (Docker)
    calls run in."""
    setup_logging(settings.log_level)
    setup_tracing(name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threads is not None:
            loop.set_default_executor(ThreadPoolExecutor(threads))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())
