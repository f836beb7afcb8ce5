"""A point-in-time restore of a PostgreSQL service's WAL archive into a new service (docs/pitr.md).

The new service is provisioned first (with the source's credentials: the restored data holds its
roles). Then, under the new service's lock: its primary stops; a helper container of the same
image, on the same volume, reads the source's archive (the source's prefix-limited identity
on the built-in store), picks the newest backup that ended before the target, empties the data
directory and runs `pgbackrest restore --type=time`; the primary starts, replays WAL up to the
target and promotes. When no commit after the target reached the archive, PostgreSQL stops
("recovery ended before configured recovery target was reached"): every archived commit is
then at or before the target, so the target is dropped and the whole archive replayed. Last, the
recovery settings pgBackRest wrote are reset (replicas cloned later must not inherit them) and
the source's configuration leaves the volume."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg
import docker.errors
from temps_shared.backups import pgbackrest
from temps_shared.backups.destination import load_destination
from temps_shared.bus.consume import RetryableError, TerminalError
from temps_shared.bus.publish import publish_event
from temps_shared.engines import postgres
from temps_shared.engines.base import ServiceNotReadyError
from temps_shared.ids import container_name
from temps_shared.messages import (
    PointInTimeRestored,
    PointInTimeRestoreFailed,
    RestoreToTime,
    Role,
)
from temps_shared.runtime.container_io import (
    ExecFailed,
    collect,
    exec_output,
    put_file,
    start_container,
    stop_container,
)
from temps_shared.service_lock import service_lock
from temps_shared.store import ports
from temps_shared.store.services import ServiceRecord, get_service
from temps_shared.store.wal_archiving import pitr_restore

from temps_backup.context import BackupWorker
from temps_backup.service_target import service_handle, wait_while_provisioning
from temps_backup.wal_archiving import repository_for

log = logging.getLogger(__name__)

RESTORE_CONFIG = f"{pgbackrest.CONFIG_DIR}/restore.conf"  # not ARCHIVE_CONFIG: no archiving
PROMOTE_WAIT_S = 300.0
POLL_S = 1.0
STEP_TIMEOUT_S = 120.0


async def handle_restore_to_time(w: BackupWorker, command: RestoreToTime) -> None:
    await wait_while_provisioning(w, command.service_id)
    async with w.pool.acquire() as conn:
        done = await pitr_restore(conn, command.service_id, command.restore_id)
        service = await get_service(conn, command.service_id)
        status = await conn.fetchval(
            "SELECT status FROM service_status WHERE service_id = $1", command.service_id
        )
    if done is not None and done["state"] != "requested":
        # A redelivery after the end: restoring again would wipe what was written since.
        log.info("point-in-time restore %s already ended", command.restore_id)
        return
    if service is None or service.purged:
        raise TerminalError(f"service {command.service_id} no longer exists")
    if status in (None, "provisioning"):
        raise RetryableError(f"service {service.name} is still being provisioned", 30.0)
    if status == "failed":
        raise TerminalError(f"service {service.name} failed to start; nothing was restored")
    config, ca_pem = await _source_config(w, command, service)
    primary = container_name(service.service_type, service.name)
    state = await w.runtime.inspect(primary)
    if state is None:
        raise RetryableError(f"{primary} is missing", 5.0)
    volume = state.mounts.get(postgres.DATA_MOUNT)
    if not volume:
        raise TerminalError(f"{primary} has no data volume at {postgres.DATA_MOUNT}")
    helper = _helper_name(command)
    async with service_lock(w.pool, service.id, wait_s=30.0):
        try:
            await asyncio.to_thread(stop_container, w.docker, primary, 60)
            await asyncio.to_thread(
                _restore_files, w, command, helper, state.image, volume, config, ca_pem
            )
            await asyncio.to_thread(start_container, w.docker, primary)
            await _until_promoted(w, service, primary, helper, state.image, volume)
            await _cleanup(w, service)
        except BaseException:
            # Whatever happened, the source's key leaves the volume and the service runs
            # (a restore that did not end is reported failed; its data is not to be trusted).
            await asyncio.to_thread(_forget_source, w, primary, helper, state.image, volume)
            raise
    log.info("restored %s into %s", command.stanza, service.name)
    await publish_event(
        w.js,
        PointInTimeRestored(service_id=service.id, restore_id=command.restore_id),
        origin=Role.BACKUP,
        dedupe_id=f"{command.restore_id}:PointInTimeRestored",
    )


async def _source_config(
    w: BackupWorker, command: RestoreToTime, service: ServiceRecord
) -> tuple[str, str | None]:
    """The source's repository configuration (read with the source's own identity), and the
    store's CA."""
    async with w.pool.acquire() as conn:
        destination = await load_destination(
            conn, w.keyring, command.destination_id, w.store.destination
        )
    source = command.source_service_id
    identity = w.archive_identity(source) if destination.id is None else None
    repository = repository_for(w, destination, source, identity)
    user = service.credentials(w.keyring)["username"]
    config = pgbackrest.config(repository, command.stanza, int(service.version), user)
    return config, destination.ca_pem


