"""A backup artifact streamed to a client decrypted and decompressed, in constant memory: the
store's GetObject body → SHA-256 (checked at the end against the manifest) → age decryption
→ zstd decompression, in a worker thread that hands chunks over a bounded queue. A damaged
artifact ends the response with an error (the connection is closed mid-body) rather than a
silently short file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from temps_shared.backups.codec import decode
from temps_shared.backups.store import BackupStore

log = logging.getLogger(__name__)
CHUNK = 256 * 1024  # bytes handed over at a time
QUEUE_CHUNKS = 8  # the stream's memory: about this many chunks
_END = object()


class ArtifactDamaged(Exception):
    """The stored bytes are not the manifest's, or do not decrypt; the response is aborted."""


class _HashingReader(io.RawIOBase):
    """Reads `body`, hashing what passes."""

    def __init__(self, body: BinaryIO) -> None:
        self._body = body
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._body.read(len(buffer))
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


class _Cancelled(Exception):
    pass


class _QueueSink:
    """Collects decompressed bytes into CHUNK-sized pieces for the queue; stops (raises) once
    the client went away."""

    def __init__(self, handoff: queue.Queue[Any], cancelled: threading.Event) -> None:
        self._handoff = handoff
        self._cancelled = cancelled
        self._pending = bytearray()

    def _put(self, item: Any) -> None:
        while True:
            if self._cancelled.is_set():
                raise _Cancelled
            try:
                self._handoff.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def write(self, data: bytes, /) -> int:
        self._pending += data
        while len(self._pending) >= CHUNK:
            self._put(bytes(self._pending[:CHUNK]))
            del self._pending[:CHUNK]
        return len(data)

    def flush(self) -> None:
        if self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()

    def finish(self, outcome: Any) -> None:
        self._put(outcome)


def _produce(
    store: BackupStore,
    key: str,
    sha256: str,
    identity: str,
    sink: _QueueSink,
) -> None:
    try:
        body = store.open_object(key)
        try:
            reader = _HashingReader(body)
            decode(io.BufferedReader(reader, CHUNK), identity, sink)
            while reader.read(CHUNK):  # age may stop before the last byte: hash all of it
                pass
        finally:
            body.close()
        sink.flush()
        digest = reader.sha256.hexdigest()
        if digest != sha256:
            sink.finish(ArtifactDamaged(f"{key}: SHA-256 {digest}, the manifest says {sha256}"))
            return
        sink.finish(_END)
    except _Cancelled:
        return
    except Exception as exc:
        log.warning("download of %s failed: %s", key, exc)
        with contextlib.suppress(_Cancelled):
            sink.finish(ArtifactDamaged(f"{key}: {exc}"))


async def stream_artifact(
    store: BackupStore, key: str, sha256: str, identity: str
) -> AsyncIterator[bytes]:
    """The plain bytes of the artifact at `key`; raises `ArtifactDamaged` at the end when its
    SHA-256 is not `sha256` (or mid-way when it does not decrypt)."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_CHUNKS)
    cancelled = threading.Event()
    sink = _QueueSink(handoff, cancelled)
    producer = threading.Thread(
        target=_produce, args=(store, key, sha256, identity, sink), name=f"download {key}",
        daemon=True,
    )  # fmt: skip
    producer.start()
    try:
        while True:
            item = await asyncio.to_thread(handoff.get)
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        cancelled.set()
        # A getter still blocked (the client left mid-wait) is woken by this.
        with contextlib.suppress(queue.Full):
            handoff.put_nowait(_END)
