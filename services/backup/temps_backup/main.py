"""Startup: the one function that owns the backup worker's I/O clients."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time

import pyrage
from temps_shared.backups.archive_access import archive_identity
from temps_shared.backups.destination import builtin_destination
from temps_shared.backups.identity import backup_identity
from temps_shared.backups.store import BackupStore
from temps_shared.bus.consume import consume
from temps_shared.bus.topology import BACKUP_CONSUMER
from temps_shared.crypto import KeyRing, load_or_create_master_key
from temps_shared.messages import Role
from temps_shared.runtime import DockerRuntime
from temps_shared.store.certificate_authority import ensure_installation_ca
from temps_shared.worker import worker_clients
from temps_shared.worker_process import run_worker

from temps_backup.context import BackupWorker
from temps_backup.handlers import make_handler, make_on_terminal
from temps_backup.scheduler import run_scheduler
from temps_backup.settings import BackupSettings

log = logging.getLogger(__name__)


async def serve(settings: BackupSettings, stop: asyncio.Event) -> None:
    """Run backups and restores until `stop` is set, then drain."""
    master_key = load_or_create_master_key(settings.data_dir)
    identity = backup_identity(master_key)
    store = BackupStore(builtin_destination(settings))
    await _store_ready(store, settings.backup_store_wait_s)
    keyring = KeyRing(master_key)
    async with worker_clients(
        settings,
        Role.BACKUP,
        f"temps-backup-{settings.node_id}",
        pool_size=settings.backup_concurrency * 2 + 2,
    ) as clients:
        worker = BackupWorker(
            pool=clients.pool,
            js=clients.js,
            runtime=DockerRuntime(clients.docker, settings.docker_network),
            docker=clients.docker,
            keyring=keyring,
            identity=identity,
            recipient=str(pyrage.x25519.Identity.from_str(identity).to_public()),
            ca_pem=(
                await ensure_installation_ca(clients.pool, keyring, settings.data_dir)
            ).cert_pem,
            store=store,
            settings=settings,
            archive_identity=functools.partial(archive_identity, master_key),
        )
        scheduler = asyncio.create_task(
            run_scheduler(worker, stop, f"temps-backup-{settings.node_id}-{os.getpid()}")
        )
        try:
            await consume(
                worker.js,
                BACKUP_CONSUMER,
                make_handler(worker),
                stop=stop,
                on_terminal=make_on_terminal(worker),
                concurrency=settings.backup_concurrency,
            )
        finally:  # the scheduler ends with the consumer: its round first, on a clean stop
            if not stop.is_set():
                scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler


async def _store_ready(store: BackupStore, wait_s: float) -> None:
    """Create the bucket if needed, waiting (bounded) for a store that is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await asyncio.to_thread(store.ensure_bucket)
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the backup store does not answer: {exc}") from exc
            log.info("waiting for the backup store: %s", exc)
            await asyncio.sleep(1.0)


def run() -> None:
    settings = BackupSettings()
    run_worker(
        "temps-backup",
        settings,
        lambda stop: serve(settings, stop),
        threads=settings.backup_concurrency * 4 + 4,
    )


if __name__ == "__main__":
    run()
