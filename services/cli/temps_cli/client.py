"""A small HTTP client for the Temps API, configured from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx


class ApiProblem(Exception):
    """The API answered an error: `message` is what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _token() -> str:
    if token := os.environ.get("TEMPS_TOKEN"):
        return token
    data_dir = Path(os.environ.get("TEMPS_DATA_DIR", Path.home() / ".temps"))
    path = data_dir / "admin_token"
    if not path.exists():
        raise ApiProblem(0, f"no API token: set TEMPS_TOKEN or run `make up` (creates {path})")
    return path.read_text().strip()


class TempsClient:
    def __init__(self, base_url: str | None = None, token: str | None = None) -> None:
        self._http = httpx.Client(
            base_url=base_url or os.environ.get("TEMPS_API_URL", "http://127.0.0.1:8080"),
            headers={"Authorization": f"Bearer {token or _token()}"},
            timeout=30,
        )

    def request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ApiProblem(0, f"cannot reach the Temps API: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text or response.reason_phrase
            raise ApiProblem(response.status_code, message)
        return response.json() if response.content else None
