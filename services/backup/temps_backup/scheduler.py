"""The backup worker's periodic round: start the scheduled backups that are due, delete the
expired ones (and those of deleted services), fail the overdue ones. Every replica runs it;
the rows they share decide who does what (`temps_shared.store.backup_schedules`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from temps_shared.bus.publish import publish_command, publish_event
from temps_shared.messages import BackupRequested, Role, RunBackup
from temps_shared.store.backup_schedules import ScheduledBackup, claim_due, enrol

from temps_backup.context import BackupWorker
from temps_backup.deadline import fail_overdue
from temps_backup.retention import sweep

log = logging.getLogger(__name__)


async def run_scheduler(w: BackupWorker, stop: asyncio.Event, replica: str) -> None:
    """Rounds every `backup_scheduler_period_s` until `stop`; a failed round is logged and the
    next one tries again."""
    period = w.settings.backup_scheduler_period_s
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
        if stop.is_set():
            return
        try:
            await scheduler_round(w, replica)
        except Exception:
            log.exception("backup scheduler round failed")


async def scheduler_round(w: BackupWorker, replica: str) -> None:
    batch = w.settings.backup_scheduler_batch
    async with w.pool.acquire() as conn:
        await enrol(conn, batch)
        started = await claim_due(conn, batch, replica)
    for backup in started:
        await _start(w, backup)
    await sweep(w, batch)
    await fail_overdue(w, batch)


async def _start(w: BackupWorker, backup: ScheduledBackup) -> None:
    """Announce and command a scheduled backup whose row is committed. A worker dying before
    this leaves the row `requested`: the deadline fails it."""
    try:
        await publish_event(
            w.js,
            BackupRequested(
                service_id=backup.service_id, backup_id=backup.backup_id, kind="logical"
            ),
            origin=Role.BACKUP,
            dedupe_id=f"{backup.backup_id}:BackupRequested",
        )
        await publish_command(
            w.js,
            RunBackup(service_id=backup.service_id, backup_id=backup.backup_id),
            origin=Role.BACKUP,
        )
    except Exception:
        log.exception("scheduled backup %s could not be started", backup.backup_id)
        return
    log.info("scheduled backup %s of %s", backup.backup_id, backup.service_id)
