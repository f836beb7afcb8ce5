"""`temps audit`: who did what, to which target, from where (the API's audit log; admin only)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from temps_cli import resolve
from temps_cli.completion import service_names
from temps_cli.output import JsonFlag, api, print_json, print_table

AUDIT_COLUMNS = ("at", "actor", "action", "target", "ip", "details")


def audit(
    service: Annotated[
        str | None,
        typer.Option(
            help="Only entries about this service (name or id).", autocompletion=service_names
        ),
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Only actors whose name contains this.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only entries at or after this RFC 3339 time.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Newest entries to show.", min=1, max=5000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """The audit log, newest first."""
    client = api()
    params: dict[str, str] = {"limit": str(limit)}
    names: dict[str, str] = {}
    if service is not None:
        params["service_id"] = resolve.service_id(client, service)
        names[params["service_id"]] = service
    if actor is not None:
        params["actor"] = actor
    if since is not None:
        params["since"] = since
    entries: list[dict[str, Any]] = client.get("/api/audit-log", params)
    if as_json:
        print_json(entries)
        return
    print_table(
        [{**e, "target": names.get(str(e.get("target")), e.get("target"))} for e in entries],
        AUDIT_COLUMNS,
    )
