"""Live progress, `temps events` and `temps connect`, pure parts: SSE frames, event lines, which
events a wait shows, the connection string, and the client argv (no password in it)."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temps_cli.client import TempsClient
from temps_cli.connect import in_image, psql_invocation, redis_cli_invocation
from temps_cli.event_stream import Frame, ServiceEvent, StreamEnded, parse_frames, to_item
from temps_cli.events import describe
from temps_cli.progress import connection_string, relevant, wait_for_status
from temps_cli.s3_shell import run_command

SID = "0b6c2b0e-7a43-4a1e-9e3c-1d2f3a4b5c6d"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _step(generation: int | None, at: datetime = NOW) -> ServiceEvent:
    payload: dict[str, Any] = {"step": "started", "member": "primary", "elapsed_ms": 1234}
    if generation is not None:
        payload["generation"] = generation
    return ServiceEvent(7, "ServiceStepCompleted", SID, at, payload)


def test_frames_and_comments_are_parsed_as_the_api_sends_them() -> None:
    lines = [
        ": connected",
        "",
        "id: 7",
        "event: ServiceStepCompleted",
        'data: {"type": "ServiceStepCompleted", "service_id": "s", "occurred_at":'
        ' "2026-01-02T03:04:05+00:00", "payload": {"step": "started"}}',
        "",
        "event: stream_ended",
        'data: {"reason": "token_revoked"}',
        "",
    ]
    frames = list(parse_frames(lines))
    assert frames[0] == Frame(comment="connected")
    assert to_item(frames[0]) is None
    event = to_item(frames[1])
    assert event == ServiceEvent(7, "ServiceStepCompleted", "s", NOW, {"step": "started"})
    ended = to_item(frames[2])
    assert isinstance(ended, StreamEnded)
    assert "token_revoked" in ended.reason


def test_describe_says_what_an_event_means() -> None:
    assert describe(_step(3)) == "primary: started (+1.2s)"
    failed = ServiceEvent(1, "ServiceFailed", SID, NOW, {"reason": "image missing"})
    assert describe(failed) == "failed: image missing"
    verdict = ServiceEvent(
        1, "ServiceStatusChanged", SID, NOW, {"status": "down", "source": "monitor", "reason": "x"}
    )
    assert describe(verdict) == "down (monitor): x"
    assert describe(ServiceEvent(1, "Unknown", SID, NOW, {"a": 1})) == '{"a":1}'


def test_a_wait_shows_its_generations_events_and_recent_ones_without_a_generation() -> None:
    assert relevant(_step(3), 3, NOW)
    assert relevant(_step(4), 3, NOW)
    assert not relevant(_step(2), 3, NOW)  # an earlier change, replayed
    assert relevant(_step(None, NOW), 3, NOW)
    assert not relevant(_step(None, NOW - timedelta(minutes=5)), 3, NOW)


def test_the_connection_string_has_no_secret() -> None:
    info = {"local_host": "127.0.0.1", "local_port": 21001, "username": "u", "database": "d"}
    pg = connection_string({"service_type": "postgres", "connection_info": info})
    assert pg == "postgresql://u@127.0.0.1:21001/d?sslmode=verify-full"
    redis = {"service_type": "redis", "connection_info": {"local_tls_port": 21003}}
    assert connection_string(redis) == "rediss://127.0.0.1:21003"


def test_clients_get_the_password_in_their_environment_only() -> None:
    service = {"connection_info": {"local_host": "127.0.0.1", "local_port": 5, "local_tls_port": 6}}
    creds = {"username": "admin", "password": "s3cret", "database": "app"}
    for build in (psql_invocation, redis_cli_invocation):
        local = build(service, creds, "/tmp/x/ca.pem", "PING")
        docker = in_image(local, "temps/redis:7", "/tmp/x", interactive=False)
        for invocation in (local, docker):
            assert "s3cret" in invocation.secrets.values()
            assert not any("s3cret" in arg for arg in invocation.argv)
        assert "/run/temps-ca/ca.pem" in " ".join(docker.argv)
        assert "--pull" in docker.argv
    assert (
        "sslmode=verify-full sslrootcert=/tmp/x/ca.pem"
        in psql_invocation(service, creds, "/tmp/x/ca.pem", None).argv[1]
    )


def test_the_s3_shell_lists_buckets() -> None:
    class FakeS3:
        def list_buckets(self) -> dict[str, Any]:
            return {"Buckets": [{"Name": "a"}, {"Name": "b"}]}

    out = io.StringIO()
    run_command(FakeS3(), "ls", out)
    assert out.getvalue() == "a\nb\n"


def test_a_wait_prints_the_steps_it_hears_and_ends_on_the_state(capsys: Any) -> None:
    service = {
        "id": SID,
        "name": "db1",
        "service_type": "redis",
        "status": "provisioning",
        "generation": 2,
        "observed_generation": 1,
        "connection_info": {"local_tls_port": 21003},
    }
    at = datetime.now(UTC).isoformat()
    stream = (
        ": connected\n\n"
        f'id: 1\nevent: ServiceStepCompleted\ndata: {{"type": "ServiceStepCompleted",'
        f' "service_id": "{SID}", "occurred_at": "{at}", "payload": {{"generation": 1,'
        ' "step": "old", "elapsed_ms": 1}}\n\n'
        f'id: 2\nevent: ServiceStepCompleted\ndata: {{"type": "ServiceStepCompleted",'
        f' "service_id": "{SID}", "occurred_at": "{at}", "payload": {{"generation": 2,'
        ' "member": "primary", "step": "started", "elapsed_ms": 5}}\n\n'
        f'id: 3\nevent: ServiceProvisioned\ndata: {{"type": "ServiceProvisioned",'
        f' "service_id": "{SID}", "occurred_at": "{at}", "payload": {{"generation": 2,'
        ' "connection_info": {"local_host": "127.0.0.1", "local_port": 21002}}}\n\n'
    )
    polls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        if request.url.path == "/api/events":
            assert request.headers["Last-Event-ID"] == "0"
            return httpx.Response(200, text=stream, headers={"content-type": "text/event-stream"})
        polls += 1
        if polls > 1:  # after the ServiceProvisioned event, not after a 60 s poll
            service.update(status="operational", observed_generation=2)
        return httpx.Response(200, json=service)

    client = TempsClient("http://temps.test", "t", httpx.MockTransport(answer))
    began = time.monotonic()
    result = wait_for_status(client, SID, "operational", 2, timeout_s=30, poll_s=60)
    assert result["status"] == "operational"
    assert time.monotonic() - began < 10  # woken by the event, not by the poll or the timeout
    err = capsys.readouterr().err
    assert "primary: started" in err
    assert "old" not in err
    assert "operational on 127.0.0.1:21002" in err
    assert "— rediss://127.0.0.1:21003" in err
