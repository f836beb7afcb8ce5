"""Five-field cron schedules (minute hour day-of-month month day-of-week), evaluated in UTC.

Each field is `*`, a number, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, or a comma list
of those; months and weekdays also take their English three-letter names, and weekday 7 is
Sunday like 0. As in Vixie cron, when both day fields are restricted a day matching either
one is a match."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The search gives up after this many years: a schedule such as `0 0 30 2 *` never fires.
_HORIZON_YEARS = 5


class CronError(ValueError):
    """The text is not a five-field cron schedule; the message says which part is wrong."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    names_start: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day of week", 0, 7, _DAYS, 0),
)


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    def _day_matches(self, moment: datetime) -> bool:
        in_month = moment.day in self.days
        in_week = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, moment: datetime) -> datetime:
        """The first minute strictly after `moment` (aware; UTC is assumed for naive) that
        the schedule matches."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        candidate = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        horizon = candidate.year + _HORIZON_YEARS
        while candidate.year <= horizon:
            if candidate.month not in self.months:
                year, month = divmod(candidate.month, 12)  # the first of the next month
                candidate = candidate.replace(
                    year=candidate.year + year, month=month + 1, day=1, hour=0, minute=0
                )
            elif not self._day_matches(candidate):
                candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
            elif candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
            elif candidate.minute not in self.minutes:
                candidate += timedelta(minutes=1)
            else:
                return candidate
        raise CronError(f"{self.text!r} never fires")


def parse(text: str) -> Cron:
    """The schedule `text` describes, or CronError naming the faulty field."""
    parts = text.split()
    if len(parts) != 5:
        raise CronError(
            f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    values = [_parse_field(part, spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in values[4])
    cron = Cron(
        text=" ".join(parts),
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=weekdays,
        any_day=parts[2] == "*",
        any_weekday=parts[4] == "*",
    )
    cron.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # refuses a schedule that never fires
    return cron


def _parse_field(text: str, spec: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, spec))
    return frozenset(values)


def _parse_item(item: str, spec: _Field) -> range:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        step = _number(step_text, spec, "step")
        if step < 1:
            raise CronError(f"{spec.name}: the step in {item!r} must be at least 1")
    if base == "*":
        low, high = spec.low, spec.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec), _value(last, spec)
        if low > high:
            raise CronError(f"{spec.name}: the range {base!r} runs backwards")
    else:
        low = _value(base, spec)
        high = spec.high if slash else low  # `a/n`: from a to the end, every n
    return range(low, high + 1, step)


def _value(text: str, spec: _Field) -> int:
    lowered = text.lower()
    if lowered in spec.names:
        return spec.names.index(lowered) + spec.names_start
    value = _number(text, spec, "value")
    if not spec.low <= value <= spec.high:
        raise CronError(f"{spec.name}: {value} is outside {spec.low}-{spec.high}")
    return value


def _number(text: str, spec: _Field, what: str) -> int:
    if not (text.isascii() and text.isdigit()):  # `²` is a digit to str.isdigit
        raise CronError(f"{spec.name}: {what} {text!r} is not a number")
    return int(text)


def default_schedule(service_id: UUID) -> str:
    """Daily, at a minute of the day derived from the service id: services' backups spread
    over the day instead of all starting at midnight."""
    minute_of_day = service_id.int % (24 * 60)
    return f"{minute_of_day % 60} {minute_of_day // 60} * * *"
