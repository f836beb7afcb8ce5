"""What SeaweedFS needs driven from outside: quota enforcement, lifecycle expiry, identities.

- Quota: `size_gb` covers all the service's buckets. The job sums the buckets' logical sizes
  (`s3.bucket.list`, the figures `s3.bucket.quota.enforce` uses) and, while the sum is over the
  quota, marks `/buckets/` read-only in the filer configuration — SeaweedFS' own enforcement
  mechanism, on the prefix of every bucket, so new buckets are covered too and even an empty
  bucket is blocked (per-bucket quotas cannot block a bucket below 1 MiB). Reads and deletes
  keep working; a refused write is answered by SeaweedFS with HTTP 500 (InternalError).
- Lifecycle: SeaweedFS expires objects only when its lifecycle processing is triggered, and
  that processing takes no reference time; the job lists each rule's prefix and deletes what
  is older than `expire_days` as of a given time (a delete marker in a versioned bucket, as
  AWS' current-version expiration does).
- Identities: the admin is static (`-s3.config`); every other identity goes through
  `apply_identities`, which the S3 gateway reloads live without dropping requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temps_shared.engines.s3 import CONFIG_DIR, LifecycleRule, S3Identity, identities_document
from temps_shared.runtime import DockerRuntime

WEED_SHELL = "temps-weed-shell"  # in the image: one `weed shell` session, a command per argument
BUCKETS_PREFIX = "/buckets/"
QUOTA_REASON = "storage quota exceeded (size_gb)"
MAX_LIST_PAGES = 10_000  # 10 M objects per rule and run: a bound, not an expected size
_BUCKET_LINE = re.compile(r"^\s+(\S+)\t(.*)$")


class WeedShellError(Exception):
    """A `weed shell` command failed inside the service's container."""


async def weed_shell(runtime: DockerRuntime, container: str, *commands: str) -> str:
    """Run `commands` in one `weed shell` session in `container`; its output. The helper
    script bounds the session (timeout 120 s); no argument ever carries a secret."""
    result = await runtime.exec_run(container, [WEED_SHELL, *commands])
    if result.exit_code != 0:
        tail = result.output.strip()[-500:]
        raise WeedShellError(f"{'; '.join(commands)}: exit code {result.exit_code}: {tail}")
    return result.output


# --- quota -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaState:
    used_bytes: int
    limit_bytes: int
    buckets: dict[str, int]  # bucket → logical bytes
    read_only: bool  # writes are refused now
    changed: bool  # this run switched read-only on or off

    @property
    def over(self) -> bool:
        return self.used_bytes > self.limit_bytes

    @property
    def reason(self) -> str:
        return (
            f"{QUOTA_REASON}: {_mib(self.used_bytes)} used of {_mib(self.limit_bytes)}; writes "
            "are refused (S3 answers them with HTTP 500) until objects are deleted or size_gb "
            "is raised"
        )


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


def quota_limit_bytes(size_gb: int, unit_mb: int = 1024) -> int:
    """`size_gb` in bytes; `unit_mb` is 1024 except in tests, which shrink the unit to reach a
    quota with a few MiB instead of gigabytes."""
    return size_gb * unit_mb * 1024 * 1024


def parse_bucket_usage(output: str) -> dict[str, int]:
    """Bucket → logical bytes from `s3.bucket.list` (`  name\\tsize:N\\tlogical:N\\t…`)."""
    usage: dict[str, int] = {}
    for line in output.splitlines():
        match = _BUCKET_LINE.match(line)
        if not match:
            continue
        fields = dict(f.split(":", 1) for f in match.group(2).split("\t") if ":" in f)
        value = fields.get("logical", fields.get("size", ""))
        if value.isdigit():
            usage[match.group(1)] = int(value)
    return usage


def buckets_read_only(filer_conf: str) -> bool:
    """Whether the filer configuration (`fs.configure` prints it as JSON) marks every bucket
    read-only."""
    lines = filer_conf.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
    if start is None:
        return False
    conf: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return any(
        loc.get("locationPrefix") == BUCKETS_PREFIX and loc.get("readOnly")
        for loc in conf.get("locations") or []
    )


async def enforce_quota(runtime: DockerRuntime, container: str, limit_bytes: int) -> QuotaState:
    """Refuse writes to every bucket while their sum is over `limit_bytes`; allow them again
    once it is not. Usage is what SeaweedFS reports, which lags writes by a few seconds."""
    # One session for both reads (a session costs ~0.5 s): bucket lines, then the JSON.
    output = await weed_shell(runtime, container, "s3.bucket.list", "fs.configure")
    usage = parse_bucket_usage(output)
    read_only = buckets_read_only(output)
    used = sum(usage.values())
    over = used > limit_bytes
    if over != read_only:
        flag = "-readOnly" if over else "-delete"
        await weed_shell(
            runtime, container, f"fs.configure -locationPrefix={BUCKETS_PREFIX} {flag} -apply"
        )
    return QuotaState(used, limit_bytes, usage, over, over != read_only)


# --- lifecycle -------------------------------------------------------------------------------


def is_expired(last_modified: datetime, rule: LifecycleRule, as_of: datetime) -> bool:
    return last_modified + timedelta(days=rule.expire_days) <= as_of


def _batches(keys: list[str], size: int = 1000) -> Iterable[list[str]]:
    for i in range(0, len(keys), size):
        yield keys[i : i + size]


def expire_objects(
    client: Any, bucket: str, rules: list[LifecycleRule], as_of: datetime
) -> list[str]:
    """Delete the objects of `bucket` that `rules` expire as of `as_of`; the deleted keys
    (blocking: run it with asyncio.to_thread)."""
    deleted: list[str] = []
    for rule in rules:
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = client.list_objects_v2(
                Bucket=bucket,
                Prefix=rule.prefix,
                MaxKeys=1000,
                **({"ContinuationToken": token} if token else {}),
            )
            keys = [
                o["Key"]
                for o in page.get("Contents", [])
                if is_expired(o["LastModified"], rule, as_of)
            ]
            for batch in _batches(keys):
                answer = client.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                failed = {e["Key"] for e in answer.get("Errors", [])}
                deleted += [k for k in batch if k not in failed]
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
    return deleted


async def run_lifecycle(
    client: Any, bucket: str, rules: list[LifecycleRule], as_of: datetime
) -> list[str]:
    """Expire what `rules` say as of `as_of` (now, or a later date in tests)."""
    if not rules:
        return []
    return await asyncio.to_thread(expire_objects, client, bucket, rules, as_of)


# --- identities ------------------------------------------------------------------------------


async def apply_identities(
    runtime: DockerRuntime, container: str, identities: list[S3Identity]
) -> None:
    """Make the service's dynamic identities exactly `identities` (the static admin stays).

    The document reaches the container as a file through Docker's archive API (secrets never
    appear in an exec's arguments) and is removed after the import; `s3.iam.import` stores it
    in the filer, whose change the S3 gateway follows and reloads without a restart.
    """
    path = f"{CONFIG_DIR}/import-{secrets.token_hex(8)}.json"
    await runtime.put_files(container, {path: identities_document(identities)})
    try:
        await weed_shell(runtime, container, f"s3.iam.import -file={path} -apply")
    finally:
        await runtime.exec_run(container, ["rm", "-f", path])
