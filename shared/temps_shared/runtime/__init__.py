"""The only code that talks to Docker."""

from temps_shared.runtime.docker_runtime import (
    ContainerSpec,
    ContainerState,
    DockerRuntime,
    ExecResult,
    ImageMissingError,
    PortInUseError,
)

__all__ = [
    "ContainerSpec",
    "ContainerState",
    "DockerRuntime",
    "ExecResult",
    "ImageMissingError",
    "PortInUseError",
]
