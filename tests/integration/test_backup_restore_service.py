"""POST …/backups/{id}/restore with `{"as_new_service": name}`: a new service of the same engine,
version and settings comes up and the backup worker restores the old service's backup into it
(waiting while it is provisioned). Name conflicts and bad names answer as create does. Real
NATS, PostgreSQL, Docker, SeaweedFS."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.backup_platform import (  # noqa: F401  (the module's fixtures)
    create_service,
    module_store,
    pg_connect,
    platform_with_store,
    restore_ended,
    running_platform,
    store_env,
    take_backup,
)
from tests.support import RUN_PREFIX as P
from tests.support import credentials, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_backup_restored_as_a_new_service_brings_the_old_data(
    api: httpx.AsyncClient,
) -> None:
    old_name, new_name = f"{P}orig", f"{P}copy"
    old_id = await create_service(
        api, old_name, "postgres", version="15", parameters={"replicas": 0}
    )
    old_creds = await credentials(api, old_id)
    conn = await pg_connect(old_creds)
    try:
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        await conn.execute("INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 300) g")
        expected = await conn.fetch("SELECT * FROM kept ORDER BY id")
    finally:
        await conn.close()
    backup = await take_backup(api, old_id)
    url = f"/api/external-services/{old_id}/backups/{backup['id']}/restore"

    # As create answers: a taken name 409, a bad one 422, and nothing is created.
    taken = await api.post(url, json={"as_new_service": old_name})
    assert taken.status_code == 409, taken.text
    assert taken.json()["error"]["code"] == "name_taken"
    bad = await api.post(url, json={"as_new_service": "Not A Name"})
    assert bad.status_code == 422, bad.text
    names = [s["name"] for s in (await api.get("/api/external-services")).json()]
    assert "Not A Name" not in names

    response = await api.post(url, json={"as_new_service": new_name})
    assert response.status_code == 202, response.text
    answer = response.json()
    new_id = answer["new_service"]["id"]
    assert answer["new_service"]["name"] == new_name
    assert response.headers["location"] == f"/api/external-services/{new_id}"
    restore = await restore_ended(api, old_id, backup["id"], answer["restore"]["id"], 300)
    assert restore["state"] == "completed", restore["reason"]

    new = await wait_status(api, new_id, "operational", timeout_s=60)
    assert (new["service_type"], new["version"]) == ("postgres", "15")
    new_creds = await credentials(api, new_id)
    assert new_creds["password"] != old_creds["password"]  # a copy, not a shared secret
    # The old database is back, in the new service, as its primary database.
    assert new_creds["database"] == old_creds["database"]
    conn = await pg_connect(new_creds)
    try:
        assert await conn.fetch("SELECT * FROM kept ORDER BY id") == expected
    finally:
        await conn.close()
    # The original is untouched.
    conn = await pg_connect(old_creds)
    try:
        assert await conn.fetchval("SELECT count(*) FROM kept") == 300
    finally:
        await conn.close()
    entries = (await api.get("/api/audit-log", params={"service_id": old_id})).json()
    assert any(
        e["action"] == "backup.restore_requested" and e["details"].get("new_service_id") == new_id
        for e in entries
    )
