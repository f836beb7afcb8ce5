"""The monitor's verdict, when it becomes the status, and the uptime arithmetic."""

from __future__ import annotations

import pytest
from temps_api.health_views import uptime_percent
from temps_monitor.settings import MonitorSettings
from temps_monitor.verdict import (
    STORAGE_REASON,
    Verdict,
    judge,
    status_change,
    storage_exhausted,
)
from temps_shared.health import WalWarning
from temps_shared.messages import ServiceStatus as S

WARNING = WalWarning(kind="stale_slot", severity="critical", message="m", guidance="g")
BLOAT = WalWarning(kind="wal_bloat", severity="warning", message="m", guidance="g")
OK = Verdict(S.OPERATIONAL)


def test_not_running_or_not_answering_is_down() -> None:
    assert judge(container_status="exited", probe_error=None).status == S.DOWN
    assert judge(container_status=None, probe_error=None).reason == "the container is missing"
    assert judge(container_status="restarting", probe_error=None).status == S.DOWN
    down = judge(container_status="running", probe_error="connection refused")
    assert down.status == S.DOWN
    assert down.reason == "the service does not answer the health probe"  # stable text


def test_wal_warnings_never_touch_down() -> None:
    verdict = judge(container_status="exited", probe_error=None, wal_warnings=[WARNING])
    assert verdict.status == S.DOWN
    verdict = judge(container_status="running", probe_error="timed out", wal_warnings=[WARNING])
    assert verdict.status == S.DOWN


def test_wal_warnings_degrade_and_are_named() -> None:
    verdict = judge(container_status="running", probe_error=None, wal_warnings=[BLOAT, WARNING])
    assert verdict.status == S.DEGRADED
    assert verdict.reason == "WAL health: stale_slot, wal_bloat (see /wal-health)"
    assert judge(container_status="running", probe_error=None) == OK


@pytest.mark.parametrize(
    ("used", "allocated", "exhausted"),
    [(89, 100, False), (90, 100, True), (100, 100, True), (899, 1000, False), (5, None, False)],
)
def test_storage_threshold(used: int, allocated: int | None, exhausted: bool) -> None:
    assert storage_exhausted(used, allocated) is exhausted
    verdict = judge(
        container_status="running", probe_error=None, storage_used=used, storage_allocated=allocated
    )
    assert (verdict.reason == STORAGE_REASON) is exhausted


def test_storage_and_wal_reasons_combine() -> None:
    verdict = judge(
        container_status="running",
        probe_error=None,
        storage_used=95,
        storage_allocated=100,
        wal_warnings=[BLOAT],
    )
    assert verdict.reason == f"{STORAGE_REASON}; WAL health: wal_bloat (see /wal-health)"


DEGRADED_WAL = Verdict(S.DEGRADED, "WAL health: wal_bloat (see /wal-health)")
DOWN = Verdict(S.DOWN, "the container is exited")
QUOTA = "storage quota exceeded (size_gb): 4.0 MiB used of 3.0 MiB"


@pytest.mark.parametrize("owner_status", ["provisioning", "stopped", "deleting", "failed", None])
def test_statuses_of_the_provisioner_and_the_user_are_left_alone(owner_status: str | None) -> None:
    for verdict in (OK, DEGRADED_WAL, DOWN):
        assert status_change(owner_status, None, None, verdict) is None


def test_operational_degrades_and_goes_down() -> None:
    assert status_change("operational", None, OK, DEGRADED_WAL) == DEGRADED_WAL
    assert status_change("operational", None, OK, DOWN) == DOWN
    assert status_change("operational", None, OK, OK) is None


def test_down_recovers() -> None:
    assert status_change("down", DOWN.reason, DOWN, OK) == OK
    assert status_change("down", DOWN.reason, DOWN, DEGRADED_WAL) == DEGRADED_WAL
    assert status_change("down", DOWN.reason, DOWN, DOWN) is None


def test_own_degraded_clears_and_changes_reason() -> None:
    assert status_change("degraded", DEGRADED_WAL.reason, DEGRADED_WAL, OK) == OK
    storage = Verdict(S.DEGRADED, STORAGE_REASON)
    assert status_change("degraded", DEGRADED_WAL.reason, DEGRADED_WAL, storage) == storage


def test_someone_elses_degraded_is_only_replaced_by_down() -> None:
    # The S3 quota job's verdict: the monitor's previous verdict was operational.
    assert status_change("degraded", QUOTA, OK, OK) is None
    assert status_change("degraded", QUOTA, None, DEGRADED_WAL) is None
    assert status_change("degraded", QUOTA, OK, DOWN) == DOWN


@pytest.mark.parametrize(
    ("up", "total", "percent"),
    [(0, 0, None), (10, 10, 100.0), (9, 10, 90.0), (2, 3, 66.67), (0, 5, 0.0), (2879, 2880, 99.97)],
)
def test_uptime_percent(up: int, total: int, percent: float | None) -> None:
    assert uptime_percent(up, total) == percent


def test_probe_timeout_must_be_shorter_than_the_period() -> None:
    with pytest.raises(ValueError, match="shorter than monitor_period_s"):
        MonitorSettings(monitor_period_s=2, monitor_probe_timeout_s=2)
    assert MonitorSettings(monitor_period_s=2, monitor_probe_timeout_s=1.5).storage_unit_bytes


def test_a_read_replica_that_does_not_run_degrades_and_is_named() -> None:
    verdict = judge(container_status="running", probe_error=None, replicas_down=["replica-2"])
    assert verdict.status == S.DEGRADED
    assert verdict.reason == "read replica not running: replica-2"
    # The primary itself down: down, whatever the replicas.
    down = judge(container_status="exited", probe_error=None, replicas_down=["replica-1"])
    assert down.status == S.DOWN
