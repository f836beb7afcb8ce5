"""One backup: every artifact of the engine streamed from the container, compressed, encrypted
and uploaded; the manifest last; progress announced meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, BinaryIO
from uuid import UUID

import asyncpg
from temps_shared.backups import layout
from temps_shared.backups.codec import EncodedSize, encode
from temps_shared.backups.destination import self_backup_reason
from temps_shared.backups.protocol import ArtifactSource, Figures
from temps_shared.backups.store import StoreError
from temps_shared.bus.consume import TerminalError
from temps_shared.bus.publish import publish_command, publish_event
from temps_shared.messages import (
    BackupCompleted,
    BackupFailed,
    BackupProgress,
    BackupStarted,
    Role,
    RunBackup,
    VerifyBackup,
    utcnow,
)
from temps_shared.runtime.container_io import ExecFailed
from temps_shared.service_lock import service_lock

from temps_backup.context import BackupWorker
from temps_backup.deadline import overdue_reason
from temps_backup.service_target import Target, resolve

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Bytes stored so far, counted by the upload thread, read by the announcer."""

    stored: int = 0
    announced: int = field(default=-1)


class CountingSink:
    def __init__(self, sink: BinaryIO, progress: Progress) -> None:
        self._sink, self._progress = sink, progress

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self._progress.stored += len(data)
        return len(data)


async def handle_run_backup(w: BackupWorker, command: RunBackup) -> None:
    target = await resolve(w, command.service_id, command.backup_id)
    if target.backup.state in ("completed", "failed"):
        return  # a redelivery of a backup that already ended
    if reason := await self_backup_reason(w.pool, target.store.destination, command.service_id):
        raise TerminalError(reason)  # a service never backs up into itself
    folder = layout.backup_folder(
        target.service.service_type,
        target.service.name,
        target.backup.requested_at,
        command.backup_id,
    )
    extra = {"service_id": str(command.service_id), "message_id": str(command.message_id)}
    deadline_s = w.settings.backup_deadline_s
    requested_at = target.backup.requested_at
    check_deadline(requested_at, deadline_s)
    # Never while the provisioner recreates the container (nor during a restore).
    async with service_lock(w.pool, command.service_id, wait_s=w.settings.backup_lock_wait_s):
        started_at = utcnow()
        await publish_event(
            w.js,
            BackupStarted(
                service_id=command.service_id,
                backup_id=command.backup_id,
                kind=command.kind,
                location=folder,
            ),
            origin=Role.BACKUP,
        )
        log.info("backing up %s into %s", target.container, folder, extra=extra)
        progress = Progress()
        announcer = asyncio.create_task(_announce(w, command, progress))
        # Every command in the container is killed when the backup runs out of time: a hung
        # dump never holds the worker slot and the service lock for ever.
        bounded = replace(
            target,
            handle=replace(target.handle, timeout_s=check_deadline(requested_at, deadline_s)),
        )
        try:
            artifacts, figures = await _take(w, bounded, folder, progress)
        except (ExecFailed, StoreError) as exc:
            raise TerminalError(str(exc)) from exc
        finally:
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer
        document = layout.manifest(
            backup_id=command.backup_id,
            service=target.service,
            keyring=w.keyring,
            kind=command.kind,
            started_at=started_at,
            finished_at=utcnow(),
            recipient=w.recipient,
            artifacts=artifacts,
            figures=figures,  # taken in the artifacts' snapshot: what a verify checks
        )
        # Too late: the deadline sweep failed it (or will); no manifest may make it look whole.
        check_deadline(requested_at, deadline_s)
        await asyncio.to_thread(target.store.put_json, folder + layout.MANIFEST, document)
    await publish_event(
        w.js,
        BackupCompleted(
            service_id=command.service_id,
            backup_id=command.backup_id,
            size_bytes=document["size_bytes"],
            artifacts=len(artifacts),
        ),
        origin=Role.BACKUP,
        dedupe_id=f"{command.backup_id}:BackupCompleted",
    )
    log.info(
        "backup %s complete (%d bytes)", command.backup_id, document["size_bytes"], extra=extra
    )
    if await should_verify(w.pool, command.service_id):
        await publish_command(
            w.js,
            VerifyBackup(service_id=command.service_id, backup_id=command.backup_id),
            origin=Role.BACKUP,
        )


def check_deadline(requested_at: datetime, deadline_s: float) -> float:
    """The seconds the backup has left; `TerminalError` (the same reason the deadline sweep
    gives) once there are none."""
    left = deadline_s - (utcnow() - requested_at).total_seconds()
    if left <= 0:
        raise TerminalError(overdue_reason(deadline_s))
    return left


async def verify_policy(pool: asyncpg.Pool, service_id: UUID) -> str:
    """The service's `verify` setting: every | daily | off (every when none is set)."""
    try:
        value = await pool.fetchval(
            "SELECT verify FROM backup_schedules WHERE service_id = $1", service_id
        )
    except asyncpg.UndefinedTableError:  # an installation not migrated that far
        return "every"
    return str(value) if value else "every"


async def should_verify(pool: asyncpg.Pool, service_id: UUID) -> bool:
    """Whether a completed backup is test-restored: `daily` only when no backup of the service
    was verified in the last 24 hours."""
    policy = await verify_policy(pool, service_id)
    if policy == "off":
        return False
    if policy == "daily":
        recent = await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM backups WHERE service_id = $1"
            " AND verify_state = 'verified' AND verified_at > now() - interval '24 hours')",
            service_id,
        )
        return not recent
    return True


async def _take(
    w: BackupWorker, target: Target, folder: str, progress: Progress
) -> tuple[list[dict[str, Any]], Figures]:
    """Every artifact of one snapshot, stored in turn, and the snapshot's figures."""

    def take() -> tuple[list[dict[str, Any]], Figures]:
        artifacts = []
        with target.engine.snapshot(target.handle) as snapshot:
            for source in snapshot.sources:
                file_name = source.name + layout.SUFFIX
                encoded = _upload(w, target, source, folder + file_name, progress)
                artifacts.append(
                    {**source.meta, "name": file_name, "size": encoded.size,
                     "sha256": encoded.sha256}
                )  # fmt: skip
            figures = snapshot.figures()
        return artifacts, figures

    return await asyncio.to_thread(take)


def _upload(
    w: BackupWorker, target: Target, source: ArtifactSource, key: str, progress: Progress
) -> EncodedSize:
    def produce(sink: BinaryIO) -> EncodedSize:
        return encode(source.chunks(), w.recipient, CountingSink(sink, progress))

    return target.store.upload(key, produce)


async def _announce(w: BackupWorker, command: RunBackup, progress: Progress) -> None:
    while True:
        await asyncio.sleep(w.settings.backup_progress_s)
        if progress.stored != progress.announced:
            progress.announced = progress.stored
            with contextlib.suppress(Exception):  # progress is best effort
                await publish_event(
                    w.js,
                    BackupProgress(
                        service_id=command.service_id,
                        backup_id=command.backup_id,
                        bytes_done=progress.stored,
                    ),
                    origin=Role.BACKUP,
                )


async def announce_backup_failure(w: BackupWorker, command: RunBackup, reason: str) -> None:
    await publish_event(
        w.js,
        BackupFailed(service_id=command.service_id, backup_id=command.backup_id, reason=reason),
        origin=Role.BACKUP,
        dedupe_id=f"{command.backup_id}:BackupFailed",
    )
