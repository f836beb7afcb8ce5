"""Downloading a backup's artifacts and checking them before anything uses them: SHA-256
against the manifest, then a full trial decryption and decompression (a restore and a
verification both rely on it)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

import pyrage
import zstandard
from temps_shared.backups import layout
from temps_shared.backups.codec import decode, sha256_of
from temps_shared.backups.protocol import OpenArtifact
from temps_shared.backups.store import BackupStore, StoreError
from temps_shared.bus.consume import TerminalError
from temps_shared.crypto import KeyRing


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


def fetch_and_check(
    identity: str,
    store: BackupStore,
    folder: str,
    artifact: dict[str, Any],
    spool: Path,
    consequence: str = "nothing was restored",
) -> Path:
    """Download one artifact into `spool`; raises `TerminalError` unless its SHA-256 is the
    manifest's and it decrypts (with `identity`) and decompresses to the end."""
    name = str(artifact["name"])
    if "/" in name or name.startswith("."):
        raise TerminalError(f"the manifest names an invalid artifact {name!r}")
    path = spool / name
    with path.open("w+b") as file:
        store.download(folder + name, file)
        file.seek(0)
        digest = sha256_of(file)
        if digest != artifact["sha256"]:
            raise TerminalError(
                f"artifact {name} is damaged: its SHA-256 is {digest}, the manifest says "
                f"{artifact['sha256']}; {consequence}"
            )
        file.seek(0)
        try:
            decode(file, identity, _Discard())
        except (pyrage.DecryptError, zstandard.ZstdError, OSError) as exc:
            # A truncated age stream ends in OSError("decryption error"), not DecryptError.
            raise TerminalError(
                f"artifact {name} cannot be decrypted with this installation's key, or is "
                f"damaged or truncated ({exc}); {consequence}"
            ) from exc
    return path


def opener(paths: dict[str, Path]) -> OpenArtifact:
    """An `OpenArtifact` over artifacts fetched into `paths` (name → file)."""

    @contextlib.contextmanager
    def open_artifact(entry: dict[str, Any]) -> Iterator[BinaryIO]:
        with paths[entry["name"]].open("rb") as file:
            yield file

    return open_artifact


@dataclass(frozen=True)
class CheckedBackup:
    manifest: dict[str, Any]
    artifacts: list[dict[str, Any]]  # the manifest's entries
    open_artifact: OpenArtifact  # each one, downloaded and checked


@contextlib.asynccontextmanager
async def checked_backup(
    identity: str,
    store: BackupStore,
    folder: str,
    work_dir: Path | None,
    consequence: str,
    keyring: KeyRing,
) -> AsyncIterator[CheckedBackup]:
    """The manifest (its seal checked with `keyring`: the SHA-256s it gives are then the
    installation's own) and every artifact of the backup in `folder`, downloaded into a spool
    directory (removed on the way out) and checked, before the caller touches anything.
    Raises `TerminalError` (ending with `consequence`) for a missing or damaged one."""
    try:
        manifest = await asyncio.to_thread(store.get_json, folder + layout.MANIFEST)
    except StoreError as exc:
        raise TerminalError(f"{exc}; {consequence}") from exc
    backup_id = folder.rstrip("/").rsplit("/", 1)[-1]  # the folder ends with the backup id
    try:
        layout.check_seal(manifest, keyring, UUID(backup_id))
    except (layout.ManifestNotSealed, ValueError) as exc:
        raise TerminalError(f"{exc}; {consequence}") from exc
    artifacts: list[dict[str, Any]] = manifest["artifacts"]
    with tempfile.TemporaryDirectory(dir=work_dir) as spool_dir:
        paths = {}
        for artifact in artifacts:
            try:
                paths[artifact["name"]] = await asyncio.to_thread(
                    fetch_and_check, identity, store, folder, artifact, Path(spool_dir),
                    consequence,
                )  # fmt: skip
            except StoreError as exc:
                raise TerminalError(f"{exc}; {consequence}") from exc
        yield CheckedBackup(manifest, artifacts, opener(paths))
