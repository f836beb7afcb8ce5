"""The shrink rule of storage_guard.py against a fake read model (the real one:
tests/integration/test_storage_resize.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from temps_api.errors import ApiError
from temps_api.storage_guard import FRESH_S, refuse_shrink_below_usage
from temps_shared.store.services import ServiceRecord

MiB = 1024 * 1024
NOW = datetime.now(UTC)


class _Conn:
    """Answers the one query of the guard with a `service_health` row (or none)."""

    def __init__(self, row: dict[str, Any] | None) -> None:
        self.row, self.asked = row, 0

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        self.asked += 1
        return self.row


def _service(
    service_type: str = "postgres", updated_at: datetime | None = None, **params: Any
) -> ServiceRecord:
    return ServiceRecord(
        id=uuid4(),
        name="db",
        service_type=service_type,
        version="17",
        parameters=params,
        resources={},
        secrets_ciphertext="",
        desired_state="running",
        generation=3,
        purged=False,
        created_at=NOW - timedelta(hours=1),
        updated_at=updated_at or NOW - timedelta(minutes=10),
    )


def _row(used: int | None, allocated: int | None, age_s: float = 5.0) -> dict[str, Any]:
    return {"checked_at": NOW - timedelta(seconds=age_s), "used": used, "allocated": allocated}


async def _refusal(conn: _Conn, service: ServiceRecord, **params: Any) -> ApiError | None:
    try:
        await refuse_shrink_below_usage(conn, service, {**service.parameters, **params})  # type: ignore[arg-type]
    except ApiError as exc:
        return exc
    return None


async def test_growth_and_engines_without_allocation_are_never_checked() -> None:
    conn = _Conn(None)
    assert await _refusal(conn, _service(storage_gb=10), storage_gb=20) is None
    assert await _refusal(conn, _service(storage_gb=10), storage_gb=10) is None
    assert await _refusal(conn, _service("redis", memory_mb=512), memory_mb=8) is None
    assert conn.asked == 0


async def test_a_shrink_below_the_usage_is_refused_with_the_figures() -> None:
    # 10 units of 1 MiB (a test unit) allocated, 6.5 MiB used: 6 units are too few, 7 enough.
    conn = _Conn(_row(used=6 * MiB + MiB // 2, allocated=10 * MiB))
    error = await _refusal(conn, _service(storage_gb=10), storage_gb=6)
    assert error is not None
    assert error.status == 409
    assert error.code == "storage_in_use"
    assert error.details["used_bytes"] == 6 * MiB + MiB // 2
    assert error.details["requested"] == 6
    assert error.details["requested_bytes"] == 6 * MiB
    assert error.details["current"] == 10
    assert await _refusal(conn, _service(storage_gb=10), storage_gb=7) is None


async def test_s3_size_gb_is_checked_with_the_real_unit() -> None:
    conn = _Conn(_row(used=3 * 1024 * MiB, allocated=100 * 1024 * MiB))
    error = await _refusal(conn, _service("s3", size_gb=100), size_gb=2)
    assert error is not None
    assert error.code == "storage_in_use"
    assert error.details["requested_bytes"] == 2 * 1024 * MiB
    assert await _refusal(conn, _service("s3", size_gb=100), size_gb=4) is None


@pytest.mark.parametrize(
    ("row", "changed_s_ago"),
    [
        (None, 600),  # never measured
        (_row(used=None, allocated=10 * MiB), 600),  # the last check could not read it
        (_row(used=MiB, allocated=10 * MiB, age_s=FRESH_S + 5), 600),  # too old
        (_row(used=MiB, allocated=10 * MiB, age_s=30), 10),  # measured before the last change
    ],
)
async def test_a_shrink_without_a_fresh_figure_is_refused(
    row: dict[str, Any] | None, changed_s_ago: float
) -> None:
    service = _service(storage_gb=10, updated_at=NOW - timedelta(seconds=changed_s_ago))
    error = await _refusal(_Conn(row), service, storage_gb=5)
    assert error is not None
    assert error.status == 409
    assert error.code == "storage_usage_unknown"
    assert error.details == {"parameter": "storage_gb", "current": 10, "requested": 5}