def _helper_name(command: RestoreToTime) -> str:
    """Never a service's name (no engine is called `pitr`): removing a leftover of a crashed
    restore can only remove this restore's own helper."""
    return f"temps-pitr-{command.restore_id.hex}"


def _in_helper(
    w: BackupWorker, image: str, volume: str, name: str, work: Callable[[str, str], None]
) -> None:
    """Run `work(container, postgres_uid_gid)` in a throw-away container of `image` with the
    service's data volume mounted (the service's own container is stopped meanwhile)."""
    with contextlib.suppress(docker.errors.NotFound):
        w.docker.containers.get(name).remove(force=True)  # a crash's leftover
    helper = w.docker.containers.run(
        image,
        entrypoint=["sleep", str(int(w.settings.backup_deadline_s + STEP_TIMEOUT_S))],
        command=[],
        name=name,
        volumes={volume: {"bind": postgres.DATA_MOUNT, "mode": "rw"}},
        network=w.settings.docker_network,
        detach=True,
    )
    try:
        uid = _exec(w, name, ["id", "-u", "postgres"]).strip()
        gid = _exec(w, name, ["id", "-g", "postgres"]).strip()
        work(name, f"{uid}:{gid}")
    finally:
        helper.remove(force=True)


def _exec(
    w: BackupWorker, container: str, argv: list[str], user: str = "", timeout_s: float = 60
) -> str:
    try:
        return collect(exec_output(w.docker, container, argv, {}, timeout_s, user=user))
    except ExecFailed as exc:
        raise RetryableError(f"{argv[0]} failed in {container}: {exc}", 10.0) from exc


def _put(w: BackupWorker, container: str, path: str, text: str, owner: str) -> None:
    data = text.encode()
    uid, gid = (int(x) for x in owner.split(":"))
    put_file(w.docker, container, path, len(data), [data], (uid, gid))


def _pgbackrest(stanza: str, *args: str) -> list[str]:
    return ["pgbackrest", f"--config={RESTORE_CONFIG}", f"--stanza={stanza}", *args]


def _restore_files(
    w: BackupWorker,
    command: RestoreToTime,
    helper_name: str,
    image: str,
    volume: str,
    config: str,
    ca_pem: str | None,
) -> None:
    """The data directory replaced by the backup set the target needs, with the recovery
    settings (restore_command through RESTORE_CONFIG, the target) that PostgreSQL follows at
    its next start."""

    def work(helper: str, owner: str) -> None:
        _exec(w, helper, ["mkdir", "-p", "-m", "0700", pgbackrest.CONFIG_DIR], owner)
        if ca_pem:
            _put(w, helper, pgbackrest.CA_PATH, ca_pem, owner)
        _put(w, helper, RESTORE_CONFIG, config, owner)
        info = pgbackrest.parse_info(
            _exec(w, helper, _pgbackrest(command.stanza, "info", "--output=json"), owner),
            command.stanza,
        )
        if info is None or not info.backups:
            raise TerminalError(f"the archive of {command.stanza} holds no backup")
        target = command.target_time
        label = pgbackrest.backup_set_for(info, target) if target else info.backups[-1].label
        if label is None:
            raise TerminalError(f"no backup of {command.stanza} ended before {target}")
        _exec(w, helper, ["find", postgres.PGDATA, "-mindepth", "1", "-delete"], owner)
        _exec(
            w, helper,
            _pgbackrest(command.stanza, *pgbackrest.restore_args(label, target, delta=False)),
            owner, w.settings.backup_deadline_s,
        )  # fmt: skip

    _in_helper(w, image, volume, helper_name, work)


