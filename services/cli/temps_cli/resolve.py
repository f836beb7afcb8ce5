"""Names where ids are expected: a service or project is named by its id or by its name."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from temps_cli.client import CliError, ExitCode, TempsClient


def _is_uuid(ref: str) -> bool:
    try:
        UUID(ref)
    except ValueError:
        return False
    return True


def _pick(items: list[dict[str, Any]], ref: str, kind: str) -> dict[str, Any]:
    # An exact id first (ids of any form), then the unique name.
    for key in ("id", "name"):
        found = [item for item in items if str(item.get(key)) == ref]
        if len(found) == 1:
            return found[0]
    raise CliError(f"no {kind} named {ref!r} (see `temps {kind}s list`)", ExitCode.NOT_FOUND)


def service_id(client: TempsClient, ref: str) -> str:
    """The id of the service `ref` names: a UUID is taken as is (the API says 404 if it is
    unknown), a name is looked up in the list."""
    if _is_uuid(ref):
        return ref
    return str(_pick(client.get("/api/external-services"), ref, "service")["id"])


def project(client: TempsClient, ref: str) -> dict[str, Any]:
    """The project `ref` names, by id or by name."""
    if _is_uuid(ref):
        found: dict[str, Any] = client.get(f"/api/projects/{ref}")
        return found
    return _pick(client.get("/api/projects"), ref, "project")
