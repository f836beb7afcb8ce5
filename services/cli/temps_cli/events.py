"""`temps events [-f] [--service S]`: what happened to the services, one line per event (time,
service, type, what it says), from the API's event stream."""

from __future__ import annotations

import json
from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from temps_cli import resolve
from temps_cli.client import CliError
from temps_cli.event_stream import EventFeed, ServiceEvent, StreamEnded
from temps_cli.output import JsonFlag, api, console, note

# Replayed history arrives in one burst; this long without an event means it is all here.
CAUGHT_UP_IDLE_S = 1.0
FOLLOW_WAKE_S = 1.0  # how often a follow looks up from the stream (Ctrl-C is seen at once)
TYPE_STYLES = {
    "ServiceFailed": "bold red",
    "ServiceProvisioned": "green",
    "ServiceDeleted": "yellow",
    "ServiceStepCompleted": "cyan",
}


def describe(event: ServiceEvent) -> str:
    """The interesting part of an event's payload, in words."""
    p = event.payload
    match event.type:
        case "ServiceRequested":
            return f"{p.get('service_type')} {p.get('version')} requested"
        case "ServiceOperationRequested":
            return f"{p.get('operation')} requested"
        case "ServiceStepCompleted":
            member = f"{p['member']}: " if p.get("member") else ""
            return f"{member}{p.get('step')} (+{int(p.get('elapsed_ms') or 0) / 1000:.1f}s)"
        case "ServiceProvisioned":
            info = p.get("connection_info") or {}
            return f"operational on {info.get('local_host')}:{info.get('local_port')}"
        case "ServiceStatusChanged":
            by = " (monitor)" if p.get("source") else ""
            reason = f": {p['reason']}" if p.get("reason") else ""
            return f"{p.get('status')}{by}{reason}"
        case "ServiceFailed":
            return f"failed: {p.get('reason')}"
        case "ServiceDeleted":
            return "deleted"
        case "LinkRequested":
            return f"link to {p.get('environment')} requested"
        case "LinkRevokeRequested":
            return "link revocation requested"
        case "LinksConverged":
            return (
                f"links: {len(p.get('active') or [])} active, {len(p.get('revoked') or [])} revoked"
            )
        case "CredentialsRotated":
            return f"credentials rotated ({p.get('links')} links)"
    rest = {k: v for k, v in p.items() if k not in ("schema_version", "generation")}
    return json.dumps(rest, separators=(",", ":"))


def local_time(moment: datetime | None) -> str:
    if moment is None:
        return "-" * 19
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def event_line(event: ServiceEvent, service_name: str) -> Text:
    line = Text(f"{local_time(event.occurred_at)}  ")
    line.append(f"{service_name}  ", style="bold")
    line.append(f"{event.type}  ", style=TYPE_STYLES.get(event.type, "dim"))
    line.append(describe(event))
    return line


def event_json(event: ServiceEvent) -> str:
    return json.dumps(
        {
            "id": event.seq,
            "type": event.type,
            "service_id": event.service_id,
            "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
            "payload": event.payload,
        }
    )


class Names:
    """Service names by id: the list once, then the names new services are requested with."""

    def __init__(self, services: list[dict[str, Any]]) -> None:
        self._names = {str(s["id"]): str(s["name"]) for s in services}

    def of(self, event: ServiceEvent) -> str:
        if event.type == "ServiceRequested" and event.payload.get("name"):
            self._names[event.service_id] = str(event.payload["name"])
        return self._names.get(event.service_id, event.service_id[:8])


def events(
    service: Annotated[
        str | None, typer.Option("--service", "-s", help="Only this service (name or id).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep following new events (Ctrl-C ends).")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="How many past events to show.", min=0)
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """What happened to the services (status changes, provisioning steps, links), newest last."""
    client = api()
    sid = resolve.service_id(client, service) if service else None
    names = Names(client.get("/api/external-services"))
    started = datetime.now(UTC)

    def show(event: ServiceEvent) -> None:
        if as_json:
            console.out(event_json(event), highlight=False)
        else:
            console.print(event_line(event, names.of(event)), soft_wrap=True)

    with EventFeed(client, sid, after=0) as feed:
        # The history first (its last `lines` events), up to the first event of this minute or
        # a pause in the replay, whichever comes first.
        history: deque[ServiceEvent] = deque(maxlen=lines)
        live: ServiceEvent | None = None
        while True:
            item = feed.next(CAUGHT_UP_IDLE_S)
            if item is None:
                break
            if isinstance(item, StreamEnded):
                for event in history:
                    show(event)
                raise CliError(item.reason, item.exit_code)
            if item.occurred_at is not None and item.occurred_at >= started:
                live = item
                break
            history.append(item)
        for event in history:
            show(event)
        if not follow:
            return
        note("following new events (Ctrl-C ends)…")
        if live is not None:
            show(live)
        try:
            while True:
                item = feed.next(FOLLOW_WAKE_S)
                if isinstance(item, StreamEnded):
                    raise CliError(item.reason, item.exit_code)
                if item is not None:
                    show(item)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None  # the usual end of a follow, as a shell reports it
