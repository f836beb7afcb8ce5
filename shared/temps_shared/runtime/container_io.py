"""Bytes into and out of a service container in constant memory: the output of a command run
inside it (`docker exec`) read as it is produced, a command's stdin fed as it is decrypted, a
file streamed into a stopped container. Blocking (the Docker SDK is): call from a worker
thread."""

from __future__ import annotations

import math
import socket
import tarfile
import threading
from collections.abc import Iterable, Iterator
from typing import Any, cast

import docker
from docker.utils.socket import frames_iter

_STDOUT, _STDERR = 1, 2
_KEEP = 64 * 1024  # the tail of a command's diagnostics kept for its error message


class ExecFailed(Exception):
    """The command exited non-zero; the message carries its exit code and stderr tail."""


def _tail(buffer: bytearray, data: bytes) -> None:
    buffer += data
    del buffer[:-_KEEP]


def _check(
    client: docker.DockerClient,
    exec_id: str,
    argv: list[str],
    stderr: bytes,
    timeout_s: float | None = None,
) -> None:
    code = client.api.exec_inspect(exec_id).get("ExitCode")
    if timeout_s is not None and code in TIMED_OUT:
        raise ExecFailed(f"{argv[0]} did not finish within {bounded_seconds(timeout_s)} s")
    if code != 0:
        detail = stderr.decode(errors="replace").strip()[-2000:]
        raise ExecFailed(f"{argv[0]} exited with {code}: {detail or 'no diagnostics'}")


# Docker has no "kill this exec": a bounded command runs under coreutils `timeout` inside the
# container (every service image has it), which sends TERM at the bound and KILL a little
# later; it ends the command even if the worker died meanwhile. Its exit codes then:
TIMED_OUT = (124, 137)
KILL_AFTER_S = 10


def bounded_seconds(timeout_s: float) -> int:
    return max(1, math.ceil(timeout_s))


def bounded(argv: list[str], timeout_s: float | None) -> list[str]:
    """`argv`, run under `timeout` when a bound is given."""
    if timeout_s is None:
        return argv
    return ["timeout", f"--kill-after={KILL_AFTER_S}", f"{bounded_seconds(timeout_s)}s", *argv]


def exec_output(
    client: docker.DockerClient,
    container: str,
    argv: list[str],
    env: dict[str, str],
    timeout_s: float | None = None,
    user: str = "",
) -> Iterator[bytes]:
    """The command's stdout, chunk by chunk (run as `user`, the image's by default); raises
    `ExecFailed` at the end if it failed, or if it ran longer than `timeout_s` (then it was
    killed)."""
    exec_id = client.api.exec_create(
        container, bounded(argv, timeout_s), environment=env, stdout=True, stderr=True, user=user
    )["Id"]
    stderr = bytearray()
    for out, err in client.api.exec_start(exec_id, stream=True, demux=True):
        if err:
            _tail(stderr, err)
        if out:
            yield out
    _check(client, exec_id, argv, bytes(stderr), timeout_s)


class ExecInput:
    """A writable stream into the command's stdin; `finish()` closes it, waits for the command
    and raises `ExecFailed` if it failed."""

    def __init__(
        self, client: docker.DockerClient, container: str, argv: list[str], env: dict[str, str]
    ) -> None:
        self._client, self._argv = client, argv
        self._exec_id = client.api.exec_create(
            container, argv, environment=env, stdin=True, stdout=True, stderr=True
        )["Id"]
        self._stream: Any = cast(Any, client.api.exec_start(self._exec_id, socket=True))
        self._sock: socket.socket = self._stream._sock  # the raw socket (local Docker engine)
        self._output = bytearray()
        # The command's output is read as it comes, so it can never block the writes.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._closed = False

    def _read(self) -> None:
        for _stream, data in frames_iter(self._stream, tty=False):  # type: ignore[no-untyped-call]
            _tail(self._output, data)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.shutdown(socket.SHUT_WR)

    def finish(self, timeout_s: float) -> str:
        """Close stdin, wait (bounded) for the command; its output, or `ExecFailed`."""
        self.close()
        self._reader.join(timeout_s)
        if self._reader.is_alive():
            raise ExecFailed(f"{self._argv[0]} did not finish within {timeout_s:.0f}s")
        self._stream.close()
        _check(self._client, self._exec_id, self._argv, bytes(self._output))
        return self._output.decode(errors="replace")


def collect(chunks: Iterable[bytes]) -> str:
    """A short command output, whole (for listings, never for data)."""
    return b"".join(chunks).decode(errors="replace")


def put_file(
    client: docker.DockerClient,
    container: str,
    path: str,
    size: int,
    chunks: Iterable[bytes],
    owner: tuple[int, int],
) -> None:
    """Write a file of `size` bytes (mode 0600, owned by uid/gid `owner`) into the container,
    stopped or running, streamed as a one-member tar archive."""
    directory, _, name = path.rpartition("/")
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    info.uid, info.gid = owner

    def archive() -> Iterator[bytes]:
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        written = 0
        for chunk in chunks:
            written += len(chunk)
            yield chunk
        if written != size:
            raise ExecFailed(f"{path}: {written} bytes given for a {size}-byte file")
        yield b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)

    if not client.containers.get(container).put_archive(directory or "/", archive()):
        raise ExecFailed(f"Docker refused to write {path} into {container}")


def stop_container(client: docker.DockerClient, container: str, timeout_s: int) -> None:
    client.containers.get(container).stop(timeout=timeout_s)


def start_container(client: docker.DockerClient, container: str) -> None:
    client.containers.get(container).start()
