"""The installation's backup destinations (`backup_destinations`): the one active row is where
new backups go; none active means the built-in store. Rows are never deleted while a backup
names them (a backup is read back from where it was written), only made inactive."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from temps_shared.backups.destination import Destination, destination_secret_aad
from temps_shared.crypto import KeyRing
from temps_shared.store.types import Connection, Executor


@dataclass(frozen=True)
class DestinationRow:
    """A destination as stored, without its secret."""

    id: UUID
    endpoint: str
    bucket: str
    region: str
    access_key_id: str
    path_style: bool
    ca_pem: str | None
    active: bool
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """What the API shows: never the secret key."""
        return {
            "built_in": False,
            "id": str(self.id),
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "path_style": self.path_style,
            "ca_pem": self.ca_pem,
            "created_at": self.created_at.isoformat(),
        }


# Changes of the active destination take turns (two at once would both find none active and
# the second insert would hit the one-active index).
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('backup_destinations'))"
_COLUMNS = "id, endpoint, bucket, region, access_key_id, path_style, ca_pem, active, created_at"


async def active_destination(conn: Executor) -> DestinationRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM backup_destinations WHERE active")
    return DestinationRow(**dict(row)) if row is not None else None


async def activate_destination(
    conn: Connection, keyring: KeyRing, destination: Destination
) -> DestinationRow:
    """Store `destination` (a new row, secret key encrypted with the master key and bound to
    the row's id) as the active one; the previous active row stays, inactive. Run it in a
    transaction (the lock is held until it ends)."""
    await deactivate_destinations(conn)
    return await insert_destination(conn, keyring, destination, active=True)


async def insert_destination(
    conn: Connection, keyring: KeyRing, destination: Destination, *, active: bool
) -> DestinationRow:
    """A new row for `destination`, its secret key encrypted with the master key and bound to
    the row's id."""
    destination_id = uuid4()
    row = await conn.fetchrow(
        "INSERT INTO backup_destinations (id, endpoint, bucket, region, access_key_id,"
        " secret_ciphertext, path_style, ca_pem, active) VALUES ($1, $2, $3, $4, $5, $6, $7,"
        f" $8, $9) RETURNING {_COLUMNS}",
        destination_id,
        destination.endpoint,
        destination.bucket,
        destination.region,
        destination.access_key_id,
        keyring.encrypt(
            destination.secret_access_key.encode(), destination_secret_aad(destination_id)
        ),
        destination.path_style,
        destination.ca_pem,
        active,
    )
    assert row is not None
    return DestinationRow(**dict(row))


async def deactivate_destinations(conn: Connection) -> UUID | None:
    """Back to the built-in store; the id of the row that was active, if any."""
    await conn.execute(_LOCK)
    previous: UUID | None = await conn.fetchval(
        "UPDATE backup_destinations SET active = false WHERE active RETURNING id"
    )
    return previous
