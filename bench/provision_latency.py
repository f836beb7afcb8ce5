"""Provisioning latency: POST → `operational` through the platform, against a bare `docker run`
of the same image to its first accepted TCP connection, measured in the same run.

"Accepted" means PostgreSQL itself answered on that connection: Docker's userland proxy accepts
TCP on a published port as soon as the container starts, before anything listens inside, so a
bare TCP accept would measure the proxy. The probe sends PostgreSQL's SSLRequest and waits for
the server's one-byte answer.

The bare run gets the same initialisation work as a platform service (its own superuser and
database, PGDATA on a volume), so the ratio measures what the platform adds, not what PostgreSQL
does to create a database.

Needs the platform running (`make up`; `make bench` does it). Prints each run and the ratio of the
medians. Environment: TEMPS_API_URL (default http://127.0.0.1:8080), TEMPS_DATA_DIR (token),
BENCH_RUNS (default 5), BENCH_IMAGE (default temps/postgres:15).
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import sys
import time
import uuid
from pathlib import Path

import docker
import httpx

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
IMAGE = os.environ.get("BENCH_IMAGE", "temps/postgres:15")
DEADLINE_S = 120.0
POLL_S = 0.02
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(POLL_S)
    raise SystemExit(f"timed out waiting for {what}")


def bare_docker_run(client: docker.DockerClient) -> float:
    """Seconds from `docker run` to the first TCP connection the server accepts."""
    started = time.monotonic()
    name = f"bench-bare-{uuid.uuid4().hex[:8]}"
    container = client.containers.run(
        IMAGE,
        detach=True,
        name=name,
        ports={"5432/tcp": ("127.0.0.1", None)},
        environment={
            "POSTGRES_PASSWORD": uuid.uuid4().hex,
            "POSTGRES_USER": "temps_admin",
            "POSTGRES_DB": name.replace("-", "_"),
            "PGDATA": "/var/lib/postgresql/data/pgdata",
        },
        volumes={name: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        labels={"io.temps.bench": "true"},
    )
    try:
        container.reload()
        port = int(container.ports["5432/tcp"][0]["HostPort"])

        def accepts() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(SSL_REQUEST)
                    return sock.recv(1) in (b"S", b"N")
            except OSError:
                return False

        _until(accepts, "the bare container to accept a connection")
        return time.monotonic() - started
    finally:
        container.remove(force=True)
        client.volumes.get(name).remove(force=True)


def through_platform(api: httpx.Client) -> float:
    """Seconds from POST /api/external-services to the service reading `operational`."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    response = api.post(
        "/api/external-services",
        json={
            "name": name,
            "service_type": "postgres",
            "version": "15",
            "parameters": {"replicas": 0},
        },
    )
    response.raise_for_status()
    service_id = response.json()["id"]
    try:

        def operational() -> bool:
            status = api.get(f"/api/external-services/{service_id}").json()["status"]
            if status == "failed":
                raise SystemExit(f"{name} failed")
            return bool(status == "operational")

        _until(operational, f"{name} to be operational")
        return time.monotonic() - started
    finally:
        api.delete(f"/api/external-services/{service_id}")

        def gone() -> bool:
            return api.get(f"/api/external-services/{service_id}").status_code == 404

        _until(gone, f"{name} to be deleted")


def main() -> int:
    data_dir = Path(os.environ.get("TEMPS_DATA_DIR", Path.home() / ".temps"))
    token = (data_dir / "admin_token").read_text().strip()
    api = httpx.Client(
        base_url=os.environ.get("TEMPS_API_URL", "http://127.0.0.1:8080"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    client = docker.from_env()
    bare, platform = [], []
    for run in range(1, RUNS + 1):  # interleaved, so drift on the host hits both alike
        bare.append(bare_docker_run(client))
        platform.append(through_platform(api))
        print(f"run {run}: bare docker run {bare[-1]:.2f}s, platform {platform[-1]:.2f}s")
    ratio = statistics.median(platform) / statistics.median(bare)
    print(f"median bare docker run → TCP accept: {statistics.median(bare):.2f}s")
    print(f"median POST → operational:          {statistics.median(platform):.2f}s")
    print(f"ratio (platform / bare): {ratio:.2f}x  (target ≤ 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
