from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError
from temps_shared.engines import ENGINES, default_version
from temps_shared.engines.redis import (
    RedisEngine,
    RedisParameters,
    live_settings,
    render_config,
    server_command,
)
from temps_shared.engines.redis_acl import (
    BACKUP_USER,
    MONITOR_USER,
    platform_users,
    render_acl_file,
    setuser_args,
)
from temps_shared.settings import TempsSettings
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import create_ca, issue_server_certificate

CREDENTIALS = {
    "username": "temps_admin",
    "password": "adminpw",
    "monitor_password": "monitorpw",
    "backup_password": "backuppw",
}


def _sha(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def _service(version: str = "7", **parameters: Any) -> ServiceRecord:
    now = datetime.now(UTC)
    return ServiceRecord(
        id=uuid4(),
        name="cache",
        service_type="redis",
        version=version,
        parameters=RedisParameters.model_validate(parameters).model_dump(),
        resources={},
        secrets_ciphertext="",
        desired_state="running",
        generation=1,
        purged=False,
        created_at=now,
        updated_at=now,
    )


def test_defaults_follow_the_spec() -> None:
    assert RedisParameters().model_dump() == {
        "memory_mb": 512,
        "persistence": "none",
        "eviction": "allkeys-lru",
        "maxclients": 10000,
    }


@pytest.mark.parametrize(
    ("given", "memory_mb"),
    [({"memory": "512MB"}, 512), ({"memory": "1GB"}, 1024), ({"memory": 64}, 64)],
)
def test_memory_alias_with_units(given: dict[str, Any], memory_mb: int) -> None:
    assert RedisParameters.model_validate(given).memory_mb == memory_mb


@pytest.mark.parametrize(
    ("given", "field", "says"),
    [
        ({"eviction": "lru-please"}, "eviction", "'allkeys-lru'"),
        ({"persistence": "sometimes"}, "persistence", "'rdb+aof'"),
        ({"maxclients": 0}, "maxclients", "greater than or equal to 1"),
        ({"memory_mb": 0}, "memory_mb", "greater than or equal to 8"),
        ({"memory": "lots"}, "memory", "512MB"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_bad_parameters_name_the_field(given: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RedisParameters.model_validate(given)
    assert field in str(caught.value)
    assert says in str(caught.value)


def test_every_redis_eviction_policy_is_accepted() -> None:
    for policy in (
        "noeviction",
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ):
        assert RedisParameters(eviction=policy).eviction == policy


@pytest.mark.parametrize(
    ("persistence", "appendonly", "save"),
    [
        ("none", "no", ""),
        ("rdb", "no", "3600 1 300 100 60 10000"),
        ("aof", "yes", ""),
        ("rdb+aof", "yes", "3600 1 300 100 60 10000"),
    ],
)
def test_live_settings(persistence: str, appendonly: str, save: str) -> None:
    settings = live_settings(
        RedisParameters.model_validate(
            {"memory_mb": 64, "persistence": persistence, "maxclients": 50}
        )
    )
    assert settings == {
        "maxmemory-policy": "allkeys-lru",
        "maxmemory": str(64 * 1024 * 1024),
        "maxclients": "50",
        "appendonly": appendonly,
        "save": save,
    }


def test_config_file_has_one_save_point_per_line_or_none() -> None:
    # Redis 6.0 reads `save <seconds> <changes>` only, one pair per line.
    rdb = render_config(RedisParameters(persistence="rdb"))
    assert "save 3600 1\nsave 300 100\nsave 60 10000\n" in rdb
    assert "appendonly no\n" in rdb
    off = render_config(RedisParameters())
    assert 'save ""\n' in off
    assert "maxmemory 536870912\n" in off


def test_the_command_holds_nothing_a_parameter_changes() -> None:
    """Parameters are applied live: the command (compared for drift) must not depend on them."""
    command = server_command()
    assert command[:2] == ["redis-server", "/data/temps/redis.conf"]
    joined = " ".join(command)
    for live in ("maxmemory", "maxclients", "appendonly", "--save"):
        assert live not in joined
    assert "--tls-port 6380" in joined
    assert "--tls-auth-clients no" in joined
    assert "--aclfile /data/temps/users.acl" in joined
    assert "--repl-diskless-sync-delay 0" in joined
    engine = RedisEngine()
    ca = create_ca()
    cert = issue_server_certificate(ca, ["temps-redis-cache"], ["127.0.0.1"])
    ports = {"redis": 21001, "redis-tls": 21002}
    small = engine.container_spec(_service(memory_mb=64), CREDENTIALS, ports, cert, "temps/redis:7")
    large = engine.container_spec(
        _service(memory_mb=128, persistence="aof", eviction="noeviction", maxclients=5),
        CREDENTIALS,
        ports,
        cert,
        "temps/redis:7",
    )
    assert small.command == large.command
    assert small.ports == {6379: 21001, 6380: 21002}
    assert small.mount_path == "/data"
    assert b"maxmemory 67108864" in small.files["/etc/temps/redis/redis.conf"]
    assert set(small.files) == {
        "/etc/temps/tls/server.crt",
        "/etc/temps/tls/server.key",
        "/etc/temps/tls/ca.crt",
        "/etc/temps/redis/redis.conf",
        "/etc/temps/redis/users.acl",
    }
    assert not small.env  # secrets travel only as hashes in the ACL file


def test_acl_file_for_redis_7_and_8() -> None:
    text = render_acl_file(platform_users(CREDENTIALS, 7))
    assert text.splitlines() == [
        "user default off resetkeys resetchannels -@all",
        f"user temps_admin on {_sha('adminpw')} ~* &* +@all",
        f"user {MONITOR_USER} on {_sha('monitorpw')} resetchannels -@all +ping +info +dbsize "
        "+client|list +config|get +slowlog|get +memory|stats +latency|latest",
        f"user {BACKUP_USER} on {_sha('backuppw')} resetchannels -@all +ping +sync +psync "
        "+replconf",
    ]
    for password in CREDENTIALS.values():
        if password.endswith("pw"):
            assert password not in text


def test_acl_file_for_redis_6_has_no_channel_rules() -> None:
    """Redis 6.0 knows no `&`/`resetchannels`; its default user must let `HELLO … AUTH` in."""
    lines = render_acl_file(platform_users(CREDENTIALS, 6)).splitlines()
    assert lines[0] == "user default off resetkeys -@all +hello"
    assert lines[1] == f"user temps_admin on {_sha('adminpw')} ~* +@all"
    assert not any("&" in line or "channels" in line for line in lines)


def test_setuser_rebuilds_the_user_from_scratch() -> None:
    admin = platform_users(CREDENTIALS, 8)[1]
    assert setuser_args(admin) == [
        "temps_admin",
        "reset",
        "on",
        _sha("adminpw"),
        "~*",
        "&*",
        "+@all",
    ]


def test_credentials_and_connection_info() -> None:
    engine = RedisEngine()
    credentials = engine.generate_credentials("cache")
    assert credentials["username"] == "temps_admin"
    assert len({credentials[k] for k in ("password", "monitor_password", "backup_password")}) == 3
    info = engine.connection_info(_service(), credentials, {"redis": 21001, "redis-tls": 21002})
    assert info == {
        "host": "temps-redis-cache",
        "port": 6379,
        "local_host": "127.0.0.1",
        "local_port": 21001,
        "tls_port": 6380,
        "local_tls_port": 21002,
    }
    view = engine.credentials_view(CREDENTIALS, info, "CA")
    assert view == {
        "username": "temps_admin",
        "password": "adminpw",
        "connection_url": "redis://temps_admin:adminpw@temps-redis-cache:6379/0",
        "local_connection_url": "redis://temps_admin:adminpw@127.0.0.1:21001/0",
        "ca_certificate": "CA",
    }


def test_default_version_is_the_specs_where_offered() -> None:
    versions = TempsSettings().images["redis"]
    assert versions == {"6": "temps/redis:6", "7": "temps/redis:7", "8": "temps/redis:8"}
    assert default_version(versions, ENGINES["redis"]) == "7"
    assert default_version({"6": "a", "8": "b"}, ENGINES["redis"]) == "8"  # not built: newest
    assert default_version({"13": "a", "17": "b"}, ENGINES["postgres"]) == "17"
