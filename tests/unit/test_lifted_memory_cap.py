"""A memory cap lifted live (`LIFTED_MEMORY` in Docker) reads as no cap everywhere the platform
compares caps: the API view, equality with an uncapped spec, drift and the recreate rule."""

from __future__ import annotations

from temps_shared.resources import LIFTED_MEMORY, MIB, DockerLimits, ResourceLimits
from temps_shared.runtime.container_limits import live_limits


def _attrs(memory: int, swap: int, nano_cpus: int = 0) -> dict[str, object]:
    return {"HostConfig": {"Memory": memory, "MemorySwap": swap, "NanoCpus": nano_cpus}}


def test_a_lifted_memory_cap_reads_as_no_cap() -> None:
    lifted = live_limits(_attrs(LIFTED_MEMORY, LIFTED_MEMORY, 500_000_000))
    assert lifted.to_api() == ResourceLimits(cpus=0.5)
    assert lifted == ResourceLimits(cpus=0.5).docker()
    assert hash(lifted) == hash(ResourceLimits(cpus=0.5).docker())
    assert lifted.drift(ResourceLimits(cpus=0.5).docker()) is None
    assert lifted.docker_view() == {
        "memory": LIFTED_MEMORY,
        "memory_swap": LIFTED_MEMORY,
        "nano_cpus": 500_000_000,
    }
    # Capped again: a real difference.
    assert lifted.drift(ResourceLimits(memory_mb=64).docker()) == {
        "memory_mb": {"configured": 64, "live": None},
        "swap_mb": {"configured": 0, "live": None},
        "cpus": {"configured": None, "live": 0.5},
    }


def test_only_a_lifted_cpu_cap_needs_a_recreate() -> None:
    capped = DockerLimits(memory=256 * MIB, memory_swap=256 * MIB, nano_cpus=1_000_000_000)
    assert not capped.lifts(ResourceLimits(cpus=1).docker())
    assert capped.lifts(ResourceLimits(memory_mb=256).docker())
    assert capped.lifts(DockerLimits())


def test_the_largest_cap_the_api_accepts_is_below_the_lifted_value() -> None:
    largest = ResourceLimits(memory_mb=2**40).docker()
    assert largest.memory < LIFTED_MEMORY
    assert largest.to_api().memory_mb == 2**40
