"""`temps services …`: create, list, show, delete, start, stop, retry, rotate, credentials, and
the day-2 changes update, resize, scale and resources (health, stats, runtime, logs: observe.py)."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any

import typer

from temps_cli import progress, resolve
from temps_cli.client import CliError, ExitCode, TempsClient
from temps_cli.completion import service_names
from temps_cli.output import (
    JsonFlag,
    abbreviate_pem,
    api,
    note,
    print_fields,
    print_json,
    print_table,
)

app = typer.Typer(help="Managed services: PostgreSQL, Redis, S3.", no_args_is_help=True)

ServiceRef = Annotated[
    str,
    typer.Argument(
        help="The service's name or id.", show_default=False, autocompletion=service_names
    ),
]
WaitFlag = Annotated[bool, typer.Option("--wait", help="Wait until the change is done.")]
Timeout = Annotated[
    float, typer.Option("--timeout", help="Seconds --wait waits at most.", min=1, show_default=True)
]
LIST_COLUMNS = ("name", "service_type", "version", "status", "local", "id")
POLL_S = 1.0


def local_address(service: dict[str, Any]) -> str:
    info = service.get("connection_info") or {}
    if not info.get("local_port"):
        return ""
    return f"{info.get('local_host', '127.0.0.1')}:{info['local_port']}"


def _row(service: dict[str, Any]) -> dict[str, Any]:
    return {**service, "local": local_address(service)}


def show_service(service: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(service)
        return
    info = service.get("connection_info") or {}
    fields = [
        ("name", service.get("name")),
        ("id", service.get("id")),
        ("type", f"{service.get('service_type')} {service.get('version')}"),
        ("status", service.get("status")),
        ("reason", service.get("status_reason")),
        ("private address", f"{info['host']}:{info['port']}" if info.get("host") else ""),
        ("local address", local_address(service)),
        ("parameters", service.get("parameters")),
        ("resources", service.get("resources")),
        ("replication", service.get("replication")),
        ("generation", f"{service.get('observed_generation')}/{service.get('generation')}"),
        ("created", service.get("created_at")),
    ]
    print_fields((k, v) for k, v in fields if v not in (None, "", {}, []))


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value`; the value is JSON when it parses (`replicas=0`, `backups=false`,
    `lifecycle=[…]`), a string otherwise (`memory=512MB`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CliError(f"--param {text!r}: expected key=value", ExitCode.INPUT)
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def wait_for(
    client: TempsClient,
    service_id: str,
    status: str,
    generation: int,
    timeout_s: float,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Until the service shows `status` at `generation` or later, showing its steps live
    (progress.py); a `failed` service ends the wait with its reason."""
    return progress.wait_for_status(client, service_id, status, generation, timeout_s, poll_s)


def wait_gone(
    client: TempsClient, service_id: str, generation: int, timeout_s: float, poll_s: float = POLL_S
) -> None:
    progress.wait_until_gone(client, service_id, generation, timeout_s, poll_s)


@app.command("list")
def list_services(as_json: JsonFlag = False) -> None:
    """List the services."""
    services = api().get("/api/external-services")
    if as_json:
        print_json(services)
    else:
        print_table([_row(s) for s in services], LIST_COLUMNS)


