"""Bounds on a backup (review of issue 11): every command in the service container is killed
at the backup's deadline, pg_dump waits for locks a bounded time, and a backup that ran past
its deadline writes no manifest (the catalogue calls it failed: the bucket must agree)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from temps_backup import run_backup
from temps_backup.deadline import overdue_reason
from temps_backup.service_target import Target
from temps_shared.backups.postgres import lock_wait_option
from temps_shared.bus.consume import TerminalError
from temps_shared.messages import RunBackup, utcnow
from temps_shared.runtime.container_io import ExecFailed, exec_output


class FakeApi:
    """The Docker API calls `exec_output` makes; the command "exits" with `code`."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.argv: list[str] = []

    def exec_create(self, container: str, argv: list[str], **_: Any) -> dict[str, str]:
        self.argv = argv
        return {"Id": "exec-1"}

    def exec_start(self, exec_id: str, **_: Any) -> Iterator[tuple[bytes | None, bytes | None]]:
        yield b"data", None

    def exec_inspect(self, exec_id: str) -> dict[str, int]:
        return {"ExitCode": self.code}


def _run(code: int, timeout_s: float | None) -> tuple[FakeApi, list[bytes]]:
    api = FakeApi(code)
    client: Any = SimpleNamespace(api=api)
    out = list(exec_output(client, "c", ["pg_dump", "-Fc"], {}, timeout_s))
    return api, out


def test_an_unbounded_command_runs_as_given() -> None:
    api, out = _run(0, None)
    assert api.argv == ["pg_dump", "-Fc"]
    assert out == [b"data"]


def test_a_bounded_command_runs_under_timeout_inside_the_container() -> None:
    api, _ = _run(0, 90.2)
    assert api.argv == ["timeout", "--kill-after=10", "91s", "pg_dump", "-Fc"]


@pytest.mark.parametrize("code", [124, 137])
def test_a_killed_command_is_named_as_too_slow(code: int) -> None:
    with pytest.raises(ExecFailed, match="pg_dump did not finish within 5 s"):
        _run(code, 5)


def test_the_lock_wait_is_bounded_by_the_time_left() -> None:
    assert lock_wait_option(3600) == "--lock-wait-timeout=300000"
    assert lock_wait_option(12.5) == "--lock-wait-timeout=12500"
    assert lock_wait_option(0.01) == "--lock-wait-timeout=1000"


def test_the_deadline_check_gives_the_time_left_then_fails() -> None:
    left = run_backup.check_deadline(utcnow() - timedelta(seconds=100), 3600)
    assert 3490 < left <= 3500
    with pytest.raises(TerminalError, match="did not finish within 1 h"):
        run_backup.check_deadline(utcnow() - timedelta(seconds=3601), 3600)
    assert overdue_reason(3600) == "the backup did not finish within 1 h"


async def test_a_backup_finished_after_its_deadline_writes_no_manifest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deadline_s = 60.0
    written: list[str] = []
    events: list[Any] = []
    bounds: list[float] = []
    store = SimpleNamespace(destination=None, put_json=lambda key, doc: written.append(key))
    backup = SimpleNamespace(state="requested", requested_at=utcnow() - timedelta(seconds=59.7))
    target = Target(
        service=SimpleNamespace(service_type="redis", name="db"),  # type: ignore[arg-type]
        backup=backup,  # type: ignore[arg-type]
        engine=None,  # type: ignore[arg-type]
        handle=SimpleNamespace(timeout_s=3600.0, container="c"),  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
    )

    async def resolve(*_: Any) -> Any:
        return target

    async def no_reason(*_: Any) -> None:
        return None

    @contextlib.asynccontextmanager
    async def no_lock(*_: Any, **__: Any) -> AsyncIterator[None]:
        yield

    async def publish(_js: Any, event: Any, **__: Any) -> None:
        events.append(event)

    async def slow_take(_w: Any, bounded: Any, *_: Any) -> tuple[list[Any], dict[str, Any]]:
        bounds.append(bounded.handle.timeout_s)
        await asyncio.sleep(0.5)  # past the deadline meanwhile
        return [], {}

    def replace_handle(obj: Any, **changes: Any) -> Any:
        return SimpleNamespace(**{**vars(obj), **changes})

    monkeypatch.setattr(run_backup, "resolve", resolve)
    monkeypatch.setattr(run_backup, "self_backup_reason", no_reason)
    monkeypatch.setattr(run_backup, "service_lock", no_lock)
    monkeypatch.setattr(run_backup, "publish_event", publish)
    monkeypatch.setattr(run_backup, "_take", slow_take)
    monkeypatch.setattr(run_backup, "replace", replace_handle)
    monkeypatch.setattr(
        run_backup,
        "layout",
        SimpleNamespace(
            backup_folder=lambda *_: "f/", manifest=lambda **_: {"size_bytes": 0}, MANIFEST="m"
        ),
    )
    w: Any = SimpleNamespace(
        settings=SimpleNamespace(backup_deadline_s=deadline_s, backup_lock_wait_s=0,
                                 backup_progress_s=10),
        pool=None, js=None, store=store, keyring=None, recipient=None,
    )  # fmt: skip
    command = RunBackup(service_id=uuid4(), backup_id=uuid4())
    with pytest.raises(TerminalError, match="did not finish within 1 min"):
        await run_backup.handle_run_backup(w, command)
    assert written == []
    assert [type(e).__name__ for e in events] == ["BackupStarted"]
    assert 0 < bounds[0] < 0.5  # the commands were bounded by the time left
