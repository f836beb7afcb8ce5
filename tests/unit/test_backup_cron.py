"""The five-field cron schedules of backups: next occurrences and refused texts."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from temps_shared.backups.cron import CronError, default_schedule, parse


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("* * * * *", "2026-03-01 10:15:30", "2026-03-01 10:16"),
        ("* * * * *", "2026-03-01 10:15:00", "2026-03-01 10:16"),  # strictly after
        ("30 2 * * *", "2026-03-01 10:15", "2026-03-02 02:30"),
        ("30 2 * * *", "2026-03-01 01:00", "2026-03-01 02:30"),
        ("*/15 * * * *", "2026-03-01 10:16", "2026-03-01 10:30"),
        ("0 9-17/4 * * *", "2026-03-01 13:00", "2026-03-01 17:00"),
        ("5,10,50 * * * *", "2026-03-01 10:11", "2026-03-01 10:50"),
        ("10/20 * * * *", "2026-03-01 10:31", "2026-03-01 10:50"),
        ("0 0 1 * *", "2026-12-15 00:00", "2027-01-01 00:00"),  # across a year
        ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),  # leap day
        ("0 12 * * 0", "2026-03-02 00:00", "2026-03-08 12:00"),  # Sunday (2026-03-08)
        ("0 12 * * 7", "2026-03-02 00:00", "2026-03-08 12:00"),  # 7 is Sunday too
        ("0 12 * * mon-fri", "2026-03-07 00:00", "2026-03-09 12:00"),  # Saturday → Monday
        ("0 0 * jun *", "2026-03-01 00:00", "2026-06-01 00:00"),
        # Both day fields restricted: either matches (the 13th, or a Friday).
        ("0 0 13 * 5", "2026-03-01 00:00", "2026-03-06 00:00"),
        ("0 0 13 * 5", "2026-03-07 00:00", "2026-03-13 00:00"),
        ("59 23 31 12 *", "2026-12-31 23:59", "2027-12-31 23:59"),
    ],
)
def test_next_occurrence(schedule: str, after: str, expected: str) -> None:
    assert parse(schedule).next_after(_at(after)) == _at(expected)


def test_an_aware_time_elsewhere_is_read_in_utc() -> None:
    moment = datetime.fromisoformat("2026-03-01T03:00:00+02:00")  # 01:00 UTC
    assert parse("30 1 * * *").next_after(moment) == _at("2026-03-01 01:30")


@pytest.mark.parametrize(
    ("schedule", "names"),
    [
        ("* * * *", "5 fields"),
        ("* * * * * *", "5 fields"),
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day of week"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("a * * * *", "minute"),
        ("0 0 30 2 *", "never fires"),
        ("", "5 fields"),
        ("² * * * *", "minute"),
        ("* * * * funday", "day of week"),
    ],
)
def test_bad_schedules_are_refused_with_the_faulty_part(schedule: str, names: str) -> None:
    with pytest.raises(CronError, match=names):
        parse(schedule)


def test_the_default_is_daily_spread_by_service_and_stable() -> None:
    service = UUID("00000000-0000-0000-0000-00000000005b")  # 91 → 01:31
    assert default_schedule(service) == "31 1 * * *"
    assert default_schedule(service) == default_schedule(UUID(str(service)))
    spread = {default_schedule(uuid4()) for _ in range(200)}
    assert len(spread) > 150  # services do not all start at the same minute
    for text in spread:
        cron = parse(text)
        assert (len(cron.minutes), len(cron.hours)) == (1, 1)
        assert (cron.any_day, cron.any_weekday) == (True, True)
