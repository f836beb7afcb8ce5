"""An in-place restore: every artifact downloaded and checked (SHA-256 against the manifest,
then a full trial decryption) before the service is touched; then the engine puts it back."""

from __future__ import annotations

import asyncio
import logging

from temps_shared.bus.consume import TerminalError
from temps_shared.bus.publish import publish_event
from temps_shared.messages import RestoreBackup, RestoreCompleted, RestoreFailed, Role
from temps_shared.runtime.container_io import ExecFailed
from temps_shared.service_lock import service_lock

from temps_backup.artifact_fetch import checked_backup
from temps_backup.context import BackupWorker
from temps_backup.service_target import resolve

log = logging.getLogger(__name__)


async def handle_restore_backup(w: BackupWorker, command: RestoreBackup) -> None:
    target = await resolve(w, command.service_id, command.backup_id, restoring=True)
    if target.backup.state != "completed" or target.backup.location is None:
        raise TerminalError(f"backup {command.backup_id} is {target.backup.state}, not completed")
    folder = target.backup.location
    extra = {"service_id": str(command.service_id), "message_id": str(command.message_id)}
    async with checked_backup(
        w.identity,
        target.store,
        folder,
        w.settings.backup_work_dir,
        "nothing was restored",
        w.keyring,
    ) as backup:
        if backup.manifest.get("engine") != target.service.service_type:
            raise TerminalError(
                f"backup {command.backup_id} is of a {backup.manifest.get('engine')} service, "
                f"not {target.service.service_type}"
            )
        log.info("restoring %s from %s", target.container, folder, extra=extra)
        async with service_lock(w.pool, command.service_id, wait_s=w.settings.backup_lock_wait_s):
            try:
                await asyncio.to_thread(
                    target.engine.restore, target.handle, backup.artifacts, backup.open_artifact
                )
            except ExecFailed as exc:
                raise TerminalError(f"the restore failed: {exc}") from exc
    await publish_event(
        w.js,
        RestoreCompleted(
            service_id=command.service_id,
            backup_id=command.backup_id,
            restore_id=command.restore_id,
        ),
        origin=Role.BACKUP,
        dedupe_id=f"{command.restore_id}:RestoreCompleted",
    )


async def announce_restore_failure(w: BackupWorker, command: RestoreBackup, reason: str) -> None:
    await publish_event(
        w.js,
        RestoreFailed(
            service_id=command.service_id,
            backup_id=command.backup_id,
            restore_id=command.restore_id,
            reason=reason,
        ),
        origin=Role.BACKUP,
        dedupe_id=f"{command.restore_id}:RestoreFailed",
    )
