"""pgBackRest for PostgreSQL point-in-time recovery: the config file, the command lines, the
reading of `info --output=json` and the choice of a backup set. Pure: no I/O, no Docker.

The recipe (checked against pgBackRest 2.33 on :13, 2.45 on :15, 2.55 on :17) and its traps:
- pgBackRest speaks only HTTPS to S3, and checks the certificate against the endpoint's NAME:
  an http:// destination or one given as an IP address cannot work (`repository()` refuses
  them). The store's CA goes next to the config, both 0600 and owned by postgres.
- `repo1-bundle=y` (2.39 and later) cuts a full backup 4x; 2.33 rejects the option.
- `io-timeout` does not bound one archive-push (a frozen store held one for 3 minutes with no
  failure visible), so archive_command runs under `timeout 60` (no `-k`: a KILL's exit status
  would make PostgreSQL restart the archiver).
- A recovery target must read `YYYY-MM-DD HH:MM:SS.ffffff+00`: with an ISO `T`/`Z` 2.33 quietly
  takes the latest set and 2.55 refuses.
- Pick the backup set yourself (the newest that stopped before the target) and pass `--set`:
  2.33 and 2.55 differ when left to choose. The earliest restorable time is the first stop + 1 s.
- After promotion the recovery settings stay in postgresql.auto.conf (and would be copied into
  every replica cloned later): reset them. When no commit after the target was archived,
  recovery stops with TARGET_NOT_REACHED; drop the target and replay to the end instead.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from temps_shared.backups.archive_access import archive_prefix
from temps_shared.engines import postgres
from temps_shared.engines.postgres import ARCHIVE_CONFIG, DATA_MOUNT, PGDATA

__all__ = [
    "ARCHIVE_CONFIG",
    "CA_PATH",
    "CONFIG_DIR",
    "PGDATA",
    "RECOVERY_SETTINGS",
    "TARGET_NOT_REACHED",
    "PhysicalBackup",
    "Repository",
    "RepositoryError",
    "StanzaInfo",
    "archive_command",
    "backup_set_for",
    "command",
    "config",
    "earliest_restorable",
    "format_target",
    "is_wal_segment",
    "parse_info",
    "repo_path",
    "repository",
    "restore_args",
    "supports_bundle",
    "without_recovery_target",
]

CONFIG_DIR = f"{DATA_MOUNT}/temps"  # 0700, owned by postgres; ARCHIVE_CONFIG lives here
CA_PATH = f"{CONFIG_DIR}/s3-ca.pem"
BUNDLE_SINCE_MAJOR = 15  # our :15 ships 2.45 and :17 2.55 (bundle since 2.39); :13 ships 2.33
RECOVERY_SETTINGS = ("restore_command", "recovery_target_time", "recovery_target_action")
TARGET_NOT_REACHED = "recovery ended before configured recovery target was reached"

# archive_command goes through a shell and the stanza is an ini section: keep it plain.
_STANZA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_DNS_NAME_RE = re.compile(
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
_WAL_SEGMENT_RE = re.compile(r"[0-9A-F]{24}")


class RepositoryError(ValueError):
    """A destination pgBackRest cannot use (http://, an IP address as host, no host...)."""


@dataclass(frozen=True)
class Repository:
    host: str  # a DNS name the store's certificate carries
    port: int
    bucket: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    path: str  # "/pgbackrest/<service id>"
    ca_pem: str | None = field(repr=False)  # written to CA_PATH; None: the system's roots
    retention_days: int = 7


def repo_path(service_id: UUID) -> str:
    """Per service id, not name: a new service reusing a name never meets an old archive. The
    prefix its identity on the built-in store is limited to."""
    return "/" + archive_prefix(service_id).rstrip("/")


def repository(
    endpoint: str,
    bucket: str,
    region: str,
    access_key: str,
    secret_key: str,
    ca_pem: str | None,
    service_id: UUID,
    retention_days: int = 7,
) -> Repository:
    """The repository of a service at an S3 endpoint such as `https://backup-store:8333`."""
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port or 443
    except ValueError as exc:
        raise RepositoryError(f"not a usable endpoint: {endpoint!r} ({exc})") from exc
    if parts.scheme != "https":
        raise RepositoryError(f"pgBackRest reaches S3 over https only, not {endpoint!r}")
    host = parts.hostname
    if not host:
        raise RepositoryError(f"the endpoint {endpoint!r} names no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise RepositoryError(
            f"the endpoint {endpoint!r} is an IP address: pgBackRest checks the certificate "
            "against a DNS name, give the store's name instead"
        )
    if not _DNS_NAME_RE.fullmatch(host):
        raise RepositoryError(f"{host!r} is not a DNS name")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
        raise RepositoryError(f"the endpoint {endpoint!r} must be just https://host[:port]")
    if retention_days < 1:
        raise RepositoryError("retention_days must be at least 1")
    for name, value in (("bucket", bucket), ("region", region), ("access key", access_key)):
        if not value or any(c.isspace() for c in value):
            raise RepositoryError(f"the {name} must be non-empty without spaces")
    if not secret_key or "\n" in secret_key or "\r" in secret_key:
        raise RepositoryError("the secret key must be non-empty on one line")
    return Repository(
        host=host,
        port=port,
        bucket=bucket,
        region=region,
        access_key=access_key,
        secret_key=secret_key,
        path=repo_path(service_id),
        ca_pem=ca_pem,
        retention_days=retention_days,
    )


def supports_bundle(pg_major: int) -> bool:
    """Whether our image of this major ships a pgBackRest with `repo1-bundle` (2.39+)."""
    return pg_major >= BUNDLE_SINCE_MAJOR


def _stanza(stanza: str) -> str:
    if not _STANZA_RE.fullmatch(stanza):
        raise ValueError(f"not a plain stanza name: {stanza!r}")
    return stanza


def config(repo: Repository, stanza: str, pg_major: int, pg_user: str) -> str:
    """pgbackrest.conf (written 0600 as postgres to ARCHIVE_CONFIG). It holds the secret key:
    process listings then show only `--config=... --stanza=...`."""
    options = {
        "repo1-type": "s3",
        "repo1-path": repo.path,
        "repo1-s3-bucket": repo.bucket,
        "repo1-s3-endpoint": repo.host,
        "repo1-storage-port": str(repo.port),
        "repo1-s3-region": repo.region,
        "repo1-s3-uri-style": "path",
        "repo1-s3-key": repo.access_key,
        "repo1-s3-key-secret": repo.secret_key,
        **({"repo1-storage-ca-file": CA_PATH} if repo.ca_pem is not None else {}),
        "repo1-retention-full-type": "time",
        "repo1-retention-full": str(repo.retention_days),
        **({"repo1-bundle": "y"} if supports_bundle(pg_major) else {}),
        "compress-type": "zst",
        "compress-level": "3",
        "process-max": "1",
        "io-timeout": "10",
        "start-fast": "y",
        "log-level-console": "warn",  # `info` writes ~6 lines per pushed segment to the server log
        "log-level-file": "off",
    }
    lines = ["[global]", *(f"{key}={value}" for key, value in options.items())]
    # pg1-user: the server is reached over its local socket as the service's administrator.
    lines += ["", f"[{_stanza(stanza)}]", f"pg1-path={PGDATA}", f"pg1-user={pg_user}", ""]
    return "\n".join(lines)


def command(stanza: str, *args: str) -> list[str]:
    """A pgBackRest command line (run it as postgres in the service's container, under a
    timeout of its own)."""
    return ["pgbackrest", f"--config={ARCHIVE_CONFIG}", f"--stanza={_stanza(stanza)}", *args]


def archive_command(stanza: str) -> str:
    """The server's archive_command (the reconcile puts it on the primary's command line)."""
    return postgres.archive_command(_stanza(stanza))


def format_target(at: datetime) -> str:
    """A recovery target as every version reads it: UTC, microseconds, an explicit `+00`."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a recovery target needs a timezone")
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


@dataclass(frozen=True)
class PhysicalBackup:
    label: str  # e.g. 20261203-200428F_20261203-200440I
    type: str  # full | diff | incr
    started_at: datetime
    stopped_at: datetime
    size_bytes: int  # the database's size
    repo_size_bytes: int  # in the repository, compressed
    wal_start: str | None
    wal_stop: str | None


@dataclass(frozen=True)
class StanzaInfo:
    stanza: str
    status_code: int  # 0 ok; 1 missing stanza path; 2 no valid backups; ...
    status_message: str
    backups: list[PhysicalBackup]  # oldest first
    archive_min: str | None  # WAL segment names; pgBackRest keeps no time for them
    archive_max: str | None


def _epoch(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)


def _backup(entry: dict[str, Any]) -> PhysicalBackup:
    info = entry.get("info") or {}
    archive = entry.get("archive") or {}
    return PhysicalBackup(
        label=str(entry["label"]),
        type=str(entry["type"]),
        started_at=_epoch(entry["timestamp"]["start"]),
        stopped_at=_epoch(entry["timestamp"]["stop"]),
        size_bytes=int(info.get("size") or 0),
        repo_size_bytes=int((info.get("repository") or {}).get("size") or 0),
        wal_start=archive.get("start"),
        wal_stop=archive.get("stop"),
    )


def parse_info(text: str, stanza: str) -> StanzaInfo | None:
    """The stanza's entry in `pgbackrest info --output=json` (a list of stanzas; 2.45+ add
    `lsn` and `error` to each backup, which are not needed here). None: no such stanza."""
    for entry in json.loads(text):
        if entry.get("name") != stanza:
            continue
        status = entry.get("status") or {}
        backups = sorted(
            (_backup(b) for b in entry.get("backup") or []), key=lambda b: b.stopped_at
        )
        # One archive id per database history entry ("15-1"); names order within it.
        archives = entry.get("archive") or []
        mins = [a["min"] for a in archives if a.get("min")]
        maxes = [a["max"] for a in archives if a.get("max")]
        return StanzaInfo(
            stanza=stanza,
            status_code=int(status.get("code", -1)),
            status_message=str(status.get("message", "")),
            backups=backups,
            archive_min=min(mins) if mins else None,
            archive_max=max(maxes) if maxes else None,
        )
    return None


def earliest_restorable(info: StanzaInfo) -> datetime | None:
    """The first backup's stop + 1 s (stop times are whole seconds); None: no backup yet."""
    if not info.backups:
        return None
    return min(b.stopped_at for b in info.backups) + timedelta(seconds=1)


