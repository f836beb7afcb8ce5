"""A storage allocation is never shrunk below what the service already stores.

Checked in the PATCH's transaction, before the new parameters are stored: a refusal (409) stores
nothing, bumps no generation and sends no command or event. Growth is never checked.

Where "current usage" comes from: the health monitor's latest figure (`storage_used_bytes` of
the `service_health` read model — PostgreSQL: its databases plus `pg_wal`; S3: the buckets'
logical sizes). It is used only when it is fresh: measured within `FRESH_S` and after the
service's last change (`updated_at`), so it was measured against the allocation stored now. The
monitor's `storage_allocated_bytes` of that same check is what the stored size means in bytes,
which converts the size asked with the monitor's own unit. Without such a figure a shrink is
refused (`storage_usage_unknown`): the monitor measures every service every period (30 s by
default), so asking again shortly succeeds; an unmeasured shrink is never let through.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from temps_shared.store.services import ServiceRecord
from temps_shared.store.types import Connection

from temps_api.errors import ApiError

# The engines with a storage allocation, and the parameter naming it (the monitor's table).
ALLOCATION_PARAMETER = {"postgres": "storage_gb", "s3": "size_gb"}
FRESH_S = 120.0


async def refuse_shrink_below_usage(
    conn: Connection, service: ServiceRecord, parameters: dict[str, Any]
) -> None:
    """Raise a 409 when `parameters` shrink the allocation below the measured usage (or when no
    fresh usage figure allows the shrink to be judged)."""
    name = ALLOCATION_PARAMETER.get(service.service_type)
    if name is None or name not in parameters or name not in service.parameters:
        return
    current, requested = int(service.parameters[name]), int(parameters[name])
    if requested >= current:
        return
    row = await conn.fetchrow(
        "SELECT checked_at, (metrics->>'storage_used_bytes')::bigint AS used,"
        " (metrics->>'storage_allocated_bytes')::bigint AS allocated"
        " FROM service_health WHERE service_id = $1",
        service.id,
    )
    now = datetime.now(UTC)
    fresh = (
        row is not None
        and row["used"] is not None
        and row["allocated"]
        and row["checked_at"] >= service.updated_at
        and now - row["checked_at"] <= timedelta(seconds=FRESH_S)
    )
    if not fresh:
        raise ApiError(
            409,
            "storage_usage_unknown",
            f"{name} can only shrink below its current {current} once the service's usage has "
            f"been measured (no health check within {FRESH_S:.0f} s since its last change); "
            "ask again after the next health check",
            {"parameter": name, "current": current, "requested": requested},
        )
    assert row is not None
    used, bytes_per_unit = int(row["used"]), int(row["allocated"]) // current
    requested_bytes = requested * bytes_per_unit
    if requested_bytes < used:
        raise ApiError(
            409,
            "storage_in_use",
            f"{name} {requested} ({requested_bytes} bytes) is below the {used} bytes the service "
            f"stores (measured {row['checked_at'].isoformat()}); free space or ask a larger size",
            {
                "parameter": name,
                "current": current,
                "requested": requested,
                "requested_bytes": requested_bytes,
                "used_bytes": used,
                "measured_at": row["checked_at"].isoformat(),
            },
        )
