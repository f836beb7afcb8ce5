"""An in-place restore: every artifact downloaded and checked (SHA-256 against the manifest,
then a full trial decryption) before the service is touched; then the engine puts it back."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
import zstandard
from temps_shared.backups import layout
from temps_shared.backups.codec import decode, sha256_of
from temps_shared.backups.store import BackupStore, StoreError
from temps_shared.bus.consume import TerminalError
from temps_shared.bus.publish import publish_event
from temps_shared.messages import RestoreBackup, RestoreCompleted, RestoreFailed, Role
from temps_shared.runtime.container_io import ExecFailed
from temps_shared.service_lock import service_lock

from temps_backup.context import BackupWorker
from temps_backup.service_target import resolve

log = logging.getLogger(__name__)


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


def _fetch_and_check(
    w: BackupWorker, store: BackupStore, folder: str, artifact: dict[str, Any], spool: Path
) -> Path:
    """Download one artifact into `spool`; raises `TerminalError` unless its SHA-256 is the
    manifest's and it decrypts and decompresses to the end."""
    name = str(artifact["name"])
    if "/" in name or name.startswith("."):
        raise TerminalError(f"the manifest names an invalid artifact {name!r}")
    path = spool / name
    with path.open("w+b") as file:
        store.download(folder + name, file)
        file.seek(0)
        digest = sha256_of(file)
        if digest != artifact["sha256"]:
            raise TerminalError(
                f"artifact {name} is damaged: its SHA-256 is {digest}, the manifest says "
                f"{artifact['sha256']}; nothing was restored"
            )
        file.seek(0)
        try:
            decode(file, w.identity, _Discard())
        except (pyrage.DecryptError, zstandard.ZstdError) as exc:
            raise TerminalError(
                f"artifact {name} cannot be decrypted with this installation's key ({exc}); "
                "nothing was restored"
            ) from exc
    return path


async def handle_restore_backup(w: BackupWorker, command: RestoreBackup) -> None:
    target = await resolve(w, command.service_id, command.backup_id, restoring=True)
    if target.backup.state != "completed" or target.backup.location is None:
        raise TerminalError(f"backup {command.backup_id} is {target.backup.state}, not completed")
    folder = target.backup.location
    extra = {"service_id": str(command.service_id), "message_id": str(command.message_id)}
    try:
        document = await asyncio.to_thread(target.store.get_json, folder + layout.MANIFEST)
    except StoreError as exc:
        raise TerminalError(str(exc)) from exc
    if document.get("engine") != target.service.service_type:
        raise TerminalError(
            f"backup {command.backup_id} is of a {document.get('engine')} service, "
            f"not {target.service.service_type}"
        )
    artifacts: list[dict[str, Any]] = document["artifacts"]
    with tempfile.TemporaryDirectory(dir=w.settings.backup_work_dir) as spool_dir:
        spool = Path(spool_dir)
        paths = {}
        for artifact in artifacts:
            try:
                paths[artifact["name"]] = await asyncio.to_thread(
                    _fetch_and_check, w, target.store, folder, artifact, spool
                )
            except StoreError as exc:
                raise TerminalError(f"{exc}; nothing was restored") from exc

        @contextlib.contextmanager
        def open_artifact(entry: dict[str, Any]) -> Iterator[BinaryIO]:
            with paths[entry["name"]].open("rb") as file:
                yield file

        log.info("restoring %s from %s", target.container, folder, extra=extra)
        async with service_lock(w.pool, command.service_id, wait_s=w.settings.backup_lock_wait_s):
            try:
                await asyncio.to_thread(
                    target.engine.restore, target.handle, artifacts, open_artifact
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
