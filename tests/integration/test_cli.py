"""The `temps` CLI as a user runs it: the installed console script in a subprocess, against the
in-process platform (TEMPS_API_URL / TEMPS_TOKEN), on a real PostgreSQL service and psql."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import RUN_PREFIX as P

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEMPS = str(Path(sys.executable).parent / "temps")


async def temps(platform: Any, *args: str, timeout_s: float = 240) -> tuple[int, str, str]:
    """Exit code, stdout, stderr. Not subprocess.run: the API answers from this event loop."""
    token = (Path(platform.env["TEMPS_DATA_DIR"]) / "admin_token").read_text().strip()
    env = {**os.environ, "TEMPS_API_URL": platform.base_url, "TEMPS_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(
        TEMPS,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_services_list_json_parses(platform: Any) -> None:
    code, out, err = await temps(platform, "services", "list", "--json")
    assert code == 0, err
    assert isinstance(json.loads(out), list)


async def test_create_with_a_bad_name_exits_2_with_the_apis_message(
    platform: Any, api: httpx.AsyncClient
) -> None:
    name = f"{P}Bad_Name"
    code, out, err = await temps(platform, "services", "create", name, "--type", "redis")
    refused = await api.post("/api/external-services", json={"name": name, "service_type": "redis"})
    assert refused.status_code == 422
    assert (code, out) == (2, "")
    assert err == f"error: {refused.json()['error']['message']}\n"


async def test_run_psql_on_the_host_through_a_link(platform: Any) -> None:
    service, project = f"{P}clidb", f"{P}cli-a"
    code, out, err = await temps(
        platform, "services", "create", service, "--param", "replicas=0", "--wait", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["status"] == "operational"
    code, out, err = await temps(platform, "projects", "create", project, "--json")
    assert code == 0, err
    assert json.loads(out)["environments"] == ["production"]
    code, out, err = await temps(
        platform, "link", service, "--project", project, "--env", "production", "--wait", "--json"
    )
    assert code == 0, err
    link_user = json.loads(out)["username"]

    code, out, err = await temps(platform, "env", project, "production", "--json")
    assert code == 0, err
    masked = json.loads(out)["variables"]
    assert ":********@temps-postgres-" in masked["DATABASE_URL"]

    # The command, with the reference left for temps to expand (as `'$DATABASE_URL'`).
    run = ("run", "--project", project, "--env", "production", "--")
    code, out, err = await temps(platform, *run, "psql", "$DATABASE_URL", "-c", "select 1")
    assert code == 0, err
    assert "(1 row)" in out
    # The variables reach the command's environment too; it is the link's user, over TLS.
    query = "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()"
    script = f'psql "$DATABASE_URL" -XtAc "{query}"'
    code, out, err = await temps(platform, *run, "sh", "-c", script)
    assert code == 0, err
    assert out.strip() == f"{link_user}|t"
    code, _, _ = await temps(platform, *run, "sh", "-c", "exit 3")
    assert code == 3

    code, _, err = await temps(platform, "services", "delete", service, "--yes")
    assert code == 5, err  # 409: still linked
    code, _, err = await temps(platform, "unlink", service, "--project", project)
    assert code == 0, err
    code, _, err = await temps(platform, "services", "delete", service, "--yes", "--wait")
    assert code == 0, err
    code, _, err = await temps(platform, "services", "show", service)
    assert code == 3, err
