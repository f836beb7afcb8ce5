"""Retention: a finished backup (completed or failed) older than its service's
`retention_days`, and every finished backup of a service deleted (purged) more than
`backup_deleted_service_grace_s` ago, is deleted: every object of its folder in its own
destination first (and unfinished multipart uploads there), then its catalogue row (with a
BackupDeleted event). A crash in between leaves a row whose folder is empty: the next round
deletes it again. Backups still open are the deadline's.

Never deleted by age: a backup being restored (`restore_state = 'requested'`), and the newest
completed backup of a service that still exists (with automatic backups off or failing, it is
the only way back; the next completed backup lets it expire). Age counts from when the backup
ended or from when this installation registered it, whichever is later: a backup imported by
`temps backup restore-service` carries the old installation's times."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from temps_shared.backups import layout
from temps_shared.backups.destination import load_destination
from temps_shared.backups.store import BackupStore
from temps_shared.bus.publish import publish_event
from temps_shared.messages import BackupDeleted, Role
from temps_shared.store.backup_schedules import DEFAULT_RETENTION_DAYS
from temps_shared.store.types import Connection

from temps_backup.context import BackupWorker

log = logging.getLogger(__name__)

# Age counts from when the backup ended (when it was asked for, if it never did), or from when
# it entered this catalogue if later (an imported backup). A deleted service's schedule row is
# gone: its backups count with the default retention meanwhile.
_AGED = """
greatest(coalesce(b.finished_at, b.requested_at), b.registered_at)
    < now() - make_interval(days => coalesce(c.retention_days, $2))
"""
# The newest completed backup of a live service is its last way back: kept whatever its age.
_NEWEST = """
b.state = 'completed' AND NOT s.purged AND NOT EXISTS (
    SELECT 1 FROM backups n WHERE n.service_id = b.service_id AND n.state = 'completed'
      AND (n.finished_at, n.backup_id) > (b.finished_at, b.backup_id))
"""
_EXPIRED = f"""
SELECT b.backup_id, b.service_id, b.location, b.destination_id, b.requested_at,
       s.service_type, s.name, {_AGED} AS aged
FROM backups b
JOIN services s ON s.id = b.service_id
LEFT JOIN backup_schedules c ON c.service_id = b.service_id
WHERE b.state IN ('completed', 'failed')
  AND b.restore_state IS DISTINCT FROM 'requested'
  AND ((s.purged AND s.updated_at < now() - make_interval(secs => $3))
       OR ({_AGED} AND NOT ({_NEWEST})))
ORDER BY b.requested_at
LIMIT $1
FOR UPDATE OF b SKIP LOCKED
"""


async def sweep(w: BackupWorker, limit: int) -> int:
    """Delete up to `limit` expired backups; returns how many went. The rows stay locked
    while their objects are deleted, so replicas sweep disjoint backups."""
    deleted = 0
    stores: dict[UUID | None, BackupStore] = {None: w.store}
    unreachable: set[UUID | None] = set()  # destinations that failed this round: not retried
    async with w.pool.acquire() as conn, conn.transaction():
        grace = w.settings.backup_deleted_service_grace_s
        for row in await conn.fetch(_EXPIRED, limit, DEFAULT_RETENTION_DAYS, grace):
            backup_id: UUID = row["backup_id"]
            # The folder the worker wrote to (or would have: it is derived from the row).
            folder = row["location"] or layout.backup_folder(
                row["service_type"], row["name"], row["requested_at"], backup_id
            )
            if not folder.endswith(f"/{backup_id}/"):
                log.error("backup %s has an unexpected folder %r; kept", backup_id, folder)
                continue
            if row["destination_id"] in unreachable:
                continue
            try:
                store = await _store(conn, w, stores, row["destination_id"])
                objects = await asyncio.to_thread(store.delete_folder, folder)
                reason = "retention expired" if row["aged"] else "its service was deleted"
                await publish_event(
                    w.js,
                    BackupDeleted(service_id=row["service_id"], backup_id=backup_id, reason=reason),
                    origin=Role.BACKUP,
                    dedupe_id=f"{backup_id}:BackupDeleted",
                )
            except Exception as exc:  # a destination that is down: next round tries again
                log.warning("backup %s could not be deleted yet: %s", backup_id, exc)
                unreachable.add(row["destination_id"])
                continue
            await conn.execute("DELETE FROM backups WHERE backup_id = $1", backup_id)
            log.info("deleted backup %s (%s, %d objects)", backup_id, reason, objects)
            deleted += 1
    return deleted


async def _store(
    conn: Connection, w: BackupWorker, stores: dict[UUID | None, BackupStore], key: UUID | None
) -> BackupStore:
    if key not in stores:
        destination = await load_destination(conn, w.keyring, key, w.store.destination)
        stores[key] = BackupStore(destination)
    return stores[key]
