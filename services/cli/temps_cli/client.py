"""The one HTTP client of the CLI: configuration from the environment, timeouts, and the mapping
of failures to one readable line and an exit code."""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8080"
# Reads answer in milliseconds; a slow answer is a platform problem worth saying so.
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class ExitCode(IntEnum):
    """What `temps` exits with (docs/cli.md); `temps run` exits with its command's code."""

    OK = 0
    PLATFORM = 1  # the API is unreachable or failed (5xx), a service failed while waited for
    INPUT = 2  # usage error, or the API refused the input (400, 422, other 4xx)
    NOT_FOUND = 3  # no such service / project / environment / link (404, unknown name)
    DENIED = 4  # no token, unknown token (401), missing permission (403)
    CONFLICT = 5  # the state forbids it: duplicate name, delete while linked, second link (409)
    TIMEOUT = 6  # --wait gave up before the state was reached


class CliError(Exception):
    """A failure to report in one line on stderr, ending the command with `exit_code`."""

    def __init__(self, message: str, exit_code: int = ExitCode.PLATFORM) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, whatever the server sent
        self.exit_code = exit_code


def exit_code_for(status: int) -> ExitCode:
    if status in (401, 403):
        return ExitCode.DENIED
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 409:
        return ExitCode.CONFLICT
    if 400 <= status < 500:
        return ExitCode.INPUT
    return ExitCode.PLATFORM


class ApiProblem(CliError):
    """The API answered an error (`status` 0: it could not be reached); `message` is the API's
    own, which says what to change."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message, exit_code_for(status))
        self.status = status
        self.code = code


def _token() -> str:
    if token := os.environ.get("TEMPS_TOKEN"):
        return token
    data_dir = Path(os.environ.get("TEMPS_DATA_DIR") or Path.home() / ".temps")
    path = data_dir / "admin_token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise CliError(
            f"no API token: set TEMPS_TOKEN, or TEMPS_DATA_DIR to where `make up` wrote "
            f"admin_token (tried {path}: {exc.strerror or exc})",
            ExitCode.DENIED,
        ) from exc


def _problem(response: httpx.Response) -> ApiProblem:
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error.get("code") or "")
    except (ValueError, KeyError, TypeError):
        message, code = (response.text.strip() or response.reason_phrase), ""
    if response.status_code >= 500:
        message = f"the Temps API failed (HTTP {response.status_code}): {message}"
    return ApiProblem(response.status_code, message, code)


class TempsClient:
    """`TEMPS_API_URL` (default http://127.0.0.1:8080) with the token of `TEMPS_TOKEN` or
    `$TEMPS_DATA_DIR/admin_token`; `transport` lets unit tests answer without a server."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.base_url = base_url or os.environ.get("TEMPS_API_URL") or DEFAULT_API_URL
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token or _token()}", "User-Agent": "temps-cli"},
            timeout=timeout,
            transport=transport,
        )

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TimeoutException as exc:
            raise ApiProblem(0, f"the Temps API at {self.base_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ApiProblem(
                0, f"cannot reach the Temps API at {self.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            raise _problem(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiProblem(0, f"{method} {path}: the answer is not JSON") from exc

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def patch(self, path: str, json: Any = None) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.request("DELETE", path, params=params)

    def close(self) -> None:
        self._http.close()
