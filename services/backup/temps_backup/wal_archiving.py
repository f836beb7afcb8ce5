"""WAL archiving of a PostgreSQL service with pgBackRest (docs/pitr.md).

On: the service's S3 identity (the built-in store: its own, limited to its prefix; another
destination: that destination's key), the pgBackRest configuration and the store's CA onto the
primary's volume, a reconcile (the provisioner recreates the primary with archive_mode on
because the file is there), `stanza-create`, `check`, a first full backup. Off: the
configuration removed, a reconcile (archive_mode off), the identity withdrawn; the archive
stays until retention expires it.

Every step is idempotent and each delivery runs them all again: a crash or a redelivery
converges. The per-service lock is held while the volume is written and pgBackRest runs, never
while the provisioner recreates the container (it takes the same lock). A request superseded by
a newer one (the user changed their mind) is dropped."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
from temps_shared.backups import pgbackrest
from temps_shared.backups.archive_access import (
    ArchiveImportError,
    apply_archive_identities,
    store_service_endpoint,
)
from temps_shared.backups.destination import Destination, load_destination
from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.bus.publish import publish_command, publish_event
from temps_shared.engines import postgres
from temps_shared.engines.base import ServiceNotReadyError
from temps_shared.ids import container_name
from temps_shared.messages import (
    ConfigureWalArchiving,
    ReconcileService,
    Role,
    WalArchivingChanged,
    WalArchivingStep,
)
from temps_shared.runtime.container_io import ExecFailed, collect, exec_output, put_file
from temps_shared.service_lock import service_lock
from temps_shared.store import ports
from temps_shared.store.backup_schedules import schedule_of
from temps_shared.store.services import ServiceRecord, get_service
from temps_shared.store.wal_archiving import archived_services, archiving_of

from temps_backup.context import BackupWorker
from temps_backup.service_target import service_handle

log = logging.getLogger(__name__)

RECREATE_WAIT_S = 120.0  # the provisioner recreating the primary with the new archive_mode
POLL_S = 1.0
LOCK_WAIT_S = 30.0
COMMAND_TIMEOUT_S = 120.0  # stanza-create, check (check waits for a WAL switch to arrive)


async def handle_configure_wal_archiving(w: BackupWorker, command: ConfigureWalArchiving) -> None:
    async with w.pool.acquire() as conn:
        service = await get_service(conn, command.service_id)
        wanted = await archiving_of(conn, command.service_id)
    if service is None or service.purged:
        raise TerminalError(f"service {command.service_id} no longer exists")
    if service.service_type != "postgres":
        raise TerminalError("WAL archiving applies to PostgreSQL services only")
    if wanted is None or wanted.request_id != command.request_id:
        log.info("WAL archiving request %s was superseded", command.request_id)
        return
    if command.enabled:
        await _enable(w, service, command, wanted.requested_at)
    else:
        await _disable(w, service, command)


async def _current(w: BackupWorker, command: ConfigureWalArchiving) -> bool:
    """Still the request in flight? Asked again under the service lock before the volume is
    touched: an enable overtaken by a disable must not write its configuration back."""
    async with w.pool.acquire() as conn:
        wanted = await archiving_of(conn, command.service_id)
    current = wanted is not None and wanted.request_id == command.request_id
    if not current:
        log.info("WAL archiving request %s was superseded", command.request_id)
    return current


async def _enable(
    w: BackupWorker, service: ServiceRecord, command: ConfigureWalArchiving, asked_at: datetime
) -> None:
    primary = container_name(service.service_type, service.name)
    repository = await _repository(w, service)
    owner = await _postgres_owner(w, primary)
    user = service.credentials(w.keyring)["username"]
    config = pgbackrest.config(repository, service.name, int(service.version), user)
    async with service_lock(w.pool, service.id, wait_s=LOCK_WAIT_S):
        if not await _current(w, command):
            return
        await _run(w, primary, ["mkdir", "-p", "-m", "0700", pgbackrest.CONFIG_DIR], user=owner)
        if repository.ca_pem:
            await _put(w, primary, pgbackrest.CA_PATH, repository.ca_pem, owner)
        await _put(w, primary, postgres.ARCHIVE_CONFIG, config, owner)
    await _step(w, command, "configuration written")
    await _until_archive_mode(w, service, command, "on")
    await _step(w, command, "archive_mode on")
    async with service_lock(w.pool, service.id, wait_s=LOCK_WAIT_S):
        await _pgbackrest(w, primary, owner, service, "stanza-create")
        await _step(w, command, "stanza created")
        await _pgbackrest(w, primary, owner, service, "check")
        await _step(w, command, "archive checked")
    info = pgbackrest.parse_info(
        await _pgbackrest(w, primary, owner, service, "info", "--output=json"), service.name
    )
    # A full backup unless one ended after this request: after archiving was off for a while,
    # the archive has a gap that older backups cannot replay across. Outside the service
    # lock (it may take hours; pgBackRest holds a lock of its own).
    if info is None or not info.backups or info.backups[-1].stopped_at < asked_at:
        await _pgbackrest(
            w,
            primary,
            owner,
            service,
            "backup",
            "--type=full",
            timeout_s=w.settings.backup_deadline_s,
        )
    await _step(w, command, "first full backup taken")
    await _changed(w, command, "on")


async def _disable(w: BackupWorker, service: ServiceRecord, command: ConfigureWalArchiving) -> None:
    primary = container_name(service.service_type, service.name)
    async with service_lock(w.pool, service.id, wait_s=LOCK_WAIT_S):
        if not await _current(w, command):
            return
        # The configuration holds the service's S3 key: nothing of it stays on the volume.
        await _run(w, primary, ["rm", "-f", postgres.ARCHIVE_CONFIG, pgbackrest.CA_PATH])
    await _step(w, command, "configuration removed")
    await _until_archive_mode(w, service, command, "off")
    await _step(w, command, "archive_mode off")
    if w.settings.backup_store_container is not None:  # the service's identity withdrawn
        await _builtin_identities(w, service.id)
    await _changed(w, command, "off")


async def _repository(w: BackupWorker, service: ServiceRecord) -> pgbackrest.Repository:
    """Where the service archives, as its containers reach it. For the built-in store the
    store's identities are brought up to date first."""
    async with w.pool.acquire() as conn:
        wanted = await archiving_of(conn, service.id)
        destination_id = wanted.destination_id if wanted is not None else None
        destination = await load_destination(conn, w.keyring, destination_id, w.store.destination)
        retention = (await schedule_of(conn, service.id)).retention_days
    identity = await _builtin_identities(w, service.id) if destination.id is None else None
    return repository_for(w, destination, service.id, identity, retention)


