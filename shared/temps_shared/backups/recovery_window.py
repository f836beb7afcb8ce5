"""A PostgreSQL service's recovery window, read from its pgBackRest repository in the bucket
alone (the gateway answers with it; a fresh installation can read it too): from one second
after the oldest backup ended (an earlier instant has no base backup to replay from; pgBackRest
picks a set that ended before the target) to when the newest WAL object was written (every
commit in it is at or before that instant)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from temps_shared.backups.pgbackrest import repo_path
from temps_shared.backups.store import BackupStore


@dataclass(frozen=True)
class RecoveryWindow:
    earliest: datetime | None
    latest: datetime | None

    def contains(self, at: datetime) -> bool:
        return (
            self.earliest is not None
            and self.latest is not None
            and self.earliest <= at <= self.latest
        )


def backup_stops(backup_info: str) -> list[datetime]:
    """When each backup of `backup.info` ended (its `[backup:current]` section: one line per
    backup label, a JSON object with `backup-timestamp-stop` in epoch seconds)."""
    stops: list[datetime] = []
    section = ""
    for line in backup_info.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[backup:current]" and "=" in line:
            fields = json.loads(line.split("=", 1)[1])
            stops.append(datetime.fromtimestamp(int(fields["backup-timestamp-stop"]), UTC))
    return stops


def recovery_window(store: BackupStore, service_id: UUID, stanza: str) -> RecoveryWindow:
    """Blocking (S3): call it in a thread."""
    root = repo_path(service_id).lstrip("/")
    info = store.read_text(f"{root}/backup/{stanza}/backup.info")
    stops = backup_stops(info) if info is not None else []
    if not stops:
        return RecoveryWindow(earliest=None, latest=None)
    earliest = min(stops) + timedelta(seconds=1)
    newest = store.last_object(f"{root}/archive/{stanza}/")
    # Right after the first backup its last segment is the newest WAL: a target up to then
    # replays the whole archive, which is the state at `earliest`.
    latest = max(newest[1], earliest) if newest is not None else earliest
    return RecoveryWindow(earliest=earliest, latest=latest)
