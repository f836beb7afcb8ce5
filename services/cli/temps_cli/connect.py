"""`temps connect SERVICE [-c STATEMENT]`: a shell on a service as its administrator, over TLS
verified against the installation CA, on the service's loopback address — `psql`, `redis-cli`,
or a small S3 shell. A client missing on this host runs from the engine's own image.

Passwords reach the client in its environment (PGPASSWORD, REDISCLI_AUTH), never in argv; the
CA is written to a private temporary directory removed afterwards."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from temps_cli import resolve
from temps_cli.client import CliError, ExitCode
from temps_cli.output import api
from temps_cli.runner import execute
from temps_cli.s3_shell import run_s3_shell

CA_IN_IMAGE = "/run/temps-ca"  # where the CA's directory is mounted when the client is in Docker


@dataclass(frozen=True)
class Invocation:
    """A client to start: its program and arguments (the CA file under `ca_dir`), and the
    variables holding its secrets."""

    argv: list[str]
    secrets: dict[str, str] = field(default_factory=dict)


def psql_invocation(
    service: dict[str, Any], creds: dict[str, Any], ca_file: str, statement: str | None
) -> Invocation:
    info = service["connection_info"]
    conninfo = (
        f"host={info['local_host']} port={info['local_port']} user={creds['username']} "
        f"dbname={creds['database']} sslmode=verify-full sslrootcert={ca_file}"
    )
    argv = ["psql", conninfo]
    if statement is not None:
        argv += ["-v", "ON_ERROR_STOP=1", "-c", statement]
    return Invocation(argv, {"PGPASSWORD": str(creds["password"])})


def redis_cli_invocation(
    service: dict[str, Any], creds: dict[str, Any], ca_file: str, statement: str | None
) -> Invocation:
    info = service["connection_info"]
    argv = ["redis-cli", "-h", info["local_host"], "-p", str(info["local_tls_port"])]
    argv += ["--tls", "--cacert", ca_file, "--user", str(creds["username"])]
    if statement is not None:
        argv += shlex.split(statement)
    return Invocation(argv, {"REDISCLI_AUTH": str(creds["password"])})


CLIENTS = {"postgres": psql_invocation, "redis": redis_cli_invocation}


def in_image(invocation: Invocation, image: str, ca_dir: str, interactive: bool) -> Invocation:
    """The same client run from `image` on the host's network (so 127.0.0.1 is this host's);
    `-e NAME` without a value hands docker's own environment variable on, not its value."""
    argv = ["docker", "run", "--rm", "-i", "--pull", "never", "--network", "host"]
    if interactive:
        argv.append("-t")
    argv += ["-v", f"{ca_dir}:{CA_IN_IMAGE}:ro"]
    for name in invocation.secrets:
        argv += ["-e", name]
    argv += ["--entrypoint", invocation.argv[0], image]
    argv += [a.replace(ca_dir, CA_IN_IMAGE) for a in invocation.argv[1:]]
    return Invocation(argv, invocation.secrets)


def _write_ca(directory: Path, pem: str) -> str:
    path = directory / "ca.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pem if pem.endswith("\n") else pem + "\n")
    return str(path)


def _run(invocation: Invocation) -> int:
    if shutil.which(invocation.argv[0]) is None:
        raise CliError(f"{invocation.argv[0]} is not installed here", ExitCode.PLATFORM)
    return execute(invocation.argv, invocation.secrets)


def connect(
    service: Annotated[str, typer.Argument(help="The service's name or id.", show_default=False)],
    command: Annotated[
        str | None,
        typer.Option("--command", "-c", help="Run this one statement, print, exit with its code."),
    ] = None,
    from_image: Annotated[
        bool,
        typer.Option(
            "--from-image",
            help="Run the client from the engine's image even if one is installed here.",
        ),
    ] = False,
) -> None:
    """Open a shell on a service as its administrator (psql, redis-cli, an S3 shell), over
    verified TLS; needs secrets:read."""
    client = api()
    sid = resolve.service_id(client, service)
    record: dict[str, Any] = client.get(f"/api/external-services/{sid}")
    if not (record.get("connection_info") or {}).get("local_port"):
        raise CliError(
            f"service {record.get('name')} is {record.get('status')}: it has no address yet",
            ExitCode.CONFLICT,
        )
    creds: dict[str, Any] = client.get(f"/api/external-services/{sid}/credentials")
    kind = str(record.get("service_type"))
    with tempfile.TemporaryDirectory(prefix="temps-connect-") as ca_dir:
        ca_file = _write_ca(Path(ca_dir), str(creds["ca_certificate"]))
        if kind == "s3":
            raise typer.Exit(run_s3_shell(creds, ca_file, command))
        build = CLIENTS.get(kind)
        if build is None:
            raise CliError(f"no shell for a {kind} service", ExitCode.INPUT)
        invocation = build(record, creds, ca_file, command)
        if from_image or shutil.which(invocation.argv[0]) is None:
            image = f"temps/{kind}:{record.get('version')}"
            interactive = command is None and sys.stdin.isatty()
            invocation = in_image(invocation, image, ca_dir, interactive)
        code = _run(invocation)
    raise typer.Exit(code)
