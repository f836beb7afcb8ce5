"""Shell completion of service and project names, asked of the API's lists.

A completion runs on every Tab: it must answer fast and never print an error into the user's
prompt, so any failure (no token, no API, a slow one) completes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import typer

from temps_cli.client import TempsClient

# A Tab should not hang: a missing API is refused at once, a stuck one is given up quickly.
COMPLETION_TIMEOUT = httpx.Timeout(2.0, connect=0.5)


def _names(ctx: typer.Context, path: str, incomplete: str) -> list[str]:
    try:
        # Unit tests hand their client in as `obj`; a shell's Tab makes one from the environment.
        client = ctx.obj if isinstance(ctx.obj, TempsClient) else None
        client = client or TempsClient(timeout=COMPLETION_TIMEOUT)
        items: list[dict[str, Any]] = client.get(path)
        names = sorted({str(item.get("name") or "") for item in items})
    except Exception:  # a completion must fail silently, whatever went wrong
        return []
    return [name for name in names if name and name.startswith(incomplete)]


def _completer(path: str) -> Callable[[typer.Context, str], list[str]]:
    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        return _names(ctx, path, incomplete)

    return complete


service_names = _completer("/api/external-services")
project_names = _completer("/api/projects")
