"""A containerised backup worker joins the verification scratch's internal network (S3 is
dialled at the scratch's address) and leaves it before the network is removed; on the host
nothing is joined."""

from __future__ import annotations

from typing import Any

from temps_backup.scratch_service import (
    container_id_from_mountinfo,
    join_network,
    remove_scratch,
)

OWN = "3579262fa122f012b47168911fbfb6e6ac8f992ae8d15d478c2ea92112beb000"
OTHER = "a" * 64
# From a temps/app container (Docker 2x, ext4): the hostname bind mount names the container.
IN_CONTAINER = f"""\
1490 1485 0:120 / / rw,relatime master:563 - overlay overlay rw,lowerdir=/x
1506 1485 254:0 /var/lib/docker/containers/{OWN}/hostname /etc/hostname rw - ext4 /dev/vda rw
1507 1485 254:0 /var/lib/docker/containers/{OWN}/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw
"""
# The host: other containers' shm mounts are listed, /etc/hostname is no mount.
ON_HOST = f"""\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
812 25 0:95 / /var/lib/docker/containers/{OTHER}/mounts/shm rw - tmpfs shm rw
"""


def test_the_own_container_is_read_from_the_hostname_mount() -> None:
    assert container_id_from_mountinfo(IN_CONTAINER) == OWN
    assert container_id_from_mountinfo(ON_HOST) is None
    # /var/lib/docker on a file system of its own: the mount root starts below it.
    own_fs = f"99 1 8:1 /containers/{OWN}/hostname /etc/hostname rw - xfs /dev/sdb rw\n"
    assert container_id_from_mountinfo(own_fs) == OWN


class FakeNetwork:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.attrs: dict[str, Any] = {"Containers": {}}

    def connect(self, container: str) -> None:
        self.log.append(f"connect {container}")
        self.attrs["Containers"][container] = {}

    def disconnect(self, container: str, force: bool = False) -> None:
        self.log.append(f"disconnect {container}")
        del self.attrs["Containers"][container]

    def remove(self) -> None:
        assert not self.attrs["Containers"], "Docker refuses to remove a network in use"
        self.log.append("remove network")


class FakeClient:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.network = FakeNetwork(self.log)
        self.networks = _Getter(lambda name: self.network)
        self.containers = _Getter(lambda name: _Removable(self.log, f"container {name}"))
        self.volumes = _Getter(lambda name: _Removable(self.log, f"volume {name}"))


class _Getter:
    def __init__(self, make: Any) -> None:
        self.get = make


class _Removable:
    def __init__(self, log: list[str], what: str) -> None:
        self.log, self.what = log, what

    def remove(self, **_: Any) -> None:
        self.log.append(f"remove {self.what}")


def test_the_worker_joins_then_leaves_before_the_network_goes() -> None:
    client: Any = FakeClient()
    join_network(client, "scratch", OWN)
    remove_scratch(client, "scratch")
    assert client.log[0] == f"connect {OWN}"
    assert client.log[-2:] == [f"disconnect {OWN}", "remove network"]


def test_on_the_host_nothing_is_joined() -> None:
    client: Any = FakeClient()
    join_network(client, "scratch", None)
    remove_scratch(client, "scratch")
    assert not any(entry.startswith("connect") for entry in client.log)
