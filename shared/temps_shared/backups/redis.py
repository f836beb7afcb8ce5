"""Redis: an RDB snapshot through the backup ACL user (`redis-cli --rdb`, a replica's sync),
taken inside the container; restored by stopping the server, putting the RDB in its data
directory and starting it again (with AOF on, the AOF is rebuilt from the restored data)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import docker

from temps_shared.backups.codec import CHUNK, decode
from temps_shared.backups.protocol import (
    Figures,
    OpenArtifact,
    ServiceHandle,
    Snapshot,
    exec_source,
)
from temps_shared.engines.redis import DATA_MOUNT, PORT
from temps_shared.engines.redis_acl import ADMIN_USER, BACKUP_USER
from temps_shared.runtime.container_io import (
    ExecFailed,
    collect,
    exec_output,
    put_file,
    start_container,
    stop_container,
)

SPOOL = "/tmp/temps-backup.rdb"
# redis-cli writes the RDB to a file (6.x cannot write it to stdout): spooled in the
# container's /tmp, streamed out, removed whatever happened.
DUMP_SCRIPT = (
    f"redis-cli -h 127.0.0.1 -p {PORT} --user {BACKUP_USER} --no-auth-warning --rdb {SPOOL} >&2"
    f" && cat {SPOOL}; status=$?; rm -f {SPOOL}; exit $status"
)
READY_WAIT_S = 60.0
# Settings the server restarts with during a restore (its own come back afterwards).
RESTART_WITH = {"appendonly": "no", "save": "3600 1"}


def _admin(
    client: docker.DockerClient, container: str, credentials: dict[str, str], *args: str
) -> str:
    argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(PORT), "--user", ADMIN_USER,
            "--no-auth-warning", *args]  # fmt: skip
    return collect(exec_output(client, container, argv, {"REDISCLI_AUTH": credentials["password"]}))


def _config_get(
    client: docker.DockerClient, container: str, credentials: dict[str, str], key: str
) -> str:
    lines = _admin(client, container, credentials, "CONFIG", "GET", key).split("\n")
    return lines[1] if len(lines) > 1 else ""


def _configure(
    client: docker.DockerClient,
    container: str,
    credentials: dict[str, str],
    settings: dict[str, str],
) -> None:
    """Apply `settings` live and write them to the config file (CONFIG REWRITE)."""
    for key, value in settings.items():
        _admin(client, container, credentials, "CONFIG", "SET", key, value)
    _admin(client, container, credentials, "CONFIG", "REWRITE")


def _wait_ready(client: docker.DockerClient, container: str, credentials: dict[str, str]) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        try:
            if _admin(client, container, credentials, "PING").strip() == "PONG":
                return
        except (ExecFailed, docker.errors.APIError):
            pass
        if time.monotonic() >= deadline:
            raise ExecFailed(f"Redis did not answer within {READY_WAIT_S:.0f}s after the restore")
        time.sleep(0.3)


class RedisBackup:
    @contextlib.contextmanager
    def snapshot(self, handle: ServiceHandle) -> Iterator[Snapshot]:
        yield Snapshot(
            [
                exec_source(
                    "dump.rdb",
                    handle,
                    ["sh", "-c", DUMP_SCRIPT],
                    {"REDISCLI_AUTH": handle.credentials["backup_password"]},
                    {"format": "rdb"},
                )
            ]
        )

    def figures(self, handle: ServiceHandle) -> Figures:
        return {}

    def restore(
        self, handle: ServiceHandle, artifacts: list[dict[str, Any]], open_artifact: OpenArtifact
    ) -> None:
        target = handle
        (artifact,) = [a for a in artifacts if a.get("format") == "rdb"]
        client, container, credentials = target.client, target.container, target.credentials
        with tempfile.TemporaryFile() as plain:
            # Decoded first (the RDB's size goes into the archive header), before anything
            # about the service changes.
            with open_artifact(artifact) as stored:
                decode(stored, target.identity, plain)
            size = plain.tell()
            owner_text = collect(
                exec_output(client, container, ["stat", "-c", "%u %g", DATA_MOUNT], {})
            )
            uid, gid = (int(part) for part in owner_text.split())
            # The server must come back from the RDB: not from an AOF it would replay instead,
            # and not with persistence off (then the image's entrypoint removes the RDB).
            live = {key: _config_get(client, container, credentials, key) for key in RESTART_WITH}
            _configure(client, container, credentials, RESTART_WITH)
            stop_container(client, container, timeout_s=30)
            plain.seek(0)
            put_file(
                client,
                container,
                f"{DATA_MOUNT}/dump.rdb",
                size,
                iter(lambda: plain.read(CHUNK), b""),
                (uid, gid),
            )
            start_container(client, container)
            _wait_ready(client, container, credentials)
            _configure(client, container, credentials, live)
