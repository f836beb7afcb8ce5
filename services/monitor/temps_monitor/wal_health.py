"""PostgreSQL WAL health: the spec's thresholds, applied to what the probe read (pure logic).

- wal_bloat: pg_wal >= 3x max_wal_size (warning), >= 10x (critical);
- stale_slot: a slot inactive and retaining >= 3x max_wal_size (critical);
- archive_backlog: >= 100 `.ready` segments in pg_wal/archive_status (warning);
- archive_mode_without_command: archive_mode on/always, command empty or a no-op (warning);
- wal_not_recycled: oldest segment >= 24 h old and pg_wal >= 3x (warning);
- archiver_failing (ours): pg_stat_archiver failures rose since the previous probe, or the last
  archive attempt failed while segments wait (warning).

Ratios are compared in integers (`pg_wal_bytes >= 3 * max_wal_size`): 2.99x is not 3x.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from temps_shared.health import PostgresWalHealth, StaleSlot, WalWarning

WAL_BLOAT_RATIO = 3
WAL_BLOAT_CRITICAL_RATIO = 10
STALE_SLOT_RATIO = 3
ARCHIVE_BACKLOG_READY = 100
WAL_NOT_RECYCLED_AGE_S = 24 * 3600
NOOP_ARCHIVE_COMMANDS = frozenset({"", "true", "/bin/true", "/usr/bin/true"})
DEFAULT_MAX_WAL_SIZE = 1024**3  # PostgreSQL's default, when the setting cannot be read


@dataclass(frozen=True)
class SlotFacts:
    slot_name: str
    active: bool
    retained_bytes: int


@dataclass(frozen=True)
class WalFacts:
    """What the probe read from the server (see wal_collection.py)."""

    pg_wal_bytes: int
    max_wal_size_bytes: int
    archive_mode: str
    archive_command: str | None
    archive_command_source: str | None = None
    archive_library: str | None = None
    ready_count: int = 0
    archiver_failed_count: int | None = None
    archiver_last_failed_at: datetime | None = None
    archiver_last_archived_at: datetime | None = None
    slots: list[SlotFacts] = field(default_factory=list)
    oldest_wal_age_secs: int | None = None

    @property
    def max_wal(self) -> int:
        return self.max_wal_size_bytes if self.max_wal_size_bytes > 0 else DEFAULT_MAX_WAL_SIZE

    @property
    def ratio(self) -> float:
        return round(self.pg_wal_bytes / self.max_wal, 2)

    @property
    def bloated(self) -> bool:
        return self.pg_wal_bytes >= WAL_BLOAT_RATIO * self.max_wal

    @property
    def archiving_on(self) -> bool:
        return self.archive_mode in ("on", "always")


def _mib(size: int) -> str:
    return f"{size / 1048576:.0f} MiB"


def stale_slots(facts: WalFacts) -> list[SlotFacts]:
    return [
        s
        for s in facts.slots
        if not s.active and s.retained_bytes >= STALE_SLOT_RATIO * facts.max_wal
    ]


def archive_without_command(facts: WalFacts) -> bool:
    """Archiving on, but nothing archives: WAL accumulates forever. PostgreSQL 15+ may archive
    through `archive_library` instead of a command."""
    if not facts.archiving_on or (facts.archive_library or "").strip():
        return False
    return (facts.archive_command or "").strip() in NOOP_ARCHIVE_COMMANDS


def archiver_failures_since(facts: WalFacts, previous_failed_count: int | None) -> int:
    """Failures counted since the previous probe (0 on the first probe or after a stats reset)."""
    if facts.archiver_failed_count is None or previous_failed_count is None:
        return 0
    return max(0, facts.archiver_failed_count - previous_failed_count)


def archiver_stuck(facts: WalFacts) -> bool:
    """The last archive attempt failed and segments are still waiting: PostgreSQL retries a
    failing segment only every minute or so, so the count alone would flap between probes."""
    failed, archived = facts.archiver_last_failed_at, facts.archiver_last_archived_at
    return (
        facts.archiving_on
        and facts.ready_count > 0
        and failed is not None
        and (archived is None or failed > archived)
    )


def _bloat(facts: WalFacts) -> WalWarning:
    critical = facts.pg_wal_bytes >= WAL_BLOAT_CRITICAL_RATIO * facts.max_wal
    return WalWarning(
        kind="wal_bloat",
        severity="critical" if critical else "warning",
        message=(
            f"pg_wal holds {_mib(facts.pg_wal_bytes)}, {facts.ratio}x max_wal_size "
            f"({_mib(facts.max_wal)})"
        ),
        guidance=(
            "Something keeps PostgreSQL from removing old WAL: the other warnings name the cause "
            "(an inactive replication slot, archiving without a working command). If there is "
            "none, run a CHECKPOINT and look again before giving the service more storage."
        ),
        ratio=facts.ratio,
    )


def _stale_slot(facts: WalFacts, slot: SlotFacts) -> WalWarning:
    quoted = slot.slot_name.replace("'", "''")
    return WalWarning(
        kind="stale_slot",
        severity="critical",
        message=(
            f"replication slot {slot.slot_name!r} is inactive and retains "
            f"{_mib(slot.retained_bytes)} of WAL ({slot.retained_bytes / facts.max_wal:.1f}x "
            "max_wal_size)"
        ),
        guidance=(
            "Nothing consumes this slot, so PostgreSQL keeps every WAL segment since its "
            "position. If its consumer (a read replica, a logical subscriber) is gone for good, "
            "drop the slot; if it is only down, bring it back before the disk fills."
        ),
        remediation_sql=f"SELECT pg_drop_replication_slot('{quoted}');",
        slot_name=slot.slot_name,
        retained_bytes=slot.retained_bytes,
    )


def _backlog(facts: WalFacts) -> WalWarning:
    return WalWarning(
        kind="archive_backlog",
        severity="warning",
        message=f"{facts.ready_count} WAL segments wait to be archived (.ready files)",
        guidance=(
            "The archiver is behind or failing: check that the archive destination is reachable "
            "and its credentials are valid. The backlog drains by itself once archiving succeeds."
        ),
        ready_count=facts.ready_count,
    )


def _without_command(facts: WalFacts) -> WalWarning:
    shown = facts.archive_command if (facts.archive_command or "").strip() else "empty"
    return WalWarning(
        kind="archive_mode_without_command",
        severity="warning",
        message=(
            f"archive_mode is {facts.archive_mode} but archive_command is {shown} "
            f"(set by: {facts.archive_command_source or 'unknown'}): WAL is kept forever"
        ),
        guidance=(
            "No archive destination is configured, yet the server was started with archiving on. "
            "Stop and then Start the service: the start reconciles archive_mode with the "
            "configured archiving and repairs it (your data is kept)."
        ),
    )


def _not_recycled(facts: WalFacts) -> WalWarning:
    age = facts.oldest_wal_age_secs or 0
    return WalWarning(
        kind="wal_not_recycled",
        severity="warning",
        message=(
            f"the oldest WAL segment is {age // 3600} h old and pg_wal is {facts.ratio}x "
            "max_wal_size: old segments are not being recycled"
        ),
        guidance=(
            "A checkpoint lets PostgreSQL remove or recycle segments it no longer needs. Run it "
            "as the administrator; if pg_wal stays large, another warning names what holds it."
        ),
        remediation_sql="CHECKPOINT;",
        oldest_age_secs=age,
        ratio=facts.ratio,
    )


def _archiver_failing(facts: WalFacts, since: int) -> WalWarning:
    return WalWarning(
        kind="archiver_failing",
        severity="warning",
        message=(
            f"archive_command fails: {facts.archiver_failed_count} failures in "
            f"pg_stat_archiver, {since} since the last probe"
        ),
        guidance=(
            "Segments cannot be archived, so they accumulate in pg_wal until archiving succeeds. "
            "Check the archive destination (reachable, credentials valid, space left) and the "
            "service's logs for the command's error."
        ),
        failed_since_last_probe=since,
    )


def evaluate(facts: WalFacts, previous_failed_count: int | None = None) -> list[WalWarning]:
    """The warnings `facts` trigger, critical first; `previous_failed_count` is
    pg_stat_archiver.failed_count at the previous probe (None on the first)."""
    warnings: list[WalWarning] = []
    if facts.bloated:
        warnings.append(_bloat(facts))
    warnings += [_stale_slot(facts, slot) for slot in stale_slots(facts)]
    if facts.ready_count >= ARCHIVE_BACKLOG_READY:
        warnings.append(_backlog(facts))
    if archive_without_command(facts):
        warnings.append(_without_command(facts))
    age = facts.oldest_wal_age_secs
    if age is not None and age >= WAL_NOT_RECYCLED_AGE_S and facts.bloated:
        warnings.append(_not_recycled(facts))
    since = archiver_failures_since(facts, previous_failed_count)
    if since > 0 or archiver_stuck(facts):
        warnings.append(_archiver_failing(facts, since))
    return sorted(warnings, key=lambda w: w.severity != "critical")


def snapshot(
    facts: WalFacts, probed_at: datetime, previous_failed_count: int | None = None
) -> PostgresWalHealth:
    """The `PostgresWalHealth` the API shows for `facts`."""
    return PostgresWalHealth(
        probed_at=probed_at,
        pg_wal_bytes=facts.pg_wal_bytes,
        max_wal_size_bytes=facts.max_wal,
        archive_mode=facts.archive_mode,
        archive_command=facts.archive_command,
        archive_command_source=facts.archive_command_source,
        archive_library=facts.archive_library,
        archive_backlog=facts.ready_count,
        archiver_failed_count=facts.archiver_failed_count,
        archiver_last_failed_at=facts.archiver_last_failed_at,
        archiver_last_archived_at=facts.archiver_last_archived_at,
        stale_slots=[
            StaleSlot(slot_name=s.slot_name, active=s.active, retained_bytes=s.retained_bytes)
            for s in stale_slots(facts)
        ],
        oldest_wal_age_secs=facts.oldest_wal_age_secs,
        warnings=evaluate(facts, previous_failed_count),
    )
