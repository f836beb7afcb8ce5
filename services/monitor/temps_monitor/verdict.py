"""The monitor's verdict on one probe, and when it becomes the service's status (pure logic).

- A service whose container does not run, or which does not answer, is `down`.
- One that answers is `degraded` when its storage is ≥ 90 % of the allocation, PostgreSQL
  reports WAL warnings, a read replica does not run, or PostgreSQL's pooler does not answer
  its admin console (the reason names each), otherwise `operational`. A dead pooler is not
  `down`: the server still answers on its direct endpoint, but the pooled URL applications use
  (`DATABASE_URL`) fails, so the service cannot be `operational` either. WAL warnings therefore
  never touch a service that is `down`: they are only read from a server that answers.
- The monitor moves a service only between `operational`, `degraded` and `down`: `stopped`,
  `provisioning`, `deleting` and `failed` belong to the provisioner and the user.
- A `degraded` set by someone else (e.g. the S3 quota job) is theirs to lift: the monitor only
  replaces it with `down`.

Reasons are stable texts (figures live in /health and /wal-health), so a verdict that does not
change emits nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from temps_shared.health import WalWarning
from temps_shared.messages import MONITOR_OWNED, ServiceStatus

STORAGE_DEGRADED_PERCENT = 90
STORAGE_REASON = "storage: 90% or more of the allocation is used"
WAL_REASON = "WAL health"
POOLER_REASON = "pooler not answering"


@dataclass(frozen=True)
class Verdict:
    status: ServiceStatus
    reason: str | None = None


def storage_exhausted(used: int | None, allocated: int | None) -> bool:
    if used is None or not allocated:
        return False
    return used * 100 >= allocated * STORAGE_DEGRADED_PERCENT


def judge(
    *,
    container_status: str | None,
    probe_error: str | None,
    storage_used: int | None = None,
    storage_allocated: int | None = None,
    wal_warnings: Sequence[WalWarning] = (),
    replicas_down: Sequence[str] = (),
    pooler_down: bool = False,
) -> Verdict:
    """The verdict of one probe. `container_status` is Docker's state (None: no container)."""
    if container_status != "running":
        return Verdict(ServiceStatus.DOWN, f"the container is {container_status or 'missing'}")
    if probe_error is not None:
        return Verdict(ServiceStatus.DOWN, "the service does not answer the health probe")
    reasons = []
    if pooler_down:
        reasons.append(POOLER_REASON)
    if replicas_down:
        reasons.append(f"read replica not running: {', '.join(replicas_down)}")
    if storage_exhausted(storage_used, storage_allocated):
        reasons.append(STORAGE_REASON)
    if wal_warnings:
        kinds = ", ".join(sorted({w.kind for w in wal_warnings}))
        reasons.append(f"{WAL_REASON}: {kinds} (see /wal-health)")
    if reasons:
        return Verdict(ServiceStatus.DEGRADED, "; ".join(reasons))
    return Verdict(ServiceStatus.OPERATIONAL)


def status_change(
    current: str | None, current_reason: str | None, previous: Verdict | None, verdict: Verdict
) -> Verdict | None:
    """The status the monitor should announce, or None to leave the service as it is.

    `current`/`current_reason` are the read model's; `previous` is the monitor's previous
    verdict on the service (what tells its own `degraded` from someone else's)."""
    if current not in MONITOR_OWNED:
        return None
    if (current, current_reason) == (verdict.status, verdict.reason):
        return None
    if verdict.status == ServiceStatus.DOWN or current != ServiceStatus.DEGRADED:
        return verdict
    ours = previous is not None and (previous.status, previous.reason) == (current, current_reason)
    return verdict if ours else None
