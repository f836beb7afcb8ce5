"""The WAL health thresholds, at every edge of the spec's table."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from temps_monitor.wal_health import (
    DEFAULT_MAX_WAL_SIZE,
    SlotFacts,
    WalFacts,
    evaluate,
    snapshot,
)

MB = 1024 * 1024
MAX_WAL = 32 * MB
HEALTHY = WalFacts(
    pg_wal_bytes=MAX_WAL,
    max_wal_size_bytes=MAX_WAL,
    archive_mode="off",
    archive_command=None,
    archive_command_source="default",
    oldest_wal_age_secs=60,
)
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def kinds(facts: WalFacts, previous_failed_count: int | None = None) -> dict[str, str]:
    return {w.kind: w.severity for w in evaluate(facts, previous_failed_count)}


def test_healthy_server_has_no_warning() -> None:
    assert evaluate(HEALTHY) == []


@pytest.mark.parametrize(
    ("wal_bytes", "expected"),
    [
        (3 * MAX_WAL - 1, None),  # 2.99…x
        (int(2.99 * MAX_WAL), None),
        (3 * MAX_WAL, "warning"),
        (10 * MAX_WAL - 1, "warning"),
        (10 * MAX_WAL, "critical"),
        (50 * MAX_WAL, "critical"),
    ],
)
def test_wal_bloat_edges(wal_bytes: int, expected: str | None) -> None:
    found = kinds(replace(HEALTHY, pg_wal_bytes=wal_bytes))
    assert found.get("wal_bloat") == expected


def test_wal_bloat_message_and_guidance() -> None:
    (warning,) = evaluate(replace(HEALTHY, pg_wal_bytes=13 * MAX_WAL + MAX_WAL // 2))
    assert warning.ratio == 13.5
    assert "13.5x max_wal_size" in warning.message
    assert warning.remediation_sql is None
    assert "CHECKPOINT" in warning.guidance


def test_unreadable_max_wal_size_means_postgres_default() -> None:
    facts = replace(HEALTHY, max_wal_size_bytes=0, pg_wal_bytes=3 * DEFAULT_MAX_WAL_SIZE)
    assert kinds(facts) == {"wal_bloat": "warning"}


@pytest.mark.parametrize(
    ("active", "retained", "stale"),
    [
        (False, 3 * MAX_WAL - 1, False),
        (False, int(2.99 * MAX_WAL), False),
        (False, 3 * MAX_WAL, True),
        (True, 30 * MAX_WAL, False),  # active: its consumer streams, it only lags
    ],
)
def test_stale_slot_edges(active: bool, retained: int, stale: bool) -> None:
    facts = replace(HEALTHY, slots=[SlotFacts("temps_replica_1", active, retained)])
    warnings = [w for w in evaluate(facts) if w.kind == "stale_slot"]
    assert bool(warnings) is stale
    if stale:
        (warning,) = warnings
        assert warning.severity == "critical"
        assert warning.remediation_sql == "SELECT pg_drop_replication_slot('temps_replica_1');"
        assert warning.slot_name == "temps_replica_1"
        assert warning.retained_bytes == retained
        shown = snapshot(facts, NOW).stale_slots
        assert [(s.slot_name, s.active) for s in shown] == [("temps_replica_1", False)]


def test_stale_slot_name_is_quoted_in_remediation_sql() -> None:
    facts = replace(HEALTHY, slots=[SlotFacts("o'hara", False, 4 * MAX_WAL)])
    (warning,) = evaluate(facts)
    assert warning.remediation_sql == "SELECT pg_drop_replication_slot('o''hara');"


@pytest.mark.parametrize(("ready", "warned"), [(0, False), (99, False), (100, True), (500, True)])
def test_archive_backlog_edges(ready: int, warned: bool) -> None:
    facts = replace(HEALTHY, archive_mode="on", archive_command="pgbackrest …", ready_count=ready)
    assert ("archive_backlog" in kinds(facts)) is warned


@pytest.mark.parametrize(
    ("mode", "command", "warned"),
    [
        ("on", "", True),
        ("on", None, True),
        ("on", "   ", True),
        ("on", "/bin/true", True),
        ("on", "true", True),
        ("always", "true", True),
        ("on", " /bin/true ", True),
        ("on", "/bin/false", False),  # fails (archiver_failing tells), but is not a no-op
        ("on", "pgbackrest --stanza=x archive-push %p", False),
        ("off", "", False),
        ("off", "/bin/true", False),
    ],
)
def test_archive_mode_without_command(mode: str, command: str | None, warned: bool) -> None:
    facts = replace(HEALTHY, archive_mode=mode, archive_command=command)
    found = kinds(facts)
    assert ("archive_mode_without_command" in found) is warned
    if warned:
        (warning,) = evaluate(facts)
        assert warning.severity == "warning"
        assert "Stop and then Start the service" in warning.guidance
        assert warning.remediation_sql is None


def test_archive_library_is_a_destination() -> None:
    facts = replace(HEALTHY, archive_mode="on", archive_command="", archive_library="basic_archive")
    assert evaluate(facts) == []


@pytest.mark.parametrize(
    ("age", "wal_bytes", "warned"),
    [
        (24 * 3600 - 1, 3 * MAX_WAL, False),
        (24 * 3600, 3 * MAX_WAL, True),
        (24 * 3600, 3 * MAX_WAL - 1, False),  # old, but not bloated: not a problem
        (7 * 24 * 3600, MAX_WAL, False),
        (None, 30 * MAX_WAL, False),
    ],
)
def test_wal_not_recycled_edges(age: int | None, wal_bytes: int, warned: bool) -> None:
    facts = replace(HEALTHY, oldest_wal_age_secs=age, pg_wal_bytes=wal_bytes)
    warnings = [w for w in evaluate(facts) if w.kind == "wal_not_recycled"]
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].remediation_sql == "CHECKPOINT;"
        assert warnings[0].oldest_age_secs == age


FAILING = replace(HEALTHY, archive_mode="on", archive_command="/bin/false")


@pytest.mark.parametrize(
    ("previous", "now", "warned"),
    [
        (None, 5, False),  # first probe: nothing to compare with
        (5, 5, False),
        (5, 6, True),
        (7, 2, False),  # statistics were reset
    ],
)
def test_archiver_failing_when_failures_rise(previous: int | None, now: int, warned: bool) -> None:
    facts = replace(FAILING, archiver_failed_count=now)
    found = [w for w in evaluate(facts, previous) if w.kind == "archiver_failing"]
    assert bool(found) is warned
    if warned:
        assert found[0].failed_since_last_probe == now - (previous or 0)


def test_archiver_failing_while_last_attempt_failed_and_segments_wait() -> None:
    failed_at = NOW
    stuck = replace(
        FAILING,
        archiver_failed_count=3,
        archiver_last_failed_at=failed_at,
        archiver_last_archived_at=failed_at - timedelta(minutes=5),
        ready_count=4,
    )
    assert "archiver_failing" in kinds(stuck, previous_failed_count=3)
    # Archived since the failure, or nothing waiting: it recovered.
    recovered = replace(stuck, archiver_last_archived_at=failed_at + timedelta(seconds=1))
    assert "archiver_failing" not in kinds(recovered, previous_failed_count=3)
    assert "archiver_failing" not in kinds(replace(stuck, ready_count=0), previous_failed_count=3)
    assert "archiver_failing" not in kinds(replace(stuck, archive_mode="off"), 3)


def test_critical_warnings_come_first_and_snapshot_shape() -> None:
    facts = replace(
        HEALTHY,
        pg_wal_bytes=4 * MAX_WAL,
        archive_mode="on",
        archive_command="",
        archive_command_source="command line",
        ready_count=120,
        slots=[SlotFacts("gone", False, 4 * MAX_WAL), SlotFacts("live", True, 4 * MAX_WAL)],
        oldest_wal_age_secs=2 * 24 * 3600,
    )
    shown = snapshot(facts, NOW)
    assert shown.warnings[0].kind == "stale_slot"
    assert {w.kind for w in shown.warnings} == {
        "stale_slot",
        "wal_bloat",
        "archive_backlog",
        "archive_mode_without_command",
        "wal_not_recycled",
    }
    assert shown.archive_backlog == 120
    assert shown.archive_command_source == "command line"
    assert [s.slot_name for s in shown.stale_slots] == ["gone"]
    assert shown.max_wal_size_bytes == MAX_WAL
    assert shown.probed_at == NOW
