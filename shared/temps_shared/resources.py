"""Per-container resource limits: the API's shape (MiB, MiB of swap beyond the memory cap,
cores) and its mapping to Docker's Memory / MemorySwap / NanoCpus."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)
MIB = 1024 * 1024
NANO = 1_000_000_000
MIN_MEMORY_MB = 6  # Docker refuses less ("Minimum memory limit allowed is 6MB")
MIN_CPUS = 0.01  # Docker refuses less ("Range of CPUs is from 0.01 to <host cores>")
# Upper bounds that keep Docker's byte and nano-CPU counts within 64 bits; the host's own
# cores and memory (asked of its agent) bound them further when caps are set.
MAX_MEMORY_MB = 2**40
MAX_CPUS = 4096.0


class ResourceLimits(BaseModel):
    """Caps of every member of a service. None (or omitted) means no cap; all None: unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int | None = Field(
        None,
        ge=MIN_MEMORY_MB,
        le=MAX_MEMORY_MB,
        description="Hard memory cap in MiB (at least 6, at most the host's memory); null for"
        " none.",
    )
    swap_mb: int | None = Field(
        None,
        ge=0,
        le=MAX_MEMORY_MB,
        description="Swap in MiB beyond the memory cap (at most the host's memory); null or 0"
        " for none.",
    )
    cpus: float | None = Field(
        None,
        ge=MIN_CPUS,
        le=MAX_CPUS,
        allow_inf_nan=False,
        description="CPU cap in cores (0.01 up to the host's cores); null for none.",
    )

    @model_validator(mode="after")
    def _swap_needs_memory(self) -> ResourceLimits:
        if self.swap_mb and self.memory_mb is None:
            raise ValueError("swap_mb needs memory_mb: swap is counted beyond a memory cap")
        return self

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> ResourceLimits:
        """Caps as stored with a service. Caps stored before they were validated (e.g. `cpus`
        0.0001, which no container can start with) are left out, so they cannot wedge the
        service; the user sees them gone from the drift report and may set valid ones."""
        try:
            return cls.model_validate(stored or {})
        except ValidationError:
            valid: dict[str, Any] = {}
            # swap counts beyond a memory cap: judge the memory cap first
            for name, value in sorted((stored or {}).items(), key=lambda kv: kv[0] == "swap_mb"):
                try:
                    cls.model_validate({**valid, name: value})
                except ValidationError:
                    log.warning("ignoring a stored resource cap Docker cannot apply: %s", name)
                    continue
                valid[name] = value
            return cls.model_validate(valid)

    @property
    def unlimited(self) -> bool:
        return self.memory_mb is None and self.cpus is None

    def docker(self) -> DockerLimits:
        memory = self.memory_mb * MIB if self.memory_mb is not None else 0
        return DockerLimits(
            memory=memory,
            # Docker's MemorySwap is memory + swap; equal to Memory means no swap beyond it.
            memory_swap=memory + (self.swap_mb or 0) * MIB if memory else 0,
            nano_cpus=round(self.cpus * NANO) if self.cpus is not None else 0,
        )


class DockerLimits(BaseModel):
    """Docker's view: 0 means no cap (as in HostConfig)."""

    model_config = ConfigDict(frozen=True)

    memory: int = 0
    memory_swap: int = 0
    nano_cpus: int = 0

    def to_api(self) -> ResourceLimits:
        memory_mb = self.memory // MIB if self.memory else None
        swap = (self.memory_swap - self.memory) // MIB if self.memory and self.memory_swap else 0
        return ResourceLimits(
            memory_mb=memory_mb,
            swap_mb=swap if memory_mb is not None else None,
            cpus=self.nano_cpus / NANO if self.nano_cpus else None,
        )

    def lifts(self, wanted: DockerLimits) -> bool:
        """Whether going to `wanted` removes a cap Docker 20.10 cannot remove live."""
        return bool(
            (self.memory and not wanted.memory) or (self.nano_cpus and not wanted.nano_cpus)
        )

    def drift(self, configured: DockerLimits) -> dict[str, dict[str, Any]] | None:
        """{field: {configured, live}} in the API's units where they differ, else None."""
        live_api, want_api = self.to_api(), configured.to_api()
        differences = {
            name: {"configured": getattr(want_api, name), "live": getattr(live_api, name)}
            for name in ("memory_mb", "swap_mb", "cpus")
            if getattr(want_api, name) != getattr(live_api, name)
        }
        return differences or None