def repository_for(
    w: BackupWorker,
    destination: Destination,
    service_id: UUID,
    identity: tuple[str, str] | None,
    retention_days: int = 7,
) -> pgbackrest.Repository:
    """The service's repository in `destination`, as service containers reach it: on the
    built-in store with the service's own `identity`, elsewhere with the destination's key."""
    if destination.id is None:
        assert identity is not None
        (access_key, secret_key), endpoint = identity, store_service_endpoint(w.settings)
    else:
        access_key, secret_key = destination.access_key_id, destination.secret_access_key
        endpoint = destination.endpoint
    try:
        return pgbackrest.repository(
            endpoint=endpoint,
            bucket=destination.bucket,
            region=destination.region,
            access_key=access_key,
            secret_key=secret_key,
            ca_pem=destination.ca_pem,
            service_id=service_id,
            retention_days=retention_days,
        )
    except pgbackrest.RepositoryError as exc:
        raise TerminalError(f"the backup destination cannot hold a WAL archive: {exc}") from exc


# One import at a time across replicas: each replaces the store's whole set of identities.
_IDENTITIES_LOCK = UUID("7e3f0c55-5a1e-4c1b-9d0e-1d3a9b6c2f10")


async def _builtin_identities(w: BackupWorker, service_id: UUID) -> tuple[str, str]:
    """Bring the built-in store's archive identities to the services that want archiving now
    (the request being carried out already counts); this service's (access key, secret)."""
    store = w.settings.backup_store_container
    if store is None:
        raise TerminalError(
            "the built-in backup store is not managed here (TEMPS_BACKUP_STORE_CONTAINER is"
            " unset): configure a backup destination to archive WAL"
        )
    async with service_lock(w.pool, _IDENTITIES_LOCK, wait_s=LOCK_WAIT_S):
        async with w.pool.acquire() as conn:  # the set as it is now, under the lock
            wanted = await archived_services(conn)
        identities = [(sid, *w.archive_identity(sid)) for sid in sorted(wanted)]
        try:
            await apply_archive_identities(w.docker, store, w.store.destination.bucket, identities)
        except ArchiveImportError as exc:
            raise RetryableError(
                f"the backup store did not take the identities: {exc}", 5.0
            ) from exc
    return w.archive_identity(service_id)


