"""The pooler (PgBouncer) of a PostgreSQL service: its configuration, container spec, the
pooled/direct link variables, `temps run`'s rewriting of the pooled URL, and the bounded
PAUSE … RECONNECT/RESUME hold (against a fake admin console)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from temps_cli.rewrite import loopback_map, rewrite_variables
from temps_shared.engines import pgbouncer
from temps_shared.engines.postgres import MAX_CONNECTIONS, PostgresEngine, PostgresParameters
from temps_shared.links import LinkGrant
from temps_shared.runtime import ContainerState
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import create_ca, issue_server_certificate


def _service(name: str = "db1") -> ServiceRecord:
    now = datetime.now(UTC)
    return ServiceRecord(
        id=uuid4(),
        name=name,
        service_type="postgres",
        version="15",
        parameters=PostgresParameters().model_dump(),
        resources={},
        secrets_ciphertext="",
        desired_state="running",
        generation=1,
        purged=False,
        created_at=now,
        updated_at=now,
    )


def _settings(ini: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ini.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def test_pool_sizes_derive_from_max_connections() -> None:
    sizes = pgbouncer.pool_sizes(100)
    assert sizes.max_db_connections == 75  # a quarter stays for direct and platform sessions
    assert sizes.default_pool_size == 18
    assert sizes.max_db_connections + 3 < 100  # superuser_reserved_connections
    assert sizes.max_client_conn == 1000
    assert pgbouncer.pool_sizes(400).max_db_connections == 300
    small = pgbouncer.pool_sizes(5)
    assert small.default_pool_size >= 2
    assert small.max_db_connections <= 5


def test_config_tls_both_sides_auth_query_transaction_pooling() -> None:
    settings = _settings(pgbouncer.config("temps-postgres-db1", MAX_CONNECTIONS))
    assert settings["*"] == "host=temps-postgres-db1 port=5432"
    assert settings["pool_mode"] == "transaction"
    assert int(settings["max_prepared_statements"]) > 0
    assert settings["client_tls_sslmode"] == "require"
    assert settings["server_tls_sslmode"] == "verify-full"
    assert settings["server_tls_ca_file"].endswith("/ca.crt")
    assert settings["auth_type"] == "scram-sha-256"
    assert settings["auth_user"] == "temps_pooler"
    assert settings["auth_dbname"] == "postgres"
    assert settings["auth_query"] == "SELECT uname, phash FROM temps_pooler.lookup($1)"
    assert settings["admin_users"] == "temps_pooler_admin"
    assert settings["default_pool_size"] == str(
        pgbouncer.pool_sizes(MAX_CONNECTIONS).default_pool_size
    )
    assert settings["dns_max_ttl"] == "0"  # a recreated primary may come back elsewhere


def test_spec_holds_no_secret_outside_its_files_and_drifts_on_config() -> None:
    engine = PostgresEngine()
    service = _service()
    creds = engine.generate_credentials(service.name)
    cert = issue_server_certificate(create_ca(), ["temps-postgres-db1-pooler"], ["127.0.0.1"])
    spec = pgbouncer.spec(service, creds, 21009, cert, "temps-postgres-db1", MAX_CONNECTIONS)
    assert spec.name == "temps-postgres-db1-pooler"
    assert spec.image == "temps/pgbouncer:1"
    assert spec.labels["io.temps.role"] == "pooler"
    assert spec.labels["io.temps.service-id"] == str(service.id)
    assert spec.ports == {6432: 21009}
    assert spec.env == {}
    userlist = spec.files["/etc/temps/pgbouncer/userlist.txt"].decode()
    assert f'"temps_pooler" "{creds["pooler_password"]}"' in userlist
    assert f'"temps_pooler_admin" "{creds["pooler_admin_password"]}"' in userlist
    ini = spec.files["/etc/temps/pgbouncer/pgbouncer.ini"].decode()
    for secret in (creds["password"], creds["pooler_password"], creds["pooler_admin_password"]):
        assert secret not in ini
        assert not any(secret in part for part in spec.command)
    running = ContainerState(
        id="x",
        name=spec.name,
        status="running",
        labels=spec.labels,
        exit_code=0,
        host_ports=dict(spec.ports),
        image=spec.image,
        command=list(spec.command),
        mounts={spec.mount_path: spec.volume},
    )
    assert spec.drift(running) == []
    resized = pgbouncer.spec(service, creds, 21009, cert, "temps-postgres-db1", 200)
    assert resized.drift(running) == ["command"]


def test_secrets_of_services_created_before_the_pooler_are_derived_and_stable() -> None:
    old = {"replication_password": "r" * 32, "password": "p"}
    auth, admin = pgbouncer.secrets(old)
    assert (auth, admin) == pgbouncer.secrets({**old, "password": "rotated"})
    assert auth != admin
    assert "r" * 32 not in (auth, admin)
    assert pgbouncer.secrets({**old, "pooler_password": "a", "pooler_admin_password": "b"}) == (
        "a",
        "b",
    )


def _grant() -> LinkGrant:
    return LinkGrant(
        link_id=uuid4(),
        username="app",
        password="pw",
        resource="appdb",
        key_prefix=None,
        active=True,
    )


def test_database_url_is_pooled_and_direct_url_is_postgres() -> None:
    engine = PostgresEngine()
    service = _service()
    creds = engine.generate_credentials(service.name)
    info = engine.connection_info(service, creds, {"postgres": 21000, "pooler": 21009})
    assert info["pooler"] == {
        "host": "temps-postgres-db1-pooler",
        "port": 6432,
        "local_host": "127.0.0.1",
        "local_port": 21009,
        "pool_mode": "transaction",
    }
    variables, secret = engine.link_variables(info, _grant())
    assert variables["DATABASE_URL"] == (
        "postgresql://app:pw@temps-postgres-db1-pooler:6432/appdb?sslmode=require"
    )
    assert variables["POSTGRES_URL"] == variables["DATABASE_URL"]
    assert variables["DATABASE_DIRECT_URL"] == (
        "postgresql://app:pw@temps-postgres-db1:5432/appdb?sslmode=require"
    )
    assert variables["POSTGRES_HOST"] == "temps-postgres-db1"
    assert secret == {"POSTGRES_PASSWORD"}
    # `temps run`: both endpoints become their loopback publications.
    local = rewrite_variables(variables, loopback_map([info]))
    assert local["DATABASE_URL"] == "postgresql://app:pw@127.0.0.1:21009/appdb?sslmode=require"
    assert local["DATABASE_DIRECT_URL"] == (
        "postgresql://app:pw@127.0.0.1:21000/appdb?sslmode=require"
    )


def test_without_a_pooler_database_url_stays_direct() -> None:
    engine = PostgresEngine()
    service = _service()
    info = engine.connection_info(service, engine.generate_credentials("db1"), {"postgres": 1})
    assert "pooler" not in info
    variables, _ = engine.link_variables(info, _grant())
    assert variables["DATABASE_URL"] == variables["DATABASE_DIRECT_URL"]


class FakeConsole(pgbouncer.Console):
    """Records admin commands; PAUSE may hang or fail."""

    def __init__(self, pause_s: float = 0.0, fail: str | None = None) -> None:
        super().__init__(("127.0.0.1", 1), {"replication_password": "x"}, "CA")
        self.sent: list[str] = []
        self.pause_s = pause_s
        self.fail = fail

    async def command(self, sql: str, timeout_s: float = 10.0) -> None:
        self.sent.append(sql)
        if sql == self.fail:
            raise pgbouncer.PoolerError(f"{sql}: refused")
        if sql == "PAUSE" and self.pause_s:
            await asyncio.wait_for(asyncio.sleep(self.pause_s), timeout_s)


async def test_pause_holds_then_reconnects_and_resumes() -> None:
    console = FakeConsole()
    async with pgbouncer.Pause(console, 5) as hold:
        await asyncio.sleep(0.05)  # the restart
    assert console.sent == ["PAUSE", "RECONNECT", "RESUME"]
    assert hold.paused
    assert not hold.timed_out
    assert 0.05 <= hold.held_s < 1


async def test_pause_is_bounded_by_a_watchdog() -> None:
    console = FakeConsole()
    async with pgbouncer.Pause(console, 0.1) as hold:
        await asyncio.sleep(0.3)  # a restart slower than the bound
        assert console.sent == ["PAUSE", "RECONNECT", "RESUME"]  # resumed meanwhile
    assert console.sent == ["PAUSE", "RECONNECT", "RESUME"]  # and only once
    assert hold.timed_out
    assert hold.held_s == pytest.approx(0.1, abs=0.08)


async def test_a_pause_that_cannot_drain_in_time_does_not_block_the_restart() -> None:
    console = FakeConsole(pause_s=5)
    async with pgbouncer.Pause(console, 0.1) as hold:
        pass
    assert not hold.paused
    assert "not paused" in hold.error
    assert console.sent == ["PAUSE", "RESUME"]  # the half-done PAUSE is undone


async def test_a_refused_pause_is_reported() -> None:
    console = FakeConsole(fail="PAUSE")
    async with pgbouncer.Pause(console, 1) as hold:
        pass
    assert not hold.paused
    assert "refused" in hold.error


def test_container_name_leaves_room_for_the_suffix() -> None:
    service = replace(_service(), name="a" * 40)
    assert len(pgbouncer.container(service)) <= 63
