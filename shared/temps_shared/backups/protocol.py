"""What a backup of one engine is made of and how it goes back in. Each engine lists the
commands whose output are its artifacts (run inside the service's own container, so the tools
match the server's version) and restores from checked artifacts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import docker

# Opens a downloaded artifact whose SHA-256 and decryption were already checked.
OpenArtifact = Callable[[dict[str, Any]], AbstractContextManager[BinaryIO]]


@dataclass(frozen=True)
class ArtifactSource:
    name: str  # the artifact's file name in the backup's folder (before `.zst.age`)
    argv: list[str]
    env: dict[str, str]  # secrets go here, never into argv
    meta: dict[str, str] = field(default_factory=dict)  # kept in the manifest entry


@dataclass(frozen=True)
class RestoreTarget:
    client: docker.DockerClient
    container: str
    credentials: dict[str, str]
    identity: str  # the age identity that decrypts the artifacts
    timeout_s: float


class EngineBackup(Protocol):
    def sources(
        self, client: docker.DockerClient, container: str, credentials: dict[str, str]
    ) -> list[ArtifactSource]:
        """The artifacts of one backup, in the order they are taken."""
        ...

    def restore(
        self, target: RestoreTarget, artifacts: list[dict[str, Any]], open_artifact: OpenArtifact
    ) -> None:
        """Put the service's data back from `artifacts` (manifest entries), in place."""
        ...
