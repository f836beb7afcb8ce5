"""`temps tokens list|create|revoke`: API tokens (admin only; a new token is shown once)."""

from __future__ import annotations

import re
from typing import Annotated, Any
from uuid import UUID

import typer

from temps_cli.client import CliError, ExitCode, TempsClient
from temps_cli.output import JsonFlag, api, note, print_fields, print_json, print_table

app = typer.Typer(help="API tokens (admin only).", no_args_is_help=True)

TOKEN_COLUMNS = ("name", "permissions", "expires_at", "last_used_at", "created_at", "id")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def duration_s(text: str) -> int:
    """`90`, `90s`, `15m`, `12h`, `30d`, `2w` in seconds."""
    match = _DURATION.match(text.lower())
    if not match or int(match[1]) == 0:
        raise CliError(
            f"--expires-in {text!r}: write a duration such as 3600, 15m, 12h, 30d or 2w",
            ExitCode.INPUT,
        )
    return int(match[1]) * _UNIT_S[match[2] or "s"]


def _row(token: dict[str, Any]) -> dict[str, Any]:
    return {
        **token,
        "permissions": ", ".join(token.get("permissions") or []),
        "expires_at": token.get("expires_at") or "never",
    }


def _token_id(client: TempsClient, ref: str) -> str:
    """A token named by its id (taken as is) or by its name, when that name is unique."""
    try:
        return str(UUID(ref))
    except ValueError:
        pass
    found = [t for t in client.get("/api/tokens") if t.get("name") == ref]
    if len(found) != 1:
        problem = "no token" if not found else f"{len(found)} tokens"
        raise CliError(
            f"{problem} named {ref!r}: name it by its id (see `temps tokens list`)",
            ExitCode.NOT_FOUND if not found else ExitCode.INPUT,
        )
    return str(found[0]["id"])


@app.command("list")
def list_tokens(as_json: JsonFlag = False) -> None:
    """List the API tokens (never their secret)."""
    tokens = api().get("/api/tokens")
    if as_json:
        print_json(tokens)
    else:
        print_table([_row(t) for t in tokens], TOKEN_COLUMNS)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. ci.")],
    permissions: Annotated[
        list[str],
        typer.Option(
            "--permission",
            "-p",
            help="external_services:read|write, backups:read|write, secrets:read, admin"
            " (repeatable).",
            show_default=False,
        ),
    ],
    expires_in: Annotated[
        str | None, typer.Option(help="Expire after a duration: 3600, 15m, 12h, 30d, 2w.")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="Expire at an RFC 3339 time with offset.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a token; its secret is shown once (only its hash is stored)."""
    if expires_in is not None and expires_at is not None:
        raise CliError("give --expires-in or --expires-at, not both", ExitCode.INPUT)
    body: dict[str, Any] = {"name": name, "permissions": permissions}
    if expires_in is not None:
        body["expires_in_s"] = duration_s(expires_in)
    if expires_at is not None:
        body["expires_at"] = expires_at
    created = api().post("/api/tokens", body)
    if as_json:
        print_json(created)
        return
    print_fields(_row(created).items())
    note("the token is shown this once: store it now (TEMPS_TOKEN=… for the CLI)")


@app.command("revoke")
def revoke(
    token: Annotated[str, typer.Argument(help="The token's id or name.", show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a token: its requests are refused at once, its event streams end within ~1 s."""
    client = api()
    token_id = _token_id(client, token)
    client.delete(f"/api/tokens/{token_id}")
    if as_json:
        print_json({"id": token_id, "revoked": True})
    else:
        note(f"revoked token {token_id}")
