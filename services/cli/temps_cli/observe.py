"""`temps services health|stats|runtime|logs`: what a service's containers are doing.

`stats --watch` and `logs -f` repeat until Ctrl-C (or `stats --count`); Ctrl-C ends them
quietly with 130, as it ends `events -f` and `tail -f`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from temps_cli import resolve
from temps_cli.client import CliError, ExitCode, TempsClient
from temps_cli.output import JsonFlag, api, cell, console, note, print_fields, print_json
from temps_cli.services import ServiceRef

MIB = 1024 * 1024
INTERRUPTED = 130  # 128 + SIGINT: the shells' code for a command Ctrl-C ended
# `logs -f` asks for this many lines each poll; more new lines than this between two polls
# (a second apart) are more than a person reads, and only the newest are shown.
FOLLOW_WINDOW = 1000
FOLLOW_POLL_S = 1.0
HISTORY_COLUMNS = ("checked_at", "status", "response_time_ms", "error")
RUNTIME_COLUMNS = (
    "role", "status", "restart_count", "oom_kills", "exit_code", "caps", "drift", "started_at",
)  # fmt: skip
STATS_COLUMNS = ("role", "status", "cpu", "memory", "memory %")


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> Table:
    table = Table(*(c.upper().replace("_", " ") for c in columns), title=title or None)
    for row in rows:
        table.add_row(*(Text(cell(row.get(c))) for c in columns))
    return table


def _service(client: TempsClient, ref: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/external-services/{resolve.service_id(client, ref)}")
    return found


# --- health -----------------------------------------------------------------------------------


def health(
    service: ServiceRef,
    limit: Annotated[int, typer.Option(help="Past checks to show.", min=1, max=1000)] = 10,
    as_json: JsonFlag = False,
) -> None:
    """The health monitor's view: status, uptime, metrics, recent checks; for PostgreSQL also
    the WAL health (disk held by WAL, archiving, stale replication slots)."""
    client = api()
    found = _service(client, service)
    sid = found["id"]
    answer: dict[str, Any] = client.get(
        f"/api/external-services/{sid}/health", {"limit": str(limit)}
    )
    wal: dict[str, Any] | None = None
    if found.get("service_type") == "postgres":
        try:
            wal = client.get(f"/api/external-services/{sid}/wal-health")
        except CliError as exc:
            # 404 before the monitor's first WAL snapshot: the rest is still worth showing.
            if exc.exit_code != ExitCode.NOT_FOUND:
                raise
    if as_json:
        print_json({"health": answer, "wal_health": wal})
        return
    print_fields(
        [
            ("status", answer.get("status")),
            ("reason", answer.get("status_reason")),
            ("checked", answer.get("checked_at") or "not yet (the monitor checks every 30 s)"),
            ("response time ms", answer.get("response_time_ms")),
            ("uptime 24h %", answer.get("uptime_24h_percent")),
            *((k, v) for k, v in (answer.get("metrics") or {}).items() if v is not None),
        ]
    )
    if answer.get("history"):
        console.print(_table(answer["history"], HISTORY_COLUMNS, "recent checks"))
    if wal is not None:
        print_fields(
            [
                ("WAL on disk MiB", round(int(wal.get("pg_wal_bytes") or 0) / MIB, 1)),
                ("archive mode", wal.get("archive_mode")),
                ("archive backlog", wal.get("archive_backlog")),
                ("archiver failures", wal.get("archiver_failed_count")),
                ("stale slots", len(wal.get("stale_slots") or [])),
                *(
                    (f"warning: {w.get('kind')}", f"{w.get('severity')}: {w.get('message')}")
                    for w in wal.get("warnings") or []
                ),
            ]
        )
    elif found.get("service_type") == "postgres":
        note("no WAL health yet: the monitor has not probed this service")


# --- runtime ----------------------------------------------------------------------------------


def _caps(limits: dict[str, Any] | None) -> str:
    given = {k: v for k, v in (limits or {}).items() if v is not None}
    return ", ".join(f"{k}={v}" for k, v in given.items()) or "none"


def runtime(service: ServiceRef, as_json: JsonFlag = False) -> None:
    """Per member: Docker status, restarts, OOM kills, exit code, live caps and their drift from
    the configured ones."""
    client = api()
    answer = client.get(f"/api/external-services/{resolve.service_id(client, service)}/runtime")
    if as_json:
        print_json(answer)
        return
    rows = [
        {
            **m,
            "caps": _caps(m.get("resource_limits")),
            "drift": ", ".join(
                f"{k}: {d.get('configured')} configured, {d.get('live')} live"
                for k, d in (m.get("drift") or {}).items()
            ),
        }
        for m in answer.get("members") or []
    ]
    console.print(_table(rows, RUNTIME_COLUMNS))


# --- stats ------------------------------------------------------------------------------------


def stats_table(answer: dict[str, Any]) -> Table:
    rows = [
        {
            "role": m.get("role"),
            "status": m.get("status"),
            "cpu": f"{float(m.get('cpu_percent') or 0):.1f}% of {m.get('online_cpus')} cpus",
            "memory": f"{int(m.get('memory_usage_bytes') or 0) / MIB:.1f} / "
            f"{int(m.get('memory_limit_bytes') or 0) / MIB:.0f} MiB",
            "memory %": f"{float(m.get('memory_percent') or 0):.1f}",
        }
        for m in answer.get("members") or []
    ]
    return _table(rows, STATS_COLUMNS)


def _repeat(
    sample: Callable[[], None], count: int | None, interval_s: float, sleep: Callable[[float], None]
) -> None:
    """`sample()` `count` times (None: until Ctrl-C), `interval_s` apart."""
    taken = 0
    try:
        while count is None or taken < count:
            if taken:
                sleep(interval_s)
            sample()
            taken += 1
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None


def stats(
    service: ServiceRef,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    count: Annotated[
        int | None, typer.Option(help="With --watch: stop after this many samples.", min=1)
    ] = None,
    interval: Annotated[
        float, typer.Option(help="With --watch: seconds between samples.", min=0.5)
    ] = 2.0,
    as_json: JsonFlag = False,
) -> None:
    """CPU and memory of each member (one sample; --watch: a refreshing view).

    With --json, --watch prints one JSON answer per line.
    """
    client = api()
    path = f"/api/external-services/{resolve.service_id(client, service)}/stats"
    if not watch:
        answer = client.get(path)
        print_json(answer) if as_json else console.print(stats_table(answer))
        return
    if as_json:

        def emit() -> None:
            sys.stdout.write(json.dumps(client.get(path)) + "\n")
            sys.stdout.flush()

        _repeat(emit, count, interval, time.sleep)
        return
    with Live(Text("sampling…"), console=console, auto_refresh=False) as live:

        def refresh() -> None:
            taken = time.strftime("%H:%M:%S")
            hint = "Ctrl-C to stop" if count is None else f"{count} samples"
            caption: RenderableType = Text(f"{taken} · every {interval:g}s · {hint}", "dim")
            live.update(Group(stats_table(client.get(path)), caption), refresh=True)

        _repeat(refresh, count, interval, time.sleep)


# --- logs -------------------------------------------------------------------------------------


def new_lines(previous: Sequence[str], current: Sequence[str]) -> list[str]:
    """The lines of `current` (the log's tail now) after those already in `previous` (its tail
    one poll ago): the longest end of `previous` that `current` starts with is what both hold.
    Without such an overlap (a recreated container, or more new lines than a window) every
    line of `current` is new."""
    for overlap in range(min(len(previous), len(current)), 0, -1):
        if list(previous[len(previous) - overlap :]) == list(current[:overlap]):
            return list(current[overlap:])
    return list(current)


def _write_lines(member: str, lines: Sequence[str], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"member": member, "lines": list(lines)}) + "\n")
    else:
        sys.stdout.write("".join(f"{line.rstrip(chr(10))}\n" for line in lines))
    sys.stdout.flush()


def follow(
    fetch: Callable[[int], list[str]],
    member: str,
    tail: int,
    as_json: bool,
    sleep: Callable[[float], None],
) -> None:
    """Print the last `tail` lines, then every poll's new ones, until Ctrl-C."""
    try:
        seen = fetch(max(tail, FOLLOW_WINDOW))
        _write_lines(member, seen[-tail:], as_json)
        while True:
            sleep(FOLLOW_POLL_S)
            current = fetch(FOLLOW_WINDOW)
            fresh = new_lines(seen, current)
            if fresh:
                _write_lines(member, fresh, as_json)
            seen = current
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None


def logs(
    service: ServiceRef,
    member: Annotated[str | None, typer.Option(help="Member, e.g. replica-1.")] = None,
    tail: Annotated[int, typer.Option(help="Lines from the end.", min=1, max=5000)] = 200,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The last lines of a member's container log (-f: and the new ones as they come).

    With --json, -f prints one `{"member", "lines"}` object per line.
    """
    client = api()
    path = f"/api/external-services/{resolve.service_id(client, service)}/logs"
    extra = {"member": member} if member else {}

    def fetch(lines: int) -> list[str]:
        answer = client.get(path, {"tail": str(lines), **extra})
        return list(answer.get("lines") or [])

    if follow_:
        follow(fetch, member or "primary", tail, as_json, time.sleep)
        return
    answer = client.get(path, {"tail": str(tail), **extra})
    if as_json:
        print_json(answer)
    else:
        _write_lines(answer.get("member") or "primary", answer.get("lines") or [], False)