async def _until_archive_mode(
    w: BackupWorker, service: ServiceRecord, command: ConfigureWalArchiving, mode: str
) -> None:
    """Ask the provisioner to reconcile (it sets archive_mode from the volume) and wait until
    the running primary says `mode`, with the command the platform gives it."""
    if await _archive_mode(w, service) == mode:
        return
    await publish_command(
        w.js,
        ReconcileService(service_id=service.id, generation=service.generation,
                         reason=f"wal-archiving {mode}"),
        origin=Role.BACKUP,
    )  # fmt: skip
    deadline = time.monotonic() + RECREATE_WAIT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        if await _archive_mode(w, service) == mode:
            return
    raise RetryableError(f"archive_mode is not {mode} yet after the reconcile", 5.0)


async def _archive_mode(w: BackupWorker, service: ServiceRecord) -> str | None:
    """`on` only when the server archives with the platform's command; None when it cannot be
    asked (restarting)."""
    local_ports = await ports.local_ports(w.pool, service.id)
    primary = container_name(service.service_type, service.name)
    handle = service_handle(w, service, primary, local_ports)
    try:
        server = await postgres.connect(
            handle.endpoints["postgres"], handle.credentials, handle.ca_pem
        )
    except ServiceNotReadyError:  # restarting: asked again
        return None
    try:
        mode = await server.fetchval("SHOW archive_mode")
        command_line = await server.fetchval("SHOW archive_command")
    except (asyncpg.PostgresError, OSError):
        return None
    finally:
        await server.close()
    if mode == "on" and command_line != postgres.archive_command(service.name):
        return "foreign"
    return str(mode)


async def _postgres_owner(w: BackupWorker, container: str) -> str:
    """`uid:gid` of the image's postgres user (101 in the bullseye image, 100 in later ones)."""
    uid = (await _run(w, container, ["id", "-u", "postgres"])).strip()
    gid = (await _run(w, container, ["id", "-g", "postgres"])).strip()
    return f"{uid}:{gid}"


async def _run(
    w: BackupWorker,
    container: str,
    argv: list[str],
    *,
    user: str = "",
    timeout_s: float = COMMAND_TIMEOUT_S,
) -> str:
    def run() -> str:
        return collect(exec_output(w.docker, container, argv, {}, timeout_s, user=user))

    try:
        return await asyncio.to_thread(run)
    except ExecFailed as exc:
        raise RetryableError(f"{argv[0]} failed in {container}: {exc}", 5.0) from exc


async def _pgbackrest(
    w: BackupWorker,
    container: str,
    owner: str,
    service: ServiceRecord,
    *args: str,
    timeout_s: float = COMMAND_TIMEOUT_S,
) -> str:
    """As the image's postgres user (`owner`, uid:gid: asked once per request)."""
    argv = pgbackrest.command(service.name, *args)
    return await _run(w, container, argv, user=owner, timeout_s=timeout_s)


async def _put(w: BackupWorker, container: str, path: str, text: str, owner: str) -> None:
    data = text.encode()
    uid, gid = (int(x) for x in owner.split(":"))
    await asyncio.to_thread(put_file, w.docker, container, path, len(data), [data], (uid, gid))


async def _step(w: BackupWorker, command: ConfigureWalArchiving, step: str) -> None:
    log.info("WAL archiving of %s: %s", command.service_id, step)
    await publish_event(
        w.js,
        WalArchivingStep(service_id=command.service_id, request_id=command.request_id, step=step),
        origin=Role.BACKUP,
        dedupe_id=f"{command.request_id}:{step}",
    )


async def _changed(
    w: BackupWorker,
    command: ConfigureWalArchiving,
    state: Literal["on", "off", "failed"],
    reason: str | None = None,
) -> None:
    await publish_event(
        w.js,
        WalArchivingChanged(
            service_id=command.service_id,
            request_id=command.request_id,
            state=state,
            reason=reason,
        ),
        origin=Role.BACKUP,
        dedupe_id=f"{command.request_id}:{state}",
    )


async def announce_wal_archiving_failure(
    w: BackupWorker, command: ConfigureWalArchiving, reason: str
) -> None:
    await _changed(w, command, "failed", reason)
