"""The gateway's download stream (temps_api.backup_download): plain bytes out of a stored
artifact, in bounded chunks; a SHA-256 that is not the manifest's or bytes that do not decrypt
end the stream with an error; a client that leaves stops the reading thread."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
from typing import BinaryIO

import pyrage
import pytest
from temps_api import backup_download
from temps_api.backup_download import ArtifactDamaged, stream_artifact
from temps_shared.backups.codec import encode
from temps_shared.backups.identity import backup_identity

IDENTITY = backup_identity(b"k" * 32)
RECIPIENT = str(pyrage.x25519.Identity.from_str(IDENTITY).to_public())


class FakeStore:
    def __init__(self, stored: bytes) -> None:
        self.stored = stored
        self.closed = threading.Event()

    def open_object(self, key: str) -> BinaryIO:
        store = self

        class Body(io.BytesIO):
            def close(self) -> None:
                store.closed.set()
                super().close()

        return Body(self.stored)


def _stored(plain: bytes) -> tuple[bytes, str]:
    out = io.BytesIO()
    encoded = encode(iter([plain[i : i + 65536] for i in range(0, len(plain), 65536)]),
                     RECIPIENT, out)  # fmt: skip
    return out.getvalue(), encoded.sha256


async def _collect(store: FakeStore, sha256: str) -> bytes:
    chunks = [c async for c in stream_artifact(store, "k", sha256, IDENTITY)]  # type: ignore[arg-type]
    assert all(len(c) <= backup_download.CHUNK for c in chunks)
    return b"".join(chunks)


def test_the_plain_bytes_come_out() -> None:
    plain = os.urandom(3 * 1024 * 1024) + b"tail"
    stored, sha256 = _stored(plain)
    assert asyncio.run(_collect(FakeStore(stored), sha256)) == plain


def test_a_sha256_that_is_not_the_manifests_fails_at_the_end() -> None:
    plain = os.urandom(600_000)
    stored, _ = _stored(plain)
    with pytest.raises(ArtifactDamaged, match="SHA-256"):
        asyncio.run(_collect(FakeStore(stored), hashlib.sha256(b"other").hexdigest()))


def test_a_flipped_byte_or_another_key_fails() -> None:
    plain = os.urandom(600_000)
    stored, sha256 = _stored(plain)
    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(ArtifactDamaged):
        asyncio.run(_collect(FakeStore(bytes(flipped)), hashlib.sha256(flipped).hexdigest()))
    other = backup_identity(b"x" * 32)

    async def with_other_key() -> None:
        async for _ in stream_artifact(FakeStore(stored), "k", sha256, other):  # type: ignore[arg-type]
            pass

    with pytest.raises(ArtifactDamaged):
        asyncio.run(with_other_key())


def test_a_client_that_leaves_stops_the_reader() -> None:
    plain = os.urandom(8 * 1024 * 1024)  # more than the queue holds
    stored, sha256 = _stored(plain)
    store = FakeStore(stored)

    async def leave_early() -> None:
        stream = stream_artifact(store, "k", sha256, IDENTITY)  # type: ignore[arg-type]
        await anext(stream)
        await stream.aclose()

    asyncio.run(leave_early())
    assert store.closed.wait(10), "the reading thread kept going"
