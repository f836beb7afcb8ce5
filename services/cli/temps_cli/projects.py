"""`temps projects …`, `temps link`, `temps unlink`, `temps links`."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from temps_cli import resolve
from temps_cli.client import CliError, ExitCode, TempsClient
from temps_cli.completion import project_names
from temps_cli.output import JsonFlag, api, note, print_fields, print_json, print_table
from temps_cli.services import POLL_S, ServiceRef, Timeout, WaitFlag

app = typer.Typer(help="Projects and their environments.", no_args_is_help=True)

ProjectRef = Annotated[
    str,
    typer.Argument(
        help="The project's name or id.", show_default=False, autocompletion=project_names
    ),
]
ProjectOpt = Annotated[
    str,
    typer.Option(
        "--project",
        "-P",
        help="The project's name or id.",
        show_default=False,
        autocompletion=project_names,
    ),
]
EnvOpt = Annotated[str, typer.Option("--env", "-e", help="The environment.")]
LINK_COLUMNS = ("project", "environment", "status", "username", "key_prefix", "created_at")


def _project_row(project: dict[str, Any]) -> dict[str, Any]:
    return {**project, "environments": ", ".join(project.get("environments") or [])}


@app.command("list")
def list_projects(as_json: JsonFlag = False) -> None:
    """List the projects and their environments."""
    projects = api().get("/api/projects")
    if as_json:
        print_json(projects)
    else:
        print_table([_project_row(p) for p in projects], ("name", "environments", "id"))


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The project's name.")], as_json: JsonFlag = False
) -> None:
    """Create a project (with its `production` environment)."""
    project = api().post("/api/projects", {"name": name})
    if as_json:
        print_json(project)
    else:
        print_fields(_project_row(project).items())


@app.command("show")
def show(project: ProjectRef, as_json: JsonFlag = False) -> None:
    """Show one project."""
    found = resolve.project(api(), project)
    if as_json:
        print_json(found)
    else:
        print_fields(_project_row(found).items())


@app.command("add-env")
def add_env(
    project: ProjectRef,
    environment: Annotated[str, typer.Argument(help="The new environment, e.g. staging.")],
    as_json: JsonFlag = False,
) -> None:
    """Add an environment to a project."""
    client = api()
    pid = resolve.project(client, project)["id"]
    answer = client.post(f"/api/projects/{pid}/environments", {"name": environment})
    if as_json:
        print_json(answer)
    else:
        note(f"environment {environment} added to {project}")


YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")]


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError("deleting needs --yes when not on a terminal", ExitCode.INPUT)
    typer.confirm(question, abort=True)


@app.command("delete")
def delete(project: ProjectRef, yes: YesFlag = False) -> None:
    """Delete a project and its environments (refused while a service is linked)."""
    client = api()
    found = resolve.project(client, project)
    _confirm(f"Delete project {found['name']} and its environments?", yes)
    client.delete(f"/api/projects/{found['id']}")
    note(f"project {found['name']} deleted")


@app.command("delete-env")
def delete_env(
    project: ProjectRef,
    environment: Annotated[str, typer.Argument(help="The environment to delete.")],
    yes: YesFlag = False,
) -> None:
    """Delete one environment of a project (refused while a service is linked to it)."""
    client = api()
    found = resolve.project(client, project)
    _confirm(f"Delete environment {environment} of project {found['name']}?", yes)
    client.delete(f"/api/projects/{found['id']}/environments/{environment}")
    note(f"environment {environment} of {found['name']} deleted")


def _links(client: TempsClient, service_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(f"/api/external-services/{service_id}/projects")
    return found


def wait_link_active(
    client: TempsClient,
    service_id: str,
    project_id: str,
    environment: str,
    timeout_s: float,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Poll the service's links until this one is `active` (its variables exist then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        link = next(
            (
                item
                for item in _links(client, service_id)
                if str(item.get("project_id")) == project_id
                and item.get("environment") == environment
            ),
            None,
        )
        status = (link or {}).get("status")
        if link is not None and status == "active":
            return link
        if status == "failed":
            raise CliError(f"the link failed: {link}", ExitCode.PLATFORM)
        if time.monotonic() >= deadline:
            raise CliError(
                f"gave up after {timeout_s:g}s: the link is {status or 'not listed'}, not active",
                ExitCode.TIMEOUT,
            )
        time.sleep(poll_s)


def link(
    service: ServiceRef,
    project: ProjectOpt,
    env: EnvOpt = "production",
    key_prefix: Annotated[
        str | None, typer.Option(help="Redis only: restrict keys and channels to PREFIX.")
    ] = None,
    wait: WaitFlag = False,
    timeout: Timeout = 120.0,
    as_json: JsonFlag = False,
) -> None:
    """Link a service to a project's environment: a user of its own, injected variables."""
    client = api()
    sid = resolve.service_id(client, service)
    pid = str(resolve.project(client, project)["id"])
    body: dict[str, Any] = {"project_id": pid, "environment": env}
    if key_prefix is not None:
        body["key_prefix"] = key_prefix
    answer = client.post(f"/api/external-services/{sid}/projects", body)
    if wait:
        answer = wait_link_active(client, sid, pid, env, timeout)
    if as_json:
        print_json(answer)
    else:
        hint = "" if wait else " (--wait waits until it is active)"
        note(
            f"{service} → {project}/{env} as {answer.get('username')}: {answer.get('status')}{hint}"
        )


def unlink(
    service: ServiceRef, project: ProjectOpt, env: EnvOpt = "production", as_json: JsonFlag = False
) -> None:
    """Unlink: the link's user is revoked; the data stays."""
    client = api()
    sid = resolve.service_id(client, service)
    pid = str(resolve.project(client, project)["id"])
    answer = client.delete(f"/api/external-services/{sid}/projects/{pid}", {"environment": env})
    if as_json:
        print_json(answer)
    else:
        note(f"unlink of {service} from {project}/{env} requested")


def links(service: ServiceRef, as_json: JsonFlag = False) -> None:
    """The projects a service is linked to."""
    client = api()
    found = _links(client, resolve.service_id(client, service))
    if as_json:
        print_json(found)
        return
    names = {str(p["id"]): p.get("name") for p in client.get("/api/projects")} if found else {}
    rows = [
        {**item, "project": names.get(str(item.get("project_id")), item.get("project_id"))}
        for item in found
    ]
    print_table(rows, LINK_COLUMNS)
