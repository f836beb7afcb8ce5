"""What a backup of one engine is made of and how it goes back in. Each engine opens a
snapshot of a running service — its artifacts (streams of bytes, e.g. a dump run inside the
service's own container so the tools match the server's version) and the figures to verify a
restore against, taken in that same snapshot — and restores from checked artifacts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import docker

from temps_shared.runtime.container_io import exec_output

# Opens a downloaded artifact whose SHA-256 and decryption were already checked.
OpenArtifact = Callable[[dict[str, Any]], AbstractContextManager[BinaryIO]]
# Comparable facts about a service's data (row counts, checksums, key digests, ETags …),
# JSON-serialisable and free of secrets: they are written into the manifest.
Figures = dict[str, Any]


@dataclass(frozen=True)
class ServiceHandle:
    """A running service the worker backs up, restores or verifies."""

    client: docker.DockerClient
    container: str
    credentials: dict[str, str]
    endpoints: dict[str, tuple[str, int]]  # port name → where the worker dials it
    ca_pem: str  # the installation CA, for engines dialled over TLS
    identity: str = field(repr=False)  # the age identity that decrypts artifacts
    timeout_s: float = 3600.0  # bound of one restore command


@dataclass(frozen=True)
class ArtifactSource:
    name: str  # the artifact's file name in the backup's folder (before `.zst.age`)
    chunks: Callable[[], Iterator[bytes]]  # its bytes, produced when the upload starts
    meta: dict[str, str] = field(default_factory=dict)  # kept in the manifest entry


def exec_source(
    name: str,
    handle: ServiceHandle,
    argv: list[str],
    env: dict[str, str],  # secrets go here, never into argv
    meta: dict[str, str] | None = None,
) -> ArtifactSource:
    """An artifact that is the stdout of `argv` run inside the service's container."""
    return ArtifactSource(
        name, lambda: exec_output(handle.client, handle.container, argv, env), meta or {}
    )


@dataclass
class Snapshot:
    sources: list[ArtifactSource]
    # Called after every artifact was stored, still inside the snapshot.
    figures: Callable[[], Figures] = dict


class EngineBackup(Protocol):
    def snapshot(self, handle: ServiceHandle) -> AbstractContextManager[Snapshot]:
        """The artifacts of one backup, in the order they are taken, and their figures."""
        ...

    def restore(
        self, handle: ServiceHandle, artifacts: list[dict[str, Any]], open_artifact: OpenArtifact
    ) -> None:
        """Put the service's data back from `artifacts` (manifest entries), in place."""
        ...

    def figures(self, handle: ServiceHandle) -> Figures:
        """The figures of the service's data as it is now (after a test restore)."""
        ...
