"""`temps backup …`: create, download and restore through the API (with progress bars), and
`list` / `restore-service`, which read the bucket directly so they work with no API at all
(disaster recovery onto a fresh installation: backup_recovery.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import httpx
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from temps_cli import backup_recovery, resolve
from temps_cli.client import ApiProblem, CliError, ExitCode, TempsClient
from temps_cli.completion import service_names
from temps_cli.output import JsonFlag, api, err_console, note, print_json, print_table

app = typer.Typer(
    help="Backups: create, list, download, restore; restore-service from the bucket alone.",
    no_args_is_help=True,
)

ServiceRef = Annotated[
    str,
    typer.Argument(
        help="The service's name or id.", show_default=False, autocompletion=service_names
    ),
]
BackupId = Annotated[str, typer.Argument(help="The backup's id.", show_default=False)]
Timeout = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait at most.", min=1, show_default=True)
]
BucketName = Annotated[str, typer.Option("--bucket-name", help="The bucket backups are in.")]
Endpoint = Annotated[str, typer.Option("--endpoint", help="The S3 endpoint URL.")]
AccessKeyId = Annotated[str, typer.Option("--access-key-id", help="S3 access key id.")]
SecretAccessKey = Annotated[
    str,
    typer.Option(
        "--secret-access-key",
        envvar="TEMPS_BACKUP_SECRET_ACCESS_KEY",
        help="S3 secret key (or TEMPS_BACKUP_SECRET_ACCESS_KEY, kept out of the process list).",
    ),
]
# Optional, beside the spec's flags: how to talk to a store other than plain AWS S3.
Region = Annotated[str, typer.Option("--region", help="The bucket's S3 region.")]
PathStyle = Annotated[
    bool,
    typer.Option(
        "--path-style/--virtual-hosted-style",
        help="Address the bucket in the URL path (MinIO, SeaweedFS, the built-in store) or as "
        "a host name (AWS).",
    ),
]
CaFile = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        help="A CA certificate (PEM) to trust for an https endpoint, e.g. the installation's "
        "<data_dir>/ca.pem for the built-in store.",
        show_default=False,
    ),
]
POLL_S = 0.5
LIST_COLUMNS = ("id", "engine", "version", "service", "finished_at", "size_bytes")


def _backups_path(service_id: str, backup_id: str | None = None) -> str:
    path = f"/api/external-services/{service_id}/backups"
    return path if backup_id is None else f"{path}/{backup_id}"


def _poll(
    settled: Callable[[], dict[str, Any] | None], timeout_s: float, what: str
) -> dict[str, Any]:
    """`settled()` every POLL_S until it answers, at most `timeout_s` (exit 6)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = settled()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise CliError(f"gave up after {timeout_s:g}s waiting for {what}", ExitCode.TIMEOUT)
        time.sleep(POLL_S)


def _spinner() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def follow_restore(
    client: TempsClient, service_id: str, backup_id: str, restore_id: str, timeout_s: float
) -> dict[str, Any]:
    """Until the restore `restore_id` of the backup ended; a failed one exits 1 with its
    reason."""
    with _spinner() as progress:
        task = progress.add_task("restoring", total=None)

        def ended() -> dict[str, Any] | None:
            entry: dict[str, Any] = client.get(_backups_path(service_id, backup_id))
            restore = entry.get("restore") or {}
            if restore.get("id") != restore_id:
                raise CliError(f"backup {backup_id} was restored again meanwhile")
            progress.update(task, description=f"restore {restore.get('state')}")
            return restore if restore.get("state") in ("completed", "failed") else None

        restore = _poll(ended, timeout_s, f"restore {restore_id}")
    if restore["state"] == "failed":
        raise CliError(f"the restore failed: {restore.get('reason')}", ExitCode.PLATFORM)
    note(f"restore {restore_id} completed")
    return restore


@app.command("create")
def create(
    service: ServiceRef,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow it to the end.")] = True,
    timeout_s: Timeout = 3600.0,
    as_json: JsonFlag = False,
) -> None:
    """Back the service up now, following its progress until it completed or failed."""
    client = api()
    service_id = resolve.service_id(client, service)
    entry: dict[str, Any] = client.post(_backups_path(service_id))
    if wait:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), DownloadColumn(),
                   TransferSpeedColumn(), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task("requested", total=None)

            def ended() -> dict[str, Any] | None:
                current: dict[str, Any] = client.get(_backups_path(service_id, entry["id"]))
                progress.update(
                    task, description=current["state"], completed=current.get("bytes_done") or 0
                )
                return current if current["state"] in ("completed", "failed") else None

            entry = _poll(ended, timeout_s, f"backup {entry['id']}")
        if entry["state"] == "failed":
            raise CliError(f"backup {entry['id']} failed: {entry.get('reason')}")
        note(f"backup {entry['id']} completed: {entry.get('size_bytes')} bytes stored")
    if as_json:
        print_json(entry)
    else:
        typer.echo(entry["id"])


