"""Backup destinations without a platform: the PUT body's validation, the check's failures that
need no store (a closed port, a port that never answers), which endpoints name a platform S3
service, and the built-in store's certificate."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from cryptography import x509
from pydantic import ValidationError
from temps_api.routes.backup_destination import DestinationRequest
from temps_shared.backups import destination as dest
from temps_shared.backups.destination import (
    Destination,
    check_destination,
    check_destination_within,
    self_backup_reason,
    services_serving,
)
from temps_shared.backups.store_certificate import ensure_store_certificate, tls_dir
from temps_shared.store.certificate_authority import CA_CERT_FILE, CA_KEY_FILE

SECRET = "s3cr3t-value-never-shown"
VALID = {
    "endpoint": "https://s3.example.com:9000",
    "bucket": "team-backups",
    "access_key_id": "AKIA",
    "secret_access_key": SECRET,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("endpoint", "ftp://s3.example.com"),
        ("endpoint", "s3.example.com"),
        ("endpoint", "https://user:pw@s3.example.com"),
        ("endpoint", "https://s3.example.com/bucket"),
        ("endpoint", "https://s3.example.com?x=1"),
        ("endpoint", "https://s3.example.com:99999"),
        ("bucket", "Upper"),
        ("bucket", "ab"),
        ("bucket", "under_score"),
        ("bucket", "a..b"),
        ("secret_access_key", ""),
        ("ca_pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"),
        ("unknown", "field"),
    ],
)
def test_bad_input_is_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DestinationRequest.model_validate({**VALID, field: value})
    assert field in str(caught.value)
    assert SECRET not in str(caught.value)


def test_defaults_and_a_trailing_slash() -> None:
    request = DestinationRequest.model_validate({**VALID, "endpoint": "http://minio:9000/"})
    built = request.destination()
    assert (built.endpoint, built.region, built.path_style, built.ca_pem) == (
        "http://minio:9000",
        "us-east-1",
        True,
        None,
    )
    assert built.secret_access_key == SECRET
    assert SECRET not in repr(request)
    assert SECRET not in repr(built)


def _destination(endpoint: str) -> Destination:
    return Destination(endpoint=endpoint, bucket="b-1", access_key_id="k", secret_access_key=SECRET)


def test_a_closed_port_fails_the_write_step_at_once() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]  # bound, not listening: refused
        started = time.monotonic()
        failure = check_destination(_destination(f"http://127.0.0.1:{port}"))
    assert failure is not None
    assert failure.step == "write"
    assert failure.error == "could not connect"
    assert SECRET not in failure.error
    assert time.monotonic() - started < 10


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


async def test_a_store_that_never_answers_is_given_up_on_time(silent_port: int) -> None:
    started = time.monotonic()
    failure = await check_destination_within(
        _destination(f"http://127.0.0.1:{silent_port}"), deadline_s=1.5
    )
    assert failure is not None
    assert failure.step == "timeout"
    assert time.monotonic() - started < 3


def test_errors_never_carry_the_secret() -> None:
    assert dest._describe(ValueError(f"bad {SECRET}"), SECRET) == "bad ***"
    assert dest._describe(ValueError(f"key={SECRET}."), SECRET) == "key=***."


def test_a_short_secret_does_not_mangle_the_message() -> None:
    """A secret that is a substring of ordinary words is masked only where it stands alone."""
    text = "Access Denied: a request signed with key a was refused"
    assert dest._describe(ValueError(text), "a") == (
        "Access Denied: *** request signed with key *** was refused"
    )
    assert dest._describe(ValueError("Could not connect"), "on") == "Could not connect"


REMOTE_TEXT = "root:x:0:0 internal-banner-of-the-remote"


@pytest.fixture
def answering(request: pytest.FixtureRequest) -> Iterator[str]:
    """An HTTP server on loopback answering every request with `request.param`: (status, body).
    Stands for any server of the gateway's network that the check could be pointed at."""
    status, body = request.param

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_PUT = do_GET = do_HEAD = do_DELETE = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _s3_error(code: str) -> str:
    return f"<Error><Code>{code}</Code><Message>{REMOTE_TEXT}</Message></Error>"


