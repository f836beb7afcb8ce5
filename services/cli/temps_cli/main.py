"""`temps`: the command line for managed services (tables for people, --json for scripts)."""

from __future__ import annotations

import typer

from temps_cli import audit, backups, connect, env_run, events, observe, projects, services, tokens
from temps_cli.output import ReportingGroup

app = typer.Typer(
    cls=ReportingGroup,
    help="Temps: managed PostgreSQL, Redis and S3 on your own machines.",
    no_args_is_help=True,
    # Our own failures are one line (ReportingGroup); a traceback is a bug, shown plainly.
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(services.app, name="services")
app.add_typer(projects.app, name="projects")
app.add_typer(tokens.app, name="tokens")
app.add_typer(backups.app, name="backup")
app.command("audit")(audit.audit)
for _name, _command in (
    ("health", observe.health),
    ("stats", observe.stats),
    ("runtime", observe.runtime),
    ("logs", observe.logs),
):
    services.app.command(_name)(_command)
app.command("link")(projects.link)
app.command("unlink")(projects.unlink)
app.command("links")(projects.links)
app.command("env")(env_run.env)
app.command("events")(events.events)
app.command("connect")(connect.connect)
app.command(
    "run",
    # Everything after the first argument belongs to COMMAND (`temps run -P a psql -c …`).
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)(env_run.run)


def main() -> None:
    app()
