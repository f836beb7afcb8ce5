"""`temps env PROJECT ENV` (the injected variables) and `temps run` (a host command with them)."""

from __future__ import annotations

import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from temps_cli import dotenv, resolve
from temps_cli.client import CliError, ExitCode, TempsClient
from temps_cli.output import abbreviate_pem, api, note, print_json, print_table
from temps_cli.projects import EnvOpt, ProjectOpt, ProjectRef
from temps_cli.rewrite import loopback_map, rewrite_variables
from temps_cli.runner import execute, with_ca_files


class Format(StrEnum):
    table = "table"
    dotenv = "dotenv"
    docker = "docker"
    json = "json"


# The file formats: written to be read back, so a masked secret in them would be a silent bug.
FILE_FORMATS = {Format.dotenv: dotenv.render, Format.docker: dotenv.render_docker}


def fetch(client: TempsClient, project_ref: str, environment: str, reveal: bool) -> dict[str, Any]:
    """`{variables, links}` of a project's environment (`reveal`: secrets in clear, audited)."""
    pid = resolve.project(client, project_ref)["id"]
    params = {"reveal": "true"} if reveal else None
    answer: dict[str, Any] = client.get(
        f"/api/projects/{pid}/environments/{environment}/variables", params
    )
    return answer


def warn_pending(answer: dict[str, Any]) -> None:
    """Variables of a link appear once it is active: say which are missing, and why."""
    for item in answer.get("links") or []:
        if item.get("status") != "active":
            note(
                f"warning: the {item.get('service_type')} link ({item.get('service_id')}) is "
                f"{item.get('status')}; its variables are not there yet"
            )


def env(
    project: ProjectRef,
    environment: Annotated[str, typer.Argument(help="The environment, e.g. production.")],
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Secrets in clear (needs secrets:read; audited).")
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """The variables a linked app gets (secrets masked unless --reveal).

    --format dotenv: for a shell's `source`, dotenv libraries and Compose; --format docker: for
    `docker run --env-file` (multi-line values with \\n escapes). Both need --reveal.
    """
    render = None if as_json else FILE_FORMATS.get(fmt)
    if render is not None and not reveal:
        raise CliError(
            f"--format {fmt} writes the values a program will use: add --reveal (masked "
            "secrets would be written as ********)",
            ExitCode.INPUT,
        )
    answer = fetch(api(), project, environment, reveal)
    variables: dict[str, str] = answer.get("variables") or {}
    warn_pending(answer)
    if as_json or fmt is Format.json:
        print_json(answer)
    elif render is not None:
        try:
            sys.stdout.write(render(variables))
        except ValueError as exc:
            raise CliError(str(exc), ExitCode.INPUT) from exc
    else:
        rows = [{"name": k, "value": abbreviate_pem(v)} for k, v in sorted(variables.items())]
        print_table(rows, ("name", "value"))
    if not answer.get("links"):
        note(f"nothing is linked to {project}/{environment} yet: temps link SERVICE -P {project}")
    elif not reveal:
        note("secrets are masked: --reveal shows them")


def run(
    project: ProjectOpt,
    command: Annotated[
        list[str],
        typer.Argument(help="The command and its arguments (after --).", show_default=False),
    ],
    env: EnvOpt = "production",
) -> None:
    """Run COMMAND on this host with the variables of a project's environment.

    Private addresses become the loopback publications, the CA is written to a file named in
    PGSSLROOTCERT, NODE_EXTRA_CA_CERTS, AWS_CA_BUNDLE and REQUESTS_CA_BUNDLE; exits with
    COMMAND's exit code. Example: temps run -P shop -- npm run db:migrate
    """
    client = api()
    answer = fetch(client, project, env, reveal=True)
    warn_pending(answer)
    if not answer.get("links"):
        note(f"warning: nothing is linked to {project}/{env}; no variables to inject")
    infos = [
        client.get(f"/api/external-services/{item['service_id']}").get("connection_info") or {}
        for item in answer.get("links") or []
    ]
    variables = rewrite_variables(answer.get("variables") or {}, loopback_map(infos))
    # The CA files live as long as the command: a private directory removed afterwards.
    with tempfile.TemporaryDirectory(prefix="temps-run-") as tmp:
        code = execute(command, with_ca_files(variables, Path(tmp)))
    raise typer.Exit(code)
