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
    link_rules,
    link_user,
    platform_users,
    render_acl_file,
    setuser_args,
)
from temps_shared.links import LinkGrant
from temps_shared.settings import TempsSettings
from temps_shared.store.links import LinkRecord, keyspace_overlaps
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


# --- link users (issue 16): what a project's user may not do, per Redis major -------------------

# Denied to every link user, whatever its prefix and version.
EVERY_LINK_DENIES = (
    "-@admin",
    "-@dangerous",
    "-flushall",
    "-flushdb",
    "-keys",
    "-randomkey",
    "-dbsize",
    "-info",
    "-swapdb",
    "-migrate",
    "-script",
)


def _effective(rules: tuple[str, ...], command: str) -> str | None:
    """The last rule naming `command` exactly (Redis applies rules left to right)."""
    named = [r for r in rules if r[1:] == command and r[0] in "+-"]
    return named[-1][0] if named else None


@pytest.mark.parametrize("major", [6, 7, 8])
@pytest.mark.parametrize("prefix", [None, "shop"])
def test_link_users_never_get_keyspace_wide_or_shared_state_commands(
    major: int, prefix: str | None
) -> None:
    rules = link_rules(prefix, major)
    assert rules[0] == "resetkeys"
    assert rules.index("+@all") < min(rules.index(d) for d in EVERY_LINK_DENIES)
    for denied in EVERY_LINK_DENIES:
        assert _effective(rules, denied[1:]) == "-", (major, prefix, denied)
    # The script cache is content-addressed: loading cannot replace another tenant's script,
    # and redis-py's Script/Lock need SCRIPT LOAD; EVAL stays (keys checked inside scripts).
    assert rules[rules.index("-script") + 1 :][:2] == ("+script|load", "+script|exists")
    assert not any(r.lstrip("+-") in ("eval", "evalsha", "@scripting") for r in rules)
    # FUNCTION exists from 7 only: naming it on 6.0 makes ACL SETUSER fail.
    assert ("-function" in rules) == (major >= 7)
    assert not any("function" in r or "fcall" in r for r in rules if major < 7)


@pytest.mark.parametrize("major", [6, 7, 8])
def test_a_prefixed_user_is_confined_to_its_prefix(major: int) -> None:
    rules = link_rules("shop", major)
    assert "~shop:*" in rules
    assert "~*" not in rules
    assert "-scan" in rules  # SCAN's answer is not filtered by key patterns (measured)
    if major >= 7:
        assert "&shop:*" in rules
        assert "&*" not in rules
        assert {"-client|tracking", "-pubsub"} <= set(rules)
        assert "-@pubsub" not in rules
    else:  # 6.0: no channel ACLs at all, so no Pub/Sub for a prefixed user
        assert not any(r.startswith("&") or "channels" in r for r in rules)
        assert "-@pubsub" in rules
        assert "-client|tracking" not in rules  # unknown to 6.0's ACL SETUSER (CLIENT is @admin)


@pytest.mark.parametrize("major", [6, 7, 8])
def test_an_unprefixed_user_keeps_scan_and_pubsub(major: int) -> None:
    rules = link_rules(None, major)
    assert "~*" in rules
    assert ("&*" in rules) == (major >= 7)
    for kept in ("-scan", "-@pubsub", "-pubsub", "-client|tracking"):
        assert kept not in rules


def test_link_user_setuser_resets_then_applies_the_rules() -> None:
    grant = LinkGrant(uuid4(), "link_shop_prod_abc123", "linkpw", "", "shop", True)
    args = setuser_args(link_user(grant, 7))
    assert args[:4] == ["link_shop_prod_abc123", "reset", "on", _sha("linkpw")]
    assert tuple(args[4:]) == link_rules("shop", 7)
    revoked = link_user(LinkGrant(uuid4(), "u", "pw", "", None, False), 6)
    assert setuser_args(revoked)[2] == "off"
    assert "linkpw" not in " ".join(args)


def _link(project: str, prefix: str | None, state: str = "active") -> LinkRecord:
    return LinkRecord(
        id=uuid4(),
        service_id=uuid4(),
        service_type="redis",
        project_id=PROJECTS[project],
        environment="production",
        key_prefix=prefix,
        secrets_ciphertext="",
        desired_state=state,
        created_at=datetime.now(UTC),
    )


PROJECTS = {"a": uuid4(), "b": uuid4()}


def test_keyspace_overlaps_between_projects() -> None:
    a_open, a_shop = _link("a", None), _link("a", "shop")
    # A new unprefixed link of b would reach every key of a's links, prefixed or not.
    assert keyspace_overlaps([a_open, a_shop], PROJECTS["b"], None) == [a_open, a_shop]
    # The same prefix is the same keyspace; another prefix is not.
    assert keyspace_overlaps([a_shop], PROJECTS["b"], "shop") == [a_shop]
    assert keyspace_overlaps([a_shop], PROJECTS["b"], "blog") == []
    # Issue 16's rule: a prefix is enough next to another project's unprefixed link.
    assert keyspace_overlaps([a_open], PROJECTS["b"], "blog") == []
    # The same project's other environments, and revoked links, never count.
    assert keyspace_overlaps([a_open, a_shop], PROJECTS["a"], None) == []
    assert keyspace_overlaps([_link("a", None, "revoked")], PROJECTS["b"], None) == []
