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
# A memory cap lifted live. Docker 20.10 cannot unset Memory on an existing container (`docker
# update` treats 0 as "unchanged"), so lifting one sets memory and memory+swap to this value
# instead: far above any host (the kernel never reaches it, Docker's stats then report the
# host's memory as the limit) and above any cap the API accepts (MAX_MEMORY_MB MiB = 2**60
# bytes), so it reads back as "no cap". The member keeps running; a later cap goes live again.
LIFTED_MEMORY = 2**62


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
    """Docker's view: 0 means no cap (as in HostConfig); a memory of `LIFTED_MEMORY` or more is
    a cap lifted live, which counts as no cap too (equality included)."""

    model_config = ConfigDict(frozen=True)

    memory: int = 0
    memory_swap: int = 0
    nano_cpus: int = 0

    @property
    def memory_lifted(self) -> bool:
        return self.memory >= LIFTED_MEMORY

    def effective(self) -> tuple[int, int, int]:
        """(memory, memory_swap, nano_cpus) with a lifted memory cap as no cap (0, 0)."""
        if self.memory_lifted:
            return 0, 0, self.nano_cpus
        return self.memory, self.memory_swap, self.nano_cpus

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DockerLimits):
            return NotImplemented
        return self.effective() == other.effective()

    def __hash__(self) -> int:
        return hash(self.effective())

    def docker_view(self) -> dict[str, int]:
        """What Docker really holds (HostConfig), for a reader who wants the true numbers."""
        return {"memory": self.memory, "memory_swap": self.memory_swap, "nano_cpus": self.nano_cpus}

    def to_api(self) -> ResourceLimits:
        memory, memory_swap, _ = self.effective()
        memory_mb = memory // MIB if memory else None
        swap = (memory_swap - memory) // MIB if memory and memory_swap else 0
        return ResourceLimits(
            memory_mb=memory_mb,
            swap_mb=swap if memory_mb is not None else None,
            cpus=self.nano_cpus / NANO if self.nano_cpus else None,
        )

    def lifts(self, wanted: DockerLimits) -> bool:
        """Whether going to `wanted` removes a cap that cannot be removed live. A memory cap
        can (raised to `LIFTED_MEMORY`, see `container_limits.update`); a CPU cap cannot: Docker
        20.10 treats NanoCpus 0 as "unchanged" and refuses more than the host's cores."""
        return bool(self.nano_cpus and not wanted.nano_cpus)

    def drift(self, configured: DockerLimits) -> dict[str, dict[str, Any]] | None:
        """{field: {configured, live}} in the API's units where they differ, else None."""
        live_api, want_api = self.to_api(), configured.to_api()
        differences = {
            name: {"configured": getattr(want_api, name), "live": getattr(live_api, name)}
            for name in ("memory_mb", "swap_mb", "cpus")
            if getattr(want_api, name) != getattr(live_api, name)
        }
        return differences or None
