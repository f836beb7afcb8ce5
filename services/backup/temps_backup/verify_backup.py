"""Verification by a test restore: a completed backup's artifacts are downloaded and checked,
restored into a throw-away copy of the service (`scratch_service`), and the figures of the
restored data are compared with those the backup took in its own snapshot (the manifest's
`figures`). The outcome is an event on the backup: `BackupVerified` with what matched, or
`BackupVerificationFailed` naming every difference (or why no test restore could be made)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import docker
from temps_shared.backups import layout
from temps_shared.backups.figures import differences, reason, summary
from temps_shared.backups.protocol import EngineBackup, Figures, OpenArtifact
from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.bus.publish import publish_event
from temps_shared.engines import offered_versions
from temps_shared.ids import container_name
from temps_shared.messages import BackupVerificationFailed, BackupVerified, Role, VerifyBackup
from temps_shared.runtime.container_io import ExecFailed
from temps_shared.store.services import ServiceRecord

from temps_backup.artifact_fetch import checked_backup
from temps_backup.context import BackupWorker
from temps_backup.scratch_service import remove_orphans, scratch_service, when_ready
from temps_backup.service_target import catalogued

log = logging.getLogger(__name__)
NOT_VERIFIED = "nothing was verified"
ORPHAN_AFTER_S = 3600.0


async def handle_verify_backup(w: BackupWorker, command: VerifyBackup) -> None:
    found = await catalogued(w, command.service_id, command.backup_id)
    service, backup, engine, store = found.service, found.backup, found.engine, found.store
    if backup.state in ("requested", "running"):
        # The catalogue learns of the completion from the event this command follows.
        raise RetryableError(f"backup {command.backup_id} is not recorded complete yet", 2.0)
    if backup.state != "completed" or backup.location is None:
        raise TerminalError(f"backup {command.backup_id} is {backup.state}, not completed")
    folder = backup.location
    async with checked_backup(
        w.identity, store, folder, w.settings.backup_work_dir, NOT_VERIFIED, w.keyring
    ) as checked:
        expected: Figures = layout.open_figures(checked.manifest, w.keyring)
        version = str(checked.manifest.get("version") or service.version)
        image = await _image(w, service, version)
        extra = {"service_id": str(command.service_id), "message_id": str(command.message_id)}
        log.info("verifying backup %s in a scratch %s", command.backup_id, image, extra=extra)
        try:
            actual = await asyncio.to_thread(
                _test_restore, w, service, engine, image, command, checked.artifacts,
                checked.open_artifact,
            )  # fmt: skip
        except (ExecFailed, docker.errors.DockerException) as exc:
            raise TerminalError(f"the test restore failed: {exc}") from exc
    named = differences(expected, actual)
    if named:
        log.warning("backup %s differs after a test restore: %s", command.backup_id, named)
        await _announce_failure(w, command, "the test restore differs: " + reason(named))
        return
    matched = summary(expected) if expected else "restored; the backup recorded no figures"
    await publish_event(
        w.js,
        BackupVerified(service_id=command.service_id, backup_id=command.backup_id, summary=matched),
        origin=Role.BACKUP,
        dedupe_id=f"{command.message_id}:BackupVerified",
    )
    log.info("backup %s verified: %s", command.backup_id, matched, extra=extra)


async def _image(w: BackupWorker, service: ServiceRecord, version: str) -> str:
    """The image of the backed-up version on offer here, else the live container's."""
    image = offered_versions(w.settings, service.service_type).get(version)
    if image is not None:
        return image
    state = await w.runtime.inspect(container_name(service.service_type, service.name))
    if state is None or not state.image:
        raise TerminalError(f"{service.service_type} {version} is not offered here")
    return state.image


def _test_restore(
    w: BackupWorker,
    service: ServiceRecord,
    engine: EngineBackup,
    image: str,
    command: VerifyBackup,
    artifacts: list[dict[str, Any]],
    open_artifact: OpenArtifact,
) -> Figures:
    """Restore into a scratch copy; the figures of what came back."""
    # Longer than any verification runs: one bound per artifact and the readiness waits.
    orphaned = remove_orphans(w.docker, ORPHAN_AFTER_S + w.settings.backup_exec_timeout_s * 2)
    if orphaned:
        log.warning("removed scratch services left behind: %s", ", ".join(orphaned))
    with scratch_service(
        w.docker, service, image, command.backup_id, w.identity, w.settings.backup_exec_timeout_s
    ) as scratch:
        when_ready(lambda: engine.figures(scratch), f"the scratch {service.service_type}")
        engine.restore(scratch, artifacts, open_artifact)
        return when_ready(lambda: engine.figures(scratch), "the restored scratch")


async def _announce_failure(w: BackupWorker, command: VerifyBackup, text: str) -> None:
    await publish_event(
        w.js,
        BackupVerificationFailed(
            service_id=command.service_id, backup_id=command.backup_id, reason=text
        ),
        origin=Role.BACKUP,
        dedupe_id=f"{command.message_id}:BackupVerificationFailed",
    )


async def announce_verification_failure(
    w: BackupWorker, command: VerifyBackup, reason: str
) -> None:
    """A verification that could not be made (damaged artifact, failed restore …) fails."""
    await _announce_failure(w, command, reason)
