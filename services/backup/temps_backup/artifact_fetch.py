"""Downloading a backup's artifacts and checking them before anything uses them: SHA-256
against the manifest, then a full trial decryption and decompression (a restore and a
verification both rely on it)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
import zstandard
from temps_shared.backups.codec import decode, sha256_of
from temps_shared.backups.store import BackupStore
from temps_shared.bus.consume import TerminalError


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
        except (pyrage.DecryptError, zstandard.ZstdError) as exc:
            raise TerminalError(
                f"artifact {name} cannot be decrypted with this installation's key ({exc}); "
                f"{consequence}"
            ) from exc
    return path


def opener(paths: dict[str, Path]) -> Any:
    """An `OpenArtifact` over artifacts fetched into `paths` (name → file)."""

    @contextlib.contextmanager
    def open_artifact(entry: dict[str, Any]) -> Iterator[BinaryIO]:
        with paths[entry["name"]].open("rb") as file:
            yield file

    return open_artifact