@app.command("show")
def show(service: ServiceRef, as_json: JsonFlag = False) -> None:
    """Show one service: status, addresses, parameters, resources."""
    client = api()
    show_service(
        client.get(f"/api/external-services/{resolve.service_id(client, service)}"), as_json
    )


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Lowercase letters, digits, dashes.")],
    service_type: Annotated[
        str, typer.Option("--type", "-t", help="postgres | redis | s3")
    ] = "postgres",
    version: Annotated[str | None, typer.Option(help="Major version, e.g. 17.")] = None,
    params: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Engine parameter key=value (repeatable)."),
    ] = None,
    memory_mb: Annotated[
        int | None,
        typer.Option(help="Container memory cap (engine sizing: -p memory_mb=…).", min=1),
    ] = None,
    cpus: Annotated[float | None, typer.Option(help="Container CPU cap.", min=0.01)] = None,
    wait: WaitFlag = False,
    timeout: Timeout = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Create a service; it provisions in the background (--wait: until it is operational)."""
    body: dict[str, Any] = {"name": name, "service_type": service_type}
    if version:
        body["version"] = version
    if params:
        body["parameters"] = dict(parse_param(p) for p in params)
    resources = {k: v for k, v in (("memory_mb", memory_mb), ("cpus", cpus)) if v is not None}
    if resources:
        body["resources"] = resources
    client = api()
    created = client.post("/api/external-services", body)
    if wait:
        note(f"waiting for {name} to be operational (at most {timeout:g}s)…")
        created = wait_for(client, created["id"], "operational", 0, timeout)
    show_service(created, as_json)


def _operation(verb: str, target: str) -> None:
    def command(
        service: ServiceRef,
        wait: WaitFlag = False,
        timeout: Timeout = 120.0,
        as_json: JsonFlag = False,
    ) -> None:
        client = api()
        sid = resolve.service_id(client, service)
        answer = client.post(f"/api/external-services/{sid}/{verb}")
        if wait:
            answer = wait_for(client, sid, target, int(answer.get("generation", 0)), timeout)
        show_service(answer, as_json)

    command.__doc__ = f"{verb.capitalize()} a service (--wait: until it is {target})."
    app.command(verb)(command)


_operation("start", "operational")
_operation("stop", "stopped")
_operation("retry", "operational")


@app.command("delete")
def delete(
    service: ServiceRef,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    wait: WaitFlag = False,
    timeout: Timeout = 120.0,
    as_json: JsonFlag = False,
) -> None:
    """Delete a service and its data (refused while projects are linked)."""
    client = api()
    sid = resolve.service_id(client, service)
    if not yes:
        if not sys.stdin.isatty():
            raise CliError("deleting a service needs --yes when not on a terminal", ExitCode.INPUT)
        typer.confirm(f"Delete service {service} and its data?", abort=True)
    answer = client.delete(f"/api/external-services/{sid}")
    if wait:
        wait_gone(client, sid, int(answer.get("generation", 0)), timeout)
        answer = {**answer, "status": "deleted"}
    show_service(answer, as_json)


@app.command("rotate")
def rotate(
    service: ServiceRef, wait: WaitFlag = False, timeout: Timeout = 120.0, as_json: JsonFlag = False
) -> None:
    """New credentials for the administrator and every link; linked variables follow.

    Open connections stay; the old secrets stop working once applied (--wait: until then).
    """
    client = api()
    sid = resolve.service_id(client, service)
    answer = client.post(f"/api/external-services/{sid}/rotate-credentials")
    if wait:
        answer = wait_for(client, sid, "operational", int(answer.get("generation", 0)), timeout)
    show_service(answer, as_json)


@app.command("credentials")
def credentials(service: ServiceRef, as_json: JsonFlag = False) -> None:
    """The administrator credentials (needs secrets:read; audited)."""
    client = api()
    creds = client.get(f"/api/external-services/{resolve.service_id(client, service)}/credentials")
    if as_json:
        print_json(creds)
    else:
        print_fields(
            (k, abbreviate_pem(str(v)) if k == "ca_certificate" else v) for k, v in creds.items()
        )


# --- day 2: parameters (PATCH …/{id}) and container caps (PATCH …/resources) ---------------

# `resize` takes the spec's sizes ("512MB", "20GB"; a bare number is in the field's unit) and
# sends each engine's own field in its unit, so what is stored is exactly what was asked.
RESIZE_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "postgres": {"memory": ("memory_mb", "M"), "storage": ("storage_gb", "G")},
    "redis": {"memory": ("memory_mb", "M")},
    "s3": {"storage": ("size_gb", "G")},
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?)?\s*$", re.IGNORECASE)
_MIB_PER_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
RESOURCE_COLUMNS = ("role", "container_name", "outcome", "recreated", "error")


def _change_parameters(
    client: TempsClient,
    sid: str,
    parameters: dict[str, Any],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    answer = client.patch(f"/api/external-services/{sid}", {"parameters": parameters})
    if wait:
        note(f"waiting for {answer.get('name')} to apply the change (at most {timeout:g}s)…")
        answer = wait_for(client, sid, "operational", int(answer.get("generation", 0)), timeout)
    show_service(answer, as_json)


@app.command("update")
def update(
    service: ServiceRef,
    params: Annotated[
        list[str],
        typer.Option(
            "--param", "-p", help="Engine parameter key=value (repeatable).", show_default=False
        ),
    ],
    wait: WaitFlag = False,
    timeout: Timeout = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Change parameters (merged with the stored ones): live where the engine can, else by a
    restart that keeps the data (--wait: until applied)."""
    client = api()
    parameters = dict(parse_param(p) for p in params)
    _change_parameters(
        client, resolve.service_id(client, service), parameters, wait, timeout, as_json
    )