async def _until_promoted(
    w: BackupWorker, service: ServiceRecord, primary: str, helper: str, image: str, volume: str
) -> None:
    """Wait until the primary has replayed to the target and promoted. If it stopped because no
    commit after the target reached the archive, replay the whole archive instead (once)."""
    local_ports = await ports.local_ports(w.pool, service.id)
    handle = service_handle(w, service, primary, local_ports)
    dropped_target = False
    deadline = time.monotonic() + PROMOTE_WAIT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        try:
            server = await postgres.connect(
                handle.endpoints["postgres"], handle.credentials, handle.ca_pem
            )
        except ServiceNotReadyError:
            if not dropped_target and await _stopped_before_target(w, primary):
                log.info("%s: no commit after the target was archived; replaying it all", primary)
                await asyncio.to_thread(_drop_target, w, primary, helper, image, volume)
                dropped_target = True
            continue
        try:
            if not await server.fetchval("SELECT pg_is_in_recovery()"):
                return
        except (asyncpg.PostgresError, OSError):
            pass
        finally:
            await server.close()
    raise TerminalError(f"{primary} did not finish recovery within {PROMOTE_WAIT_S:.0f} s")


async def _stopped_before_target(w: BackupWorker, primary: str) -> bool:
    """PostgreSQL ran out of archived WAL before a commit past the target. Only when fetching
    WAL did not fail: the same message follows an `archive-get` that failed (store down, key
    refused), and replaying on would then restore past the target; that is a failure."""

    def logs() -> str:
        return bytes(w.docker.containers.get(primary).logs(tail=200)).decode(errors="replace")

    text = await asyncio.to_thread(logs)
    if pgbackrest.TARGET_NOT_REACHED not in text:
        return False
    if "ERROR: [" in text:  # pgBackRest's own error lines (warn level logs nothing else)
        raise TerminalError("fetching archived WAL failed during recovery; nothing was trusted")
    return True


def _drop_target(w: BackupWorker, primary: str, helper: str, image: str, volume: str) -> None:
    stop_container(w.docker, primary, 30)
    auto_conf = f"{postgres.PGDATA}/postgresql.auto.conf"

    def work(helper: str, owner: str) -> None:
        text = _exec(w, helper, ["cat", auto_conf], owner)
        _put(w, helper, auto_conf, pgbackrest.without_recovery_target(text), owner)

    _in_helper(w, image, volume, helper, work)
    start_container(w.docker, primary)


def _forget_source(w: BackupWorker, primary: str, helper: str, image: str, volume: str) -> None:
    """Best effort after a failure: the source's configuration off the volume, the primary
    started again."""
    try:
        with contextlib.suppress(docker.errors.NotFound):
            w.docker.containers.get(primary).stop(timeout=30)

        def work(name: str, owner: str) -> None:
            _exec(w, name, ["rm", "-f", RESTORE_CONFIG, pgbackrest.CA_PATH], owner)

        _in_helper(w, image, volume, helper, work)
        start_container(w.docker, primary)
    except Exception:
        log.exception("after a failed restore, %s could not be cleaned up", primary)


async def _cleanup(w: BackupWorker, service: ServiceRecord) -> None:
    """The recovery settings reset (a replica cloned later would inherit them) and the
    source's configuration (its key) off the volume."""
    local_ports = await ports.local_ports(w.pool, service.id)
    primary = container_name(service.service_type, service.name)
    handle = service_handle(w, service, primary, local_ports)
    server = await postgres.connect(handle.endpoints["postgres"], handle.credentials, handle.ca_pem)
    try:
        for setting in pgbackrest.RECOVERY_SETTINGS:
            await server.execute(f"ALTER SYSTEM RESET {setting}")
        await server.execute("SELECT pg_reload_conf()")
    finally:
        await server.close()
    await asyncio.to_thread(_exec, w, primary, ["rm", "-f", RESTORE_CONFIG, pgbackrest.CA_PATH])


async def announce_pitr_failure(w: BackupWorker, command: RestoreToTime, reason: str) -> None:
    await publish_event(
        w.js,
        PointInTimeRestoreFailed(
            service_id=command.service_id, restore_id=command.restore_id, reason=reason
        ),
        origin=Role.BACKUP,
        dedupe_id=f"{command.restore_id}:PointInTimeRestoreFailed",
    )
