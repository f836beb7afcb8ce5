"""One artifact's bytes on their way to and from the store: compressed (zstd), then encrypted
(age, to the installation's backup recipient), hashed as stored — all streamed, so memory stays
flat whatever the size."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, Protocol, cast

import pyrage
import zstandard

ZSTD_LEVEL = 3
CHUNK = 1024 * 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class IteratorReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through to `sink`."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._sink.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


@dataclass(frozen=True)
class EncodedSize:
    size: int  # bytes stored
    sha256: str


def encode(chunks: Iterator[bytes], recipient: str, sink: Sink) -> EncodedSize:
    """Compress and encrypt `chunks` into `sink`; the stored size and SHA-256."""
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(
        io.BufferedReader(IteratorReader(chunks), CHUNK)
    )
    hashing = HashingWriter(sink)
    pyrage.encrypt_io(compressed, hashing, [pyrage.x25519.Recipient.from_str(recipient)])
    return EncodedSize(hashing.size, hashing.sha256.hexdigest())


def decode(stored: BinaryIO, identity: str, sink: Sink) -> None:
    """Decrypt and decompress `stored` into `sink` (`closefd=False`: the caller closes it).

    Raises `pyrage.DecryptError` for a wrong key or damaged bytes."""
    with zstandard.ZstdDecompressor().stream_writer(cast(IO[bytes], sink), closefd=False) as plain:
        pyrage.decrypt_io(stored, plain, [pyrage.x25519.Identity.from_str(identity)])


def sha256_of(stored: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := stored.read(CHUNK):
        digest.update(block)
    return digest.hexdigest()
