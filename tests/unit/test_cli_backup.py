"""`temps backup …` against a fake API (httpx.MockTransport): create follows the backup to its
end, restore in place or as a new service, download streams to a file; restore-service has the
spec's flags and refuses a malformed key before touching anything."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from temps_cli.client import ExitCode, TempsClient
from temps_cli.main import app
from typer.testing import CliRunner, Result

SID = "0b6c2b0e-7a43-4a1e-9e3c-1d2f3a4b5c6d"
BID = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
RID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
NEW = "9f8e7d6c-5b4a-4c3d-8e1f-0a9b8c7d6e5f"
BACKUPS = f"/api/external-services/{SID}/backups"


class FakeApi:
    def __init__(self, outcome: str = "completed") -> None:
        self.requests: list[httpx.Request] = []
        self.outcome = outcome
        self.polls = 0

    def _entry(self, state: str, restore: str | None = None) -> dict[str, Any]:
        return {
            "id": BID,
            "service_id": SID,
            "state": state,
            "bytes_done": 1000 * self.polls,
            "size_bytes": 4096 if state == "completed" else None,
            "reason": "pg_dump failed: disk full" if state == "failed" else None,
            "restore": None if restore is None else {"id": RID, "state": restore, "reason": None},
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if method == "GET" and path == "/api/external-services":
            return httpx.Response(200, json=[{"id": SID, "name": "db1"}])
        if method == "POST" and path == BACKUPS:
            return httpx.Response(202, json=self._entry("requested"))
        if method == "POST" and path == f"{BACKUPS}/{BID}/restore":
            body = json.loads(request.content) if request.content else None
            answer = self._entry("completed", "requested")
            if body:
                answer["new_service"] = {"id": NEW, "name": body["as_new_service"]}
            return httpx.Response(202, json=answer)
        if method == "GET" and path == f"{BACKUPS}/{BID}":
            self.polls += 1
            if self.polls < 3:
                return httpx.Response(200, json=self._entry("running", "requested"))
            if self.outcome == "failed":
                return httpx.Response(200, json=self._entry("failed", "failed"))
            return httpx.Response(200, json=self._entry("completed", "completed"))
        if method == "GET" and path == f"{BACKUPS}/{BID}/download":
            if request.url.params.get("artifact") == "nope":
                return httpx.Response(
                    404, json={"error": {"code": "not_found", "message": "no artifact 'nope'"}}
                )
            return httpx.Response(
                200,
                content=b"PGDMP" + b"x" * 100_000,
                headers={"Content-Disposition": 'attachment; filename="db1-20250101-db.dump"'},
            )
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})


def temps(fake: FakeApi, *args: str, **env: str) -> Result:
    client = TempsClient(
        base_url="http://temps.test", token="t0ken", transport=httpx.MockTransport(fake)
    )
    return CliRunner().invoke(app, list(args), obj=client, env=env or None)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("temps_cli.backups.POLL_S", 0.01)


def test_create_follows_the_backup_until_it_completed() -> None:
    fake = FakeApi()
    result = temps(fake, "backup", "create", "db1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == BID
    assert fake.polls == 3
    assert [r.method for r in fake.requests].count("POST") == 1


def test_a_failed_backup_exits_1_with_its_reason() -> None:
    result = temps(FakeApi("failed"), "backup", "create", "db1")
    assert result.exit_code == ExitCode.PLATFORM
    assert "disk full" in result.output


def test_restore_in_place_sends_no_body_and_waits() -> None:
    fake = FakeApi()
    result = temps(fake, "backup", "restore", "db1", BID)
    assert result.exit_code == 0, result.output
    (post,) = [r for r in fake.requests if r.method == "POST"]
    assert post.content == b""
    assert "completed" in result.output


def test_restore_as_new_names_the_new_service() -> None:
    fake = FakeApi()
    result = temps(fake, "backup", "restore", "db1", BID, "--as-new", "copy", "--no-wait")
    assert result.exit_code == 0, result.output
    (post,) = [r for r in fake.requests if r.method == "POST"]
    assert json.loads(post.content) == {"as_new_service": "copy"}
    assert NEW in result.output
    assert result.stdout.strip().endswith(RID)


def test_a_failed_restore_exits_1() -> None:
    result = temps(FakeApi("failed"), "backup", "restore", "db1", BID)
    assert result.exit_code == ExitCode.PLATFORM


def test_download_streams_to_the_file_the_api_names(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    result = temps(FakeApi(), "backup", "download", "db1", BID)
    assert result.exit_code == 0, result.output
    written = tmp_path / "db1-20250101-db.dump"
    assert written.read_bytes()[:5] == b"PGDMP"
    assert written.stat().st_size == 100_005
    assert not list(tmp_path.glob(".*.part"))


def test_download_of_an_unknown_artifact_exits_3_and_writes_nothing(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    result = temps(FakeApi(), "backup", "download", "db1", BID, "--artifact", "nope")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "no artifact" in result.output
    assert list(tmp_path.iterdir()) == []


def test_restore_service_has_the_specs_flags() -> None:
    result = CliRunner().invoke(
        app, ["backup", "restore-service", "--help"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    flags = ("--bucket-name", "--endpoint", "--access-key-id", "--secret-access-key",
             "--database-url", "--backup-id", "--service-name", "--encryption-key")  # fmt: skip
    for flag in flags:
        assert flag in text
    assert "TEMPS_DATABASE_URL" in text
    assert "TEMPS_ENCRYPTION_KEY" in text


def test_restore_service_refuses_a_malformed_key_before_anything() -> None:
    result = CliRunner().invoke(
        app,
        [
            "backup",
            "restore-service",
            "--bucket-name",
            "b",
            "--endpoint",
            "http://127.0.0.1:9",
            "--access-key-id",
            "a",
            "--secret-access-key",
            "s",
            "--backup-id",
            BID,
            "--service-name",
            "db1",
        ],
        env={"TEMPS_DATABASE_URL": "postgresql://nowhere/x", "TEMPS_ENCRYPTION_KEY": "abc"},
    )
    assert result.exit_code == ExitCode.INPUT
    assert "64 hex" in result.output
