"""A bounded command in a real container is killed at its bound (the backup deadline's
mechanism: coreutils `timeout` inside the service image), and its output up to then is read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from uuid import uuid4

import docker
import pytest
from temps_shared.runtime.container_io import ExecFailed, collect, exec_output

IMAGE = "temps/redis:8"  # any service image: each has coreutils `timeout`


@pytest.fixture(scope="module")
def container() -> Iterator[tuple[docker.DockerClient, str]]:
    client = docker.from_env()
    name = f"temps-test-exec-bound-{uuid4().hex[:8]}"
    created = client.containers.run(
        IMAGE, ["sleep", "300"], name=name, detach=True, entrypoint=[], network_mode="none"
    )
    try:
        yield client, name
    finally:
        created.remove(force=True)
        client.close()


def test_a_hung_command_is_killed_at_its_bound(
    container: tuple[docker.DockerClient, str],
) -> None:
    client, name = container
    started = time.monotonic()
    with pytest.raises(ExecFailed, match="sh did not finish within 2 s"):
        collect(exec_output(client, name, ["sh", "-c", "echo begun; sleep 60"], {}, 2))
    assert time.monotonic() - started < 15
    # Nothing of it is left running in the container.
    listing = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null"
    processes = collect(exec_output(client, name, ["sh", "-c", listing], {}, 10))
    assert "sleep 300" in processes  # the listing works
    assert "sleep 60" not in processes


def test_a_prompt_command_is_untouched(container: tuple[docker.DockerClient, str]) -> None:
    client, name = container
    assert collect(exec_output(client, name, ["echo", "ok"], {}, 30)) == "ok\n"
