"""The README's walk-through, run as written (extracted from README.md) against the e2e stack:
what a newcomer pastes must work, print what the README says it prints, and clean up."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import httpx

from tests.e2e.conftest import REPO, Stack

# A block belongs to the walk-through when this comment is the line before its ```sh fence.
BLOCK = re.compile(r"^<!-- walkthrough -->\n```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TIMEOUT_S = 900


def walkthrough() -> str:
    blocks = BLOCK.findall((REPO / "README.md").read_text())
    assert len(blocks) >= 5, "the README's walk-through blocks are missing their markers"
    return "\n".join(blocks)


def _leftovers(stack: Stack, name: str) -> tuple[list[str], list[str]]:
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30
    ) as api:
        services = [s["id"] for s in api.get("/api/external-services").json() if s["name"] == name]
        projects = [p["id"] for p in api.get("/api/projects").json() if p["name"] == f"{name}-app"]
    return services, projects


def _clean_up(stack: Stack, name: str) -> None:
    """Only when the walk-through failed half-way: what it created must not outlive the test."""
    services, projects = _leftovers(stack, name)
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30
    ) as api:
        for sid in services:
            for project in projects:
                api.delete(f"/api/external-services/{sid}/projects/{project}")
        for project in projects:
            api.delete(f"/api/projects/{project}")
        for sid in services:
            api.delete(f"/api/external-services/{sid}")


def test_readme_walkthrough_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    name = f"e2e-readme-{secrets.token_hex(3)}"
    script = tmp_path / "walkthrough.sh"
    script.write_text(walkthrough())
    env = {k: v for k, v in os.environ.items() if k != "TEMPS_TOKEN"}  # the token file, as a user
    env |= {
        "NAME": name,
        "TEMPS_API_URL": stack.base_url,
        "TEMPS_DATA_DIR": str(stack.data_dir),
        # `temps` resolves to the launcher `make up` wrote, as on a user's PATH.
        "PATH": f"{stack.env['TEMPS_BIN_DIR']}:{env['PATH']}",
    }
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", str(script)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        assert result.returncode == 0, output
        # What the README says these steps print.
        assert re.search(r"^connected as \S+ to PostgreSQL 17\.", result.stdout, re.M), output
        assert re.search(r"admin over PostgreSQL 17\.", result.stdout), output
        assert re.search(r"^verified on$", result.stdout, re.M), output
        events = re.findall(r"^event: (\w+)", result.stdout, re.M)
        assert events[:1] == ["ServiceRequested"], output
        assert "ServiceProvisioned" in events, output
        assert "still connected" in result.stdout, output
        # It cleaned up after itself.
        assert _leftovers(stack, name) == ([], []), output
    finally:
        _clean_up(stack, name)
