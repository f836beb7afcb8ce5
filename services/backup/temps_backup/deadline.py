"""Backups that never end are failed: one still requested or running `backup_deadline_s`
after it was asked for (a worker that died before publishing its command, a dump that hangs)
is marked failed with the reason, never left "in progress". The worker running it kills its
commands in the container at the deadline and writes no manifest after it (`run_backup`)."""

from __future__ import annotations

import logging

from temps_shared.bus.publish import publish_event
from temps_shared.messages import BackupFailed, Role

from temps_backup.context import BackupWorker

log = logging.getLogger(__name__)

_OVERDUE = """
SELECT backup_id, service_id FROM backups
WHERE state IN ('requested', 'running') AND requested_at < now() - make_interval(secs => $1)
ORDER BY requested_at LIMIT $2
"""


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def overdue_reason(deadline_s: float) -> str:
    return f"the backup did not finish within {_duration(deadline_s)}"


async def fail_overdue(w: BackupWorker, limit: int) -> int:
    """Publish BackupFailed for the overdue backups (the projector marks them); several
    replicas doing it at once publish one event (same de-duplication id)."""
    deadline = w.settings.backup_deadline_s
    rows = await w.pool.fetch(_OVERDUE, deadline, limit)
    for row in rows:
        reason = overdue_reason(deadline)
        await publish_event(
            w.js,
            BackupFailed(service_id=row["service_id"], backup_id=row["backup_id"], reason=reason),
            origin=Role.BACKUP,
            dedupe_id=f"{row['backup_id']}:BackupFailed",
        )
        log.warning("backup %s failed: %s", row["backup_id"], reason)
    return len(rows)
