"""The health loop of one monitor replica: claim what is due, probe it with bounded
concurrency, sleep until the next probe is due. Every probe is bounded by the probe timeout
(plus Docker's and the bus's own bounds), and one service's failure never stops the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from uuid import UUID

from temps_shared.telemetry import log_context

from temps_monitor import probe_metrics, schedule
from temps_monitor.context import Monitor
from temps_monitor.service_probe import probe_service

log = logging.getLogger(__name__)
MAX_IDLE_S = 1.0  # how long a new service or a status change may wait to be noticed
ERROR_PAUSE_S = 1.0


async def guarded_probe(m: Monitor, service_id: UUID) -> None:
    started = time.perf_counter()
    with log_context(service_id=str(service_id)):
        checked, failed = None, False
        try:
            checked = await probe_service(m, service_id)
        except Exception:
            # The next period probes it again; the failure must not take the loop down.
            log.exception("probing %s failed", service_id)
            failed = True
        try:
            elapsed = time.perf_counter() - started
            await probe_metrics.record_probe(m, service_id, checked, elapsed, failed=failed)
        except Exception:
            log.exception("recording the metrics of the probe of %s failed", service_id)


async def _idle(m: Monitor, stop: asyncio.Event) -> None:
    """Until the next probe is due (at most MAX_IDLE_S, at least a short pause), or `stop`."""
    due_in = await schedule.seconds_to_next_due(m.pool)
    pause = MAX_IDLE_S if due_in is None else min(MAX_IDLE_S, max(0.05, due_in))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), pause)


async def run_cycles(m: Monitor, stop: asyncio.Event) -> None:
    """Probe every service once per period until `stop` is set; in-flight probes finish."""
    settings = m.settings
    period, replica = settings.monitor_period_s, settings.monitor_instance_id
    in_flight: set[asyncio.Task[None]] = set()
    next_enrol = 0.0
    try:
        while not stop.is_set():
            try:
                if time.monotonic() >= next_enrol:
                    await schedule.enrol(m.pool, period)
                    next_enrol = time.monotonic() + MAX_IDLE_S
                free = settings.monitor_concurrency - len(in_flight)
                claimed = await schedule.claim_due(m.pool, free, period, replica) if free else []
            except Exception:
                log.exception("claiming due probes failed; retrying")
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            for service_id in claimed:
                task = asyncio.create_task(guarded_probe(m, service_id))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if len(in_flight) >= settings.monitor_concurrency:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            elif not claimed:
                try:
                    await _idle(m, stop)
                except Exception:
                    log.exception("reading the schedule failed")
                    await asyncio.sleep(ERROR_PAUSE_S)
    finally:
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