@pytest.mark.parametrize(
    ("answering", "expected"),
    [
        ((403, _s3_error("AccessDenied")), "access denied (AccessDenied)"),
        ((403, _s3_error("SignatureDoesNotMatch")), "access denied (SignatureDoesNotMatch)"),
        ((500, _s3_error("InternalError")), "the store refused the request (InternalError)"),
        ((400, _s3_error(f"Bad {REMOTE_TEXT}")), "the store refused the request (HTTP 400)"),
        ((404, f"<html>{REMOTE_TEXT}</html>"), "the store refused the request (HTTP 404)"),
    ],
    indirect=["answering"],
)
def test_the_remote_servers_text_is_never_answered_back(
    answering: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The check names a category and the S3 error code at most: pointed at another server of
    the network, it must not read that server's answer back to the caller."""
    with caplog.at_level(logging.WARNING, logger=dest.__name__):
        failure = check_destination(_destination(answering))
    assert failure is not None
    assert (failure.step, failure.error) == ("write", expected)
    assert REMOTE_TEXT not in failure.error
    assert "internal-banner" not in repr(failure)
    # The detail is logged for the operator, without the secret.
    assert any(answering in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


class FakeConn:
    """The rows `platform_s3_services` reads."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        assert "service_type = 's3'" in sql
        return self.rows


S3_ID, OTHER_ID = uuid4(), uuid4()
ROWS = [
    {"id": S3_ID, "name": "files", "local_port": 21001},
    {"id": OTHER_ID, "name": "media", "local_port": None},
]


@pytest.mark.parametrize(
    ("endpoint", "served"),
    [
        ("https://temps-s3-files:8443", [S3_ID]),
        ("https://TEMPS-S3-FILES.:8443/", [S3_ID]),
        ("https://temps-s3-media:8443", [OTHER_ID]),
        ("https://127.0.0.1:21001", [S3_ID]),
        ("https://localhost:21001", [S3_ID]),
        ("https://[::1]:21001", [S3_ID]),
        ("https://temps-s3-files:9000", []),  # another port of that name: not the service
        ("https://127.0.0.1:21002", []),
        ("https://s3.example.com:21001", []),  # does not resolve to loopback
        ("https://backup-store:8333", []),
    ],
)
async def test_which_endpoints_are_a_platform_service(endpoint: str, served: list[UUID]) -> None:
    found = await services_serving(FakeConn(ROWS), endpoint)  # type: ignore[arg-type]
    assert [s.service_id for s in found] == served


async def test_a_service_never_backs_up_into_itself() -> None:
    conn = FakeConn(ROWS)
    into_files = _destination("https://127.0.0.1:21001")
    reason = await self_backup_reason(conn, into_files, S3_ID)  # type: ignore[arg-type]
    assert reason is not None
    assert "files" in reason
    assert "itself" in reason
    # Another service may back up there (the API refuses such a destination anyway).
    assert await self_backup_reason(conn, into_files, OTHER_ID) is None  # type: ignore[arg-type]


def _sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in sans.get_values_for_type(x509.IPAddress)
    }


def test_the_store_certificate_is_issued_once_and_renewed_for_a_new_ca(tmp_path: Path) -> None:
    assert ensure_store_certificate(tmp_path) is True
    cert = tls_dir(tmp_path) / "server.pem"
    assert _sans(cert) == ({"backup-store", "localhost"}, {"127.0.0.1"})
    # Readable by the store's unprivileged user through the bind mount.
    assert (tls_dir(tmp_path) / "server.key").stat().st_mode & 0o777 == 0o644
    first = cert.read_bytes()
    assert ensure_store_certificate(tmp_path) is False
    assert cert.read_bytes() == first
    (tmp_path / CA_CERT_FILE).unlink()
    (tmp_path / CA_KEY_FILE).unlink()
    assert ensure_store_certificate(tmp_path) is True  # another CA: a new certificate
    assert cert.read_bytes() != first
    assert cert.read_text().endswith((tmp_path / CA_CERT_FILE).read_text())