def size_in(text: str, unit: str, option: str) -> int:
    """`text` ("512MB", "1.5GB", "20", "1GiB") as a whole number of `unit` (M or G)."""
    match = _SIZE.match(text)
    if not match:
        raise CliError(f"{option} {text!r}: write a size such as 512MB or 20GB", ExitCode.INPUT)
    given_unit = (match[2] or unit).upper()
    amount = float(match[1]) * _MIB_PER_UNIT[given_unit] / _MIB_PER_UNIT[unit]
    if amount != int(amount) or amount < 1:
        raise CliError(f"{option} {text!r} is not a whole number of {unit}B", ExitCode.INPUT)
    return int(amount)


@app.command("resize")
def resize(
    service: ServiceRef,
    memory: Annotated[
        str | None, typer.Option(help="PostgreSQL/Redis memory, e.g. 512MB or 1GB (MB if bare).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="PostgreSQL storage / S3 quota, e.g. 20GB (GB if bare)."),
    ] = None,
    wait: WaitFlag = False,
    timeout: Timeout = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Resize the engine: a shortcut for `update` with memory / storage (the spec's sizes)."""
    asked = {k: v for k, v in (("memory", memory), ("storage", storage)) if v is not None}
    if not asked:
        raise CliError("resize needs --memory or --storage", ExitCode.INPUT)
    client = api()
    sid = resolve.service_id(client, service)
    service_type = str(client.get(f"/api/external-services/{sid}").get("service_type"))
    fields = RESIZE_FIELDS.get(service_type, {})
    missing = sorted(set(asked) - set(fields))
    if missing:
        raise CliError(f"a {service_type} service has no {missing[0]} to resize", ExitCode.INPUT)
    parameters = {fields[k][0]: size_in(v, fields[k][1], f"--{k}") for k, v in asked.items()}
    _change_parameters(client, sid, parameters, wait, timeout, as_json)


@app.command("scale")
def scale(
    service: ServiceRef,
    replicas: Annotated[
        int,
        typer.Option(help="Streaming read replicas, 0 to 5.", min=0, show_default=False),
    ],
    wait: WaitFlag = False,
    timeout: Timeout = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Set the number of PostgreSQL read replicas (the `replicas` parameter)."""
    client = api()
    sid = resolve.service_id(client, service)
    service_type = client.get(f"/api/external-services/{sid}").get("service_type")
    if service_type != "postgres":
        raise CliError(f"only PostgreSQL has read replicas, not {service_type}", ExitCode.INPUT)
    _change_parameters(client, sid, {"replicas": replicas}, wait, timeout, as_json)


@app.command("resources")
def resources(
    service: ServiceRef,
    memory_mb: Annotated[
        int | None, typer.Option(help="Container memory cap in MiB (at least 6).", min=1)
    ] = None,
    cpus: Annotated[
        float | None, typer.Option(help="Container CPU cap in cores.", min=0.01)
    ] = None,
    swap_mb: Annotated[
        int | None, typer.Option(help="Swap in MiB beyond the memory cap.", min=0)
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Lift every cap.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show the container caps, or change them on every member and say what each member did.

    Caps not given keep their value; --clear lifts them all (a lifted memory cap is applied
    live; a lifted CPU cap recreates the members, the data stays).
    """
    asked = {
        k: v
        for k, v in (("memory_mb", memory_mb), ("cpus", cpus), ("swap_mb", swap_mb))
        if v is not None
    }
    if clear and asked:
        raise CliError("--clear lifts every cap: give it alone", ExitCode.INPUT)
    client = api()
    sid = resolve.service_id(client, service)
    current: dict[str, Any] = client.get(f"/api/external-services/{sid}").get("resources") or {}
    if not asked and not clear:
        # The API has no GET …/resources: the caps are part of the service.
        if as_json:
            print_json(current)
        else:
            print_fields((k, current.get(k)) for k in ("memory_mb", "swap_mb", "cpus"))
        return
    # PATCH replaces every cap; merging here keeps the ones not named on the command line.
    limits = {} if clear else {**{k: v for k, v in current.items() if v is not None}, **asked}
    answer = client.patch(f"/api/external-services/{sid}/resources", limits)
    if as_json:
        print_json(answer)
        return
    caps = answer.get("limits") or {}
    set_caps = ", ".join(f"{k}={v}" for k, v in caps.items() if v is not None)
    note(f"caps: {set_caps or 'none'}")
    print_table(answer.get("applied") or [], RESOURCE_COLUMNS)
