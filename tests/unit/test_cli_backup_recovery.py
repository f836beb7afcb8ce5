"""`temps backup list` / `restore-service` read the bucket directly: an endpoint that does not
answer is an error message (exit 4), never a traceback; one unreadable manifest is skipped with
a warning, the others listed; `--region`, `--path-style` and `--ca-file` reach the S3 client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temps_cli import backup_recovery
from temps_cli.client import ExitCode
from temps_cli.main import app
from temps_shared.backups.catalog import StoredBackup, list_stored
from temps_shared.backups.store import StoreError
from typer.testing import CliRunner

BID = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
BUCKET = ["--bucket-name", "b", "--access-key-id", "a", "--secret-access-key", "s"]
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _manifest(backup_id: str, finished_at: str) -> dict[str, Any]:
    return {"backup_id": backup_id, "engine": "redis", "service_name": "cache",
            "finished_at": finished_at, "artifacts": [{"name": "dump.rdb.zst.age"}]}  # fmt: skip


class FakeStore:
    destination = type("D", (), {"endpoint": "https://s3.test"})()
    bucket = "b"

    def __init__(self, documents: dict[str, Any]) -> None:
        self.documents = documents

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.documents)

    def get_json(self, key: str) -> dict[str, Any]:
        document = self.documents[key]
        if isinstance(document, Exception):
            raise document
        return dict(document)


def test_an_unreadable_manifest_is_skipped_and_named() -> None:
    good = "external_services/redis/cache/2026/01/02/" + BID + "/manifest.json"
    other = "external_services/redis/cache/2026/01/01/" + "0" * 8 + BID[8:] + "/manifest.json"
    documents: dict[str, Any] = {
        good: _manifest(BID, "2026-01-02T00:00:00+00:00"),
        "external_services/redis/cache/2026/01/03/x/manifest.json": ValueError("not JSON"),
        "external_services/redis/cache/2026/01/04/y/manifest.json": StoreError("access denied"),
        "external_services/redis/cache/2026/01/05/z/manifest.json": {"engine": "redis"},
        other: _manifest("0" * 8 + BID[8:], "2026-01-01T00:00:00+00:00"),
    }
    skipped: list[str] = []
    found = list_stored(FakeStore(documents), lambda key, exc: skipped.append(key))  # type: ignore[arg-type]
    assert [b.folder for b in found] == [good.removesuffix("manifest.json"),
                                         other.removesuffix("manifest.json")]  # fmt: skip
    assert [k.split("/")[5] for k in skipped] == ["03", "04", "05"]


def test_an_endpoint_that_does_not_answer_is_an_error_not_a_traceback() -> None:
    # Nothing listens on port 9: botocore's EndpointConnectionError (a BotoCoreError).
    result = CliRunner().invoke(
        app, ["backup", "list", *BUCKET, "--endpoint", "http://127.0.0.1:9"]
    )
    assert result.exit_code == ExitCode.PLATFORM, result.output
    assert "Traceback" not in result.output
    assert "127.0.0.1:9" in result.output


def test_a_malformed_endpoint_is_an_input_error() -> None:
    result = CliRunner().invoke(app, ["backup", "list", *BUCKET, "--endpoint", "no-scheme"])
    assert result.exit_code == ExitCode.INPUT, result.output
    assert "--endpoint" in result.output


def test_region_path_style_and_ca_file_reach_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[backup_recovery.Bucket] = []

    def stored_backups(bucket: backup_recovery.Bucket, unreadable: Any = None) -> list[Any]:
        seen.append(bucket)
        unreadable("external_services/x/manifest.json", ValueError("damaged"))
        return [StoredBackup("f/", _manifest(BID, "2026-01-02T00:00:00+00:00"))]

    monkeypatch.setattr(backup_recovery, "stored_backups", stored_backups)
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    args = ["backup", "list", *BUCKET, "--endpoint", "https://s3.test", "--json"]
    result = CliRunner().invoke(
        app, [*args, "--region", "eu-west-3", "--virtual-hosted-style", "--ca-file", str(ca)]
    )
    assert result.exit_code == 0, result.output
    destination = seen[0].destination()
    assert (destination.region, destination.path_style, destination.ca_pem) == (
        "eu-west-3", False, PEM)  # fmt: skip
    assert "skipped external_services/x/manifest.json" in result.stderr
    assert json.loads(result.stdout)[0]["id"] == BID
    # The defaults: the spec's flags alone still work as before.
    CliRunner().invoke(app, args)
    assert (seen[1].region, seen[1].path_style, seen[1].ca_pem) == ("us-east-1", True, None)


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("hello")
    args = ["backup", "list", *BUCKET, "--endpoint", "https://s3.test", "--ca-file", str(junk)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ExitCode.INPUT
    assert "no PEM certificate" in result.output
