"""Shared plumbing of the commands: the client of this invocation, tables for people, JSON for
scripts, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from temps_cli.client import CliError, TempsClient

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON (the API's answer) for scripts.")
]

# Width is left to rich on a terminal; piped output gets a wide table rather than wrapped ids.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False)


# The client of the running invocation (one per process; unit tests hand theirs in as `obj`).
_client: ContextVar[TempsClient | None] = ContextVar("temps_client", default=None)


class ReportingGroup(TyperGroup):
    """The root command: a CliError anywhere below ends the run with its line and exit code
    (typer would otherwise print a multi-line panel or a traceback)."""

    # typer.Context is what typer passes; its base is typer's private copy of click's.
    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        given = _client.set(ctx.obj if isinstance(ctx.obj, TempsClient) else None)
        try:
            return super().invoke(ctx)
        except CliError as exc:
            report_error(exc.message)
            raise typer.Exit(int(exc.exit_code)) from exc
        finally:
            _client.reset(given)


def report_error(message: str) -> None:
    line = Text("error: ", style="bold red")
    line.append(message)
    err_console.print(line, soft_wrap=True)


def note(message: str) -> None:
    """Progress and warnings go to stderr, so stdout stays the answer."""
    err_console.print(Text(message, style="dim"), soft_wrap=True)


def api() -> TempsClient:
    """The client of this invocation, made on first use from the environment."""
    client = _client.get()
    if client is None:
        client = TempsClient()
        _client.set(client)
    return client


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    table = Table(*(c.upper().replace("_", " ") for c in columns))
    for row in rows:
        table.add_row(*(Text(cell(row.get(c))) for c in columns))
    console.print(table)


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """One record as a two-column table (field, value)."""
    table = Table("FIELD", "VALUE", show_header=False)
    for name, value in pairs:
        table.add_row(name, Text(cell(value)))
    console.print(table)


def abbreviate_pem(value: str) -> str:
    """A PEM would fill the screen: its first line and its size, for people."""
    if "-----BEGIN" not in value:
        return value
    return f"{value.strip().splitlines()[0]} … ({len(value)} bytes)"