def backup_set_for(info: StanzaInfo, target: datetime) -> str | None:
    """The newest backup that stopped before the target; None: the target is before the
    window."""
    if target.tzinfo is None:
        raise ValueError("a recovery target needs a timezone")
    before = [b for b in info.backups if b.stopped_at < target]
    return max(before, key=lambda b: b.stopped_at).label if before else None


def restore_args(set_label: str, target: datetime | None, *, delta: bool) -> list[str]:
    """Arguments after `command(stanza)` for a restore that promotes at the target. With no
    target, recovery replays to the end of the archive and promotes (pgBackRest rejects
    `--target-action` without a `--type`). `delta`: in place, reusing the files there (never
    while postmaster.pid exists); without it the data directory must be empty."""
    args = ["restore", f"--set={set_label}"]
    if target is not None:
        args += ["--type=time", f"--target={format_target(target)}", "--target-action=promote"]
    if delta:
        args.append("--delta")
    return args


def without_recovery_target(auto_conf: str) -> str:
    """postgresql.auto.conf without the recovery target lines (restore_command kept): the way
    out of TARGET_NOT_REACHED, replaying to the end of the archive instead."""
    dropped = ("recovery_target_time", "recovery_target_action")
    kept = [
        line
        for line in auto_conf.splitlines(keepends=True)
        if line.split("=", 1)[0].strip() not in dropped
    ]
    return "".join(kept)


def is_wal_segment(name: str | None) -> bool:
    """Whether pg_stat_archiver's last_archived_wal is a segment (not a `.history` or
    `.backup` file), i.e. whether its last_archived_time bounds the recovery window."""
    return name is not None and _WAL_SEGMENT_RE.fullmatch(name) is not None
