"""Latency of GET /api/external-services/{id}/stats (through the gateway, the bus and the host
agent) against Docker's own one-shot stats call on the same container, measured in the same run.

Needs the platform running (`make up`). Creates one PostgreSQL service, samples both 10 times
(BENCH_RUNS), prints the medians and their ratio, deletes the service. Target: under 2 s.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import docker
import httpx

RUNS = int(os.environ.get("BENCH_RUNS", "10"))


def _wait(api: httpx.Client, service_id: str, status: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if api.get(f"/api/external-services/{service_id}").json()["status"] == status:
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {status}")


def main() -> int:
    data_dir = Path(os.environ.get("TEMPS_DATA_DIR", Path.home() / ".temps"))
    token = (data_dir / "admin_token").read_text().strip()
    api = httpx.Client(
        base_url=os.environ.get("TEMPS_API_URL", "http://127.0.0.1:8080"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    name = f"bench-stats-{uuid.uuid4().hex[:6]}"
    created = api.post(
        "/api/external-services",
        json={
            "name": name,
            "service_type": "postgres",
            "parameters": {"replicas": 0},
        },
    )
    created.raise_for_status()
    service_id = created.json()["id"]
    client = docker.from_env()
    try:
        _wait(api, service_id, "operational")
        container = client.containers.get(f"temps-postgres-{name}")
        platform, bare = [], []
        for _ in range(RUNS):
            started = time.monotonic()
            api.get(f"/api/external-services/{service_id}/stats").raise_for_status()
            platform.append(time.monotonic() - started)
            started = time.monotonic()
            container.stats(stream=False)
            bare.append(time.monotonic() - started)
        print(f"median docker stats (two samples): {statistics.median(bare):.2f}s")
        print(
            f"median GET /stats:                 {statistics.median(platform):.2f}s "
            f"(max {max(platform):.2f}s; target < 2 s)"
        )
        ratio = statistics.median(platform) / statistics.median(bare)
        print(f"ratio (platform / docker): {ratio:.2f}x")
    finally:
        api.delete(f"/api/external-services/{service_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
