"""PostgreSQL: `pg_dump -Fc` of every database and `pg_dumpall --globals-only`, by the admin
over the container's loopback; restored database by database (dropped, then `pg_restore
--create`). The globals are kept for a restore onto a new installation; an in-place restore
leaves the live roles alone (their passwords may have been rotated since)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from temps_shared.backups.codec import decode
from temps_shared.backups.protocol import (
    Figures,
    OpenArtifact,
    ServiceHandle,
    Snapshot,
    exec_source,
)
from temps_shared.engines.postgres import PORT
from temps_shared.runtime.container_io import ExecInput, collect, exec_output

LIST_DATABASES = (
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
)


def _connection(credentials: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    return (
        ["-h", "127.0.0.1", "-p", str(PORT), "-U", credentials["username"]],
        {"PGPASSWORD": credentials["password"], "PGCONNECT_TIMEOUT": "10"},
    )


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class PostgresBackup:
    @contextlib.contextmanager
    def snapshot(self, handle: ServiceHandle) -> Iterator[Snapshot]:
        connection, env = _connection(handle.credentials)
        listing = collect(
            exec_output(
                handle.client,
                handle.container,
                ["psql", *connection, "-d", "postgres", "-XAt", "-c", LIST_DATABASES],
                env,
            )
        )
        databases = [line for line in listing.splitlines() if line]
        sources = [
            exec_source(
                "globals.sql",
                handle,
                ["pg_dumpall", *connection, "--globals-only"],
                env,
                {"format": "sql"},
            )
        ]
        for index, database in enumerate(databases):
            sources.append(
                exec_source(
                    f"database-{index}.dump",
                    handle,
                    ["pg_dump", *connection, "-Fc", "-d", database],
                    env,
                    {"format": "pg_dump-custom", "database": database},
                )
            )
        yield Snapshot(sources)

    def figures(self, handle: ServiceHandle) -> Figures:
        return {}

    def restore(
        self, handle: ServiceHandle, artifacts: list[dict[str, Any]], open_artifact: OpenArtifact
    ) -> None:
        target = handle
        connection, env = _connection(target.credentials)
        for artifact in artifacts:
            database = artifact.get("database")
            if database is None:
                continue
            # FORCE ends the sessions on it (the monitor's probes, applications).
            drop = f"DROP DATABASE IF EXISTS {_quoted(database)} WITH (FORCE)"
            collect(
                exec_output(
                    target.client,
                    target.container,
                    ["psql", *connection, "-d", "template1", "-X", "-v", "ON_ERROR_STOP=1",
                     "-c", drop],
                    env,
                )
            )  # fmt: skip
            stdin = ExecInput(
                target.client,
                target.container,
                ["pg_restore", *connection, "--create", "--exit-on-error", "-d", "template1"],
                env,
            )
            with open_artifact(artifact) as stored:
                try:
                    decode(stored, target.identity, stdin)
                except OSError:
                    stdin.finish(target.timeout_s)  # pg_restore stopped reading: its reason
                    raise
            stdin.finish(target.timeout_s)
