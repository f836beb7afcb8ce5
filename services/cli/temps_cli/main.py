"""`temps`: the command line for managed services (tables for people, --json for scripts)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from temps_cli.client import ApiProblem, TempsClient

app = typer.Typer(
    help="Temps: managed PostgreSQL, Redis and S3 on your own machines.", no_args_is_help=True
)
services_app = typer.Typer(help="Managed services.", no_args_is_help=True)
app.add_typer(services_app, name="services")
console = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _print(data: Any, as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console.print(table)


SERVICE_COLUMNS = ("id", "name", "service_type", "version", "status", "status_reason")


def _call(method: str, path: str, body: Any = None) -> Any:
    try:
        return TempsClient().request(method, path, body)
    except ApiProblem as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2 if 400 <= exc.status < 500 else 1) from exc


@services_app.command("list")
def list_services(as_json: JsonFlag = False) -> None:
    """List services."""
    _print(_call("GET", "/api/external-services"), as_json, SERVICE_COLUMNS)


@services_app.command("show")
def show(service_id: str, as_json: JsonFlag = False) -> None:
    """Show one service."""
    _print(_call("GET", f"/api/external-services/{service_id}"), as_json, SERVICE_COLUMNS)


@services_app.command("create")
def create(
    name: str,
    service_type: Annotated[str, typer.Option("--type", help="postgres | redis | s3")] = "postgres",
    version: Annotated[str | None, typer.Option(help="Major version")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a service (answers at once; it provisions in the background)."""
    body: dict[str, Any] = {"name": name, "service_type": service_type}
    if version:
        body["version"] = version
    _print(_call("POST", "/api/external-services", body), as_json, SERVICE_COLUMNS)


def _operation(verb: str) -> None:
    @services_app.command(verb)
    def command(service_id: str, as_json: JsonFlag = False) -> None:
        method, path = ("DELETE", "") if verb == "delete" else ("POST", f"/{verb}")
        _print(
            _call(method, f"/api/external-services/{service_id}{path}"), as_json, SERVICE_COLUMNS
        )

    command.__doc__ = f"{verb.capitalize()} a service."


for _verb in ("start", "stop", "retry", "delete"):
    _operation(_verb)


@services_app.command("credentials")
def credentials(service_id: str) -> None:
    """Print the administrator credentials (JSON; needs secrets:read)."""
    _print(_call("GET", f"/api/external-services/{service_id}/credentials"), True, ())


def main() -> None:
    app()