@app.command("download")
def download(
    service: ServiceRef,
    backup_id: BackupId,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default: the name the API gives)."),
    ] = None,
    artifact: Annotated[
        str | None,
        typer.Option(help="An artifact of the backup (default: the main one, e.g. the dump)."),
    ] = None,
) -> None:
    """Download a backup's artifact, decrypted and decompressed (needs secrets:read)."""
    client = api()
    service_id = resolve.service_id(client, service)
    params = {"artifact": artifact} if artifact else None
    path = _backups_path(service_id, backup_id) + "/download"
    partial: Path | None = None
    try:
        # The client's own connection (token, transport); streamed, so no read timeout.
        with client._http.stream("GET", path, params=params, timeout=httpx.Timeout(None)) as r:
            if r.status_code >= 400:
                r.read()
                raise _problem(r)
            target = output or Path(_file_name(r) or f"{backup_id}.bin")
            partial = target.with_name(f".{target.name}.part")
            columns = (TextColumn(target.name), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeElapsedColumn())  # fmt: skip
            with partial.open("wb") as out, Progress(*columns, console=err_console) as progress:
                task = progress.add_task("download", total=None)
                for chunk in r.iter_bytes():
                    out.write(chunk)
                    progress.advance(task, len(chunk))
    except httpx.HTTPError as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise CliError(f"the download broke off: {exc}; nothing was kept") from exc
    partial.replace(target)
    note(f"wrote {target} ({target.stat().st_size} bytes)")


def _file_name(response: httpx.Response) -> str | None:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename":
            return Path(value.strip('"')).name or None
    return None


def _problem(response: httpx.Response) -> ApiProblem:
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    return ApiProblem(response.status_code, message)


@app.command("restore")
def restore(
    service: ServiceRef,
    backup_id: BackupId,
    as_new: Annotated[
        str | None,
        typer.Option("--as-new", help="Restore into a new service of this name, not in place."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow it to the end.")] = True,
    timeout_s: Timeout = 3600.0,
) -> None:
    """Restore a backup: in place (the service's data is replaced) or `--as-new NAME`."""
    client = api()
    service_id = resolve.service_id(client, service)
    body = {"as_new_service": as_new} if as_new else None
    answer: dict[str, Any] = client.post(_backups_path(service_id, backup_id) + "/restore", body)
    if as_new:
        note(f"new service {as_new}: {answer['new_service']['id']}")
    restore_id = answer["restore"]["id"]
    if wait:
        follow_restore(client, service_id, backup_id, restore_id, timeout_s)
    else:
        typer.echo(restore_id)


def _bucket(
    name: str,
    endpoint: str,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    path_style: bool,
    ca_file: Path | None,
) -> backup_recovery.Bucket:
    return backup_recovery.Bucket(
        name,
        endpoint,
        access_key_id,
        secret_access_key,
        region=region,
        path_style=path_style,
        ca_pem=backup_recovery.read_ca_file(ca_file),
    )


@app.command("list")
def list_backups(
    bucket_name: BucketName,
    endpoint: Endpoint,
    access_key_id: AccessKeyId,
    secret_access_key: SecretAccessKey,
    region: Region = "us-east-1",
    path_style: PathStyle = True,
    ca_file: CaFile = None,
    as_json: JsonFlag = False,
) -> None:
    """The backups in the bucket, read from their manifests (no API needed); a manifest that
    cannot be read is named on stderr and left out."""
    bucket = _bucket(
        bucket_name, endpoint, access_key_id, secret_access_key, region, path_style, ca_file
    )

    def unreadable(key: str, exc: Exception) -> None:
        note(f"warning: skipped {key}: {exc}")

    summaries = [b.summary() for b in backup_recovery.stored_backups(bucket, unreadable)]
    if as_json:
        print_json(summaries)
    else:
        print_table(summaries, LIST_COLUMNS)


@app.command("restore-service")
def restore_service(
    bucket_name: BucketName,
    endpoint: Endpoint,
    access_key_id: AccessKeyId,
    secret_access_key: SecretAccessKey,
    database_url: Annotated[
        str,
        typer.Option(
            "--database-url",
            envvar="TEMPS_DATABASE_URL",
            help="The (fresh) installation's control-plane database.",
        ),
    ],
    backup_id: Annotated[UUID, typer.Option("--backup-id", help="The backup to restore.")],
    service_name: Annotated[
        str, typer.Option("--service-name", help="The name of the service to bring back.")
    ],
    encryption_key: Annotated[
        str,
        typer.Option(
            "--encryption-key",
            envvar="TEMPS_ENCRYPTION_KEY",
            help="The 64-hex master key of the installation that took the backup.",
        ),
    ],
    timeout_s: Timeout = 900.0,
    region: Region = "us-east-1",
    path_style: PathStyle = True,
    ca_file: CaFile = None,
) -> None:
    """Bring a service back from the bucket and the master key alone: registers it (engine,
    version, settings, credentials) in the control-plane database with the backup, and queues
    its provisioning and the restore; follows them when the API answers."""
    keyring = backup_recovery.master_key(encryption_key)
    bucket = _bucket(
        bucket_name, endpoint, access_key_id, secret_access_key, region, path_style, ca_file
    )
    stored = backup_recovery.stored_backup(bucket, backup_id, keyring)
    queued = backup_recovery.register(database_url, keyring, stored, bucket, service_name)
    note(
        f"service {service_name} ({stored.engine} {stored.manifest.get('version')}) registered: "
        f"{queued.service_id}; restore {queued.restore_id} of backup {backup_id} queued"
    )
    try:
        client = api()
        client.get(f"/api/external-services/{queued.service_id}")
    except CliError as exc:
        note(
            f"the API is not reachable ({exc.message}): once the platform runs, its gateway "
            f"provisions {service_name} and the backup worker restores the backup into it; "
            f"follow with `temps services show {service_name}`"
        )
        typer.echo(str(queued.service_id))
        return
    follow_restore(client, str(queued.service_id), str(backup_id), str(queued.restore_id),
                   timeout_s)  # fmt: skip
    typer.echo(str(queued.service_id))
