"""The backup store for tests: SeaweedFS (`weed mini` from the venv) on loopback only, every
port chosen free (other suites run at the same time), telemetry off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from temps_backup.main import serve as serve_backup
from temps_backup.settings import BackupSettings

from tests.support import free_port

READY_WAIT_S = 60.0


@dataclass(frozen=True)
class SeaweedStore:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


@contextmanager
def seaweedfs_store(directory: Path) -> Iterator[SeaweedStore]:
    access_key, secret_key = "temps-backup", secrets.token_hex(16)
    config = directory / "identities.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "backup",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (directory / "data").mkdir()
    s3_port = free_port()
    ports = {
        f"-{flag}": str(free_port())
        for flag in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
            "debug.port", "s3.debug.port", "webdav.port",
        )
    }  # fmt: skip
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    argv = [
        weed, "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        f"-s3.config={config}", f"-s3.port={s3_port}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    log = (directory / "weed.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    store = SeaweedStore(f"http://127.0.0.1:{s3_port}", access_key, secret_key)
    try:
        _wait_ready(store, process, directory)
        yield store
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def _wait_ready(store: SeaweedStore, process: subprocess.Popen[bytes], directory: Path) -> None:
    s3 = store.client()
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        if process.poll() is not None:
            raise AssertionError(f"weed exited: {(directory / 'weed.log').read_text()[-2000:]}")
        try:
            s3.list_buckets()
            return
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def backup_settings(env: dict[str, str], store: SeaweedStore, **overrides: Any) -> BackupSettings:
    """A backup worker's settings: the platform's `TEMPS_*` env, `store` as its built-in store,
    progress twice a second, then `overrides`."""
    values: dict[str, Any] = {k.removeprefix("TEMPS_").lower(): v for k, v in env.items()}
    values.update(
        backup_store_endpoint=store.endpoint,
        backup_store_access_key=store.access_key,
        backup_store_secret_key=store.secret_key,
        backup_progress_s=0.5,
    )
    return BackupSettings(**{**values, **overrides})


@asynccontextmanager
async def running_backup_worker(settings: BackupSettings) -> AsyncIterator[None]:
    """A backup worker in this event loop, drained (bounded) on the way out."""
    stop = asyncio.Event()
    worker = asyncio.create_task(serve_backup(settings, stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, 30)


@asynccontextmanager
async def store_with_worker(
    env: dict[str, str], directory: Path, **overrides: Any
) -> AsyncIterator[tuple[SeaweedStore, BackupSettings]]:
    """A SeaweedFS backup store and a backup worker using it."""
    with seaweedfs_store(directory) as store:
        settings = backup_settings(env, store, **overrides)
        async with running_backup_worker(settings):
            yield store, settings
