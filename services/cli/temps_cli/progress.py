"""`--wait` with live progress: follow the service's events and show each step with the time it
took, until the service reaches the wanted state; end with its connection string.

The events only drive the display and wake the wait: the outcome is always read from the API
(the service's status at the generation the write answered), polled every `poll_s` too, so a lost
event or a broken stream cannot hang a wait, and `--timeout` bounds it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from rich.text import Text

from temps_cli.client import CliError, ExitCode, TempsClient
from temps_cli.event_stream import EventFeed, ServiceEvent
from temps_cli.events import describe
from temps_cli.output import err_console

T = TypeVar("T")
# Events that end an operation: the read model follows within milliseconds, so look at once.
FINAL_EVENTS = frozenset({"ServiceProvisioned", "ServiceFailed", "ServiceDeleted"})
FINAL_STATUSES = frozenset({"stopped", "failed"})
QUICK_POLL_S = 0.1
# An event without a generation (a monitor's verdict) is this service's news if it is this recent.
CLOCK_SLACK = timedelta(seconds=1)


def connection_string(service: dict[str, Any]) -> str:
    """Where to connect from this host, without a secret (the password: `temps services
    credentials`; a shell: `temps connect`)."""
    info = service.get("connection_info") or {}
    host = info.get("local_host", "127.0.0.1")
    match service.get("service_type"):
        case "postgres":
            return (
                f"postgresql://{info.get('username')}@{host}:{info.get('local_port')}/"
                f"{info.get('database')}?sslmode=verify-full"
            )
        case "redis":
            return f"rediss://{host}:{info.get('local_tls_port')}"
        case "s3":
            return f"https://{host}:{info.get('local_port')} (bucket {info.get('bucket')})"
    return f"{host}:{info.get('local_port')}"


def relevant(event: ServiceEvent, generation: int, since: datetime) -> bool:
    """Whether an event belongs to the change being waited for (history is replayed too)."""
    if event.generation is not None:
        return event.generation >= generation
    return event.occurred_at is not None and event.occurred_at >= since - CLOCK_SLACK


def step_line(event: ServiceEvent, since: datetime) -> Text:
    """`  2.3s  primary: started` — seconds since the wait began."""
    at = event.occurred_at or datetime.now(UTC)
    elapsed = max(0.0, (at - since).total_seconds())
    line = Text(f"{elapsed:6.1f}s  ", style="dim")
    style = "red" if event.type == "ServiceFailed" else None
    line.append(describe_step(event), style=style)
    return line


def describe_step(event: ServiceEvent) -> str:
    p = event.payload
    if event.type == "ServiceStepCompleted":  # its elapsed time is the line's own
        return f"{p['member']}: {p.get('step')}" if p.get("member") else str(p.get("step"))
    return describe(event)


class _Wait:
    """One wait: the state check, the events, the deadline."""

    def __init__(
        self, client: TempsClient, service_id: str, generation: int, timeout_s: float
    ) -> None:
        self.client = client
        self.service_id = service_id
        self.generation = generation
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.since = datetime.now(UTC)

    def follow(self, settled: Callable[[], T | None], poll_s: float) -> T | None:
        """Call `settled()` (None: not yet) at once, after each final event and every `poll_s`,
        showing the events meanwhile; its first answer is the result."""
        with EventFeed(self.client, self.service_id, after=0) as feed:
            next_check = time.monotonic()
            while True:
                now = time.monotonic()
                if now >= next_check:
                    result = settled()
                    if result is not None:
                        return result
                    next_check = time.monotonic() + poll_s
                if now >= self.deadline:
                    return None
                wake = min(next_check, self.deadline) - time.monotonic()
                if feed.ended is not None:  # no events any more: poll only
                    time.sleep(max(0.0, wake))
                    next_check = min(next_check, time.monotonic())
                    continue
                item = feed.next(wake)
                if isinstance(item, ServiceEvent) and relevant(item, self.generation, self.since):
                    err_console.print(step_line(item, self.since), soft_wrap=True)
                    if item.type in FINAL_EVENTS or item.payload.get("status") in FINAL_STATUSES:
                        poll_s = QUICK_POLL_S
                        next_check = time.monotonic()

    def elapsed(self) -> str:
        return f"{(datetime.now(UTC) - self.since).total_seconds():.1f}s"


def wait_for_status(
    client: TempsClient,
    service_id: str,
    status: str,
    generation: int,
    timeout_s: float,
    poll_s: float,
) -> dict[str, Any]:
    """Until the service shows `status` at `generation` or later (the generation a write
    answered, so a stale `operational` from before a restart does not count). A `failed`
    service ends the wait with its reason (exit 1), the timeout with exit 6."""
    wait = _Wait(client, service_id, generation, timeout_s)
    last: dict[str, Any] = {}

    def settled() -> dict[str, Any] | None:
        service: dict[str, Any] = client.get(f"/api/external-services/{service_id}")
        last.update(service)
        converged = service.get("observed_generation", 0) >= generation
        if converged and service.get("status") == status:
            return service
        if converged and service.get("status") == "failed":
            raise CliError(
                f"service {service.get('name')} failed: {service.get('status_reason')}",
                ExitCode.PLATFORM,
            )
        return None

    service = wait.follow(settled, poll_s)
    if service is None:
        raise CliError(
            f"gave up after {timeout_s:g}s: service {last.get('name')} is "
            f"{last.get('status')}, not {status}",
            ExitCode.TIMEOUT,
        )
    done = Text(f"{status} in {wait.elapsed()}", style="bold green")
    if status == "operational":
        done.append(f" — {connection_string(service)}", style="green")
    err_console.print(done, soft_wrap=True)
    return dict(service)


def wait_until_gone(
    client: TempsClient, service_id: str, generation: int, timeout_s: float, poll_s: float
) -> None:
    """Until the service is deleted (404); a failed delete ends the wait with its reason."""
    wait = _Wait(client, service_id, generation, timeout_s)
    last: dict[str, Any] = {}

    def settled() -> bool | None:
        try:
            service: dict[str, Any] = client.get(f"/api/external-services/{service_id}")
        except CliError as exc:
            if exc.exit_code == ExitCode.NOT_FOUND:
                return True
            raise
        last.update(service)
        converged = service.get("observed_generation", 0) >= generation
        if converged and service.get("status") == "failed":
            raise CliError(f"deleting failed: {service.get('status_reason')}", ExitCode.PLATFORM)
        return None

    if wait.follow(settled, poll_s) is None:
        raise CliError(
            f"gave up after {timeout_s:g}s: service {last.get('name')} is still "
            f"{last.get('status')}",
            ExitCode.TIMEOUT,
        )
    err_console.print(Text(f"deleted in {wait.elapsed()}", style="bold green"), soft_wrap=True)
