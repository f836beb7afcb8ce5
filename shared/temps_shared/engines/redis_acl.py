"""Redis ACL users: the one place that says who may do what on a Redis service.

The platform owns the ACL file (`--aclfile`): it seeds it when a container starts for the first
time and, on every reconcile, applies the same definitions live (`ACL SETUSER … reset …`) and
saves them (`ACL SAVE`) when anything changed. Users other than the platform's are left alone.
Passwords are stored in the file as SHA-256 hashes (`#<hex>`), never in plaintext.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis

from temps_shared.links import LinkGrant

ADMIN_USER = "temps_admin"
MONITOR_USER = "temps_monitor"
BACKUP_USER = "temps_backup"

# Read-only introspection: what health checks and metrics read, and nothing that writes.
MONITOR_COMMANDS = (
    "+ping",
    "+info",
    "+dbsize",
    "+client|list",
    "+config|get",
    "+slowlog|get",
    "+memory|stats",
    "+latency|latest",
)
# Replication only: enough for `redis-cli --rdb` (a consistent RDB snapshot), nothing else.
BACKUP_COMMANDS = ("+ping", "+sync", "+psync", "+replconf")


@dataclass(frozen=True)
class AclUser:
    name: str
    enabled: bool
    password: str | None  # plaintext in memory only; rendered as its SHA-256
    rules: tuple[str, ...]  # keys, channels and commands, in Redis ACL syntax

    def tokens(self) -> list[str]:
        tokens = ["on" if self.enabled else "off"]
        if self.password is not None:
            tokens.append("#" + hashlib.sha256(self.password.encode()).hexdigest())
        return tokens + list(self.rules)


def _channel_rules(major: int, *, all_channels: bool) -> tuple[str, ...]:
    """Channel permissions exist from Redis 6.2; 7 denies every channel unless granted."""
    if major < 7:
        return ()  # 6.0 has no channel ACLs: Pub/Sub is governed by the command rules alone
    return ("&*",) if all_channels else ("resetchannels",)


def platform_users(credentials: dict[str, str], major: int) -> list[AclUser]:
    """The users every Redis service has: admin (everything), monitor, backup; `default` off."""
    # Redis 6.0 checks `HELLO 3 AUTH user pass` (how RESP3 clients such as redis-py connect)
    # against the not-yet-authenticated `default` user: it must allow HELLO, and only that.
    # HELLO without AUTH still answers NOAUTH, and nobody can log in as a user that is off.
    default_commands = ("-@all", "+hello") if major < 7 else ("-@all",)
    return [
        AclUser(
            "default",
            False,
            None,
            ("resetkeys", *_channel_rules(major, all_channels=False), *default_commands),
        ),
        AclUser(
            credentials["username"],
            True,
            credentials["password"],
            ("~*", *_channel_rules(major, all_channels=True), "+@all"),
        ),
        AclUser(
            MONITOR_USER,
            True,
            credentials["monitor_password"],
            (*_channel_rules(major, all_channels=False), "-@all", *MONITOR_COMMANDS),
        ),
        AclUser(
            BACKUP_USER,
            True,
            credentials["backup_password"],
            (*_channel_rules(major, all_channels=False), "-@all", *BACKUP_COMMANDS),
        ),
    ]


def render_acl_file(users: list[AclUser]) -> str:
    """The ACL file, in the format `--aclfile` loads and `ACL SAVE` writes."""
    return "".join(f"user {user.name} {' '.join(user.tokens())}\n" for user in users)


def setuser_args(user: AclUser) -> list[str]:
    """`ACL SETUSER` arguments that make `user` exactly as defined, whatever it was before."""
    return [user.name, "reset", *user.tokens()]


async def apply_users(client: aioredis.Redis, users: list[AclUser]) -> bool:
    """Make the live users match `users` and save the ACL file when that changed anything.

    `reset` rebuilds a user in one atomic command; connections already authenticated stay.
    Returns whether the file was saved.
    """
    before = await client.acl_list()
    for user in users:
        # Raw rules, exactly as in the file (redis-py's acl_setuser cannot express them all).
        await client.execute_command("ACL", "SETUSER", *setuser_args(user))  # type: ignore[no-untyped-call]
    if await client.acl_list() == before:
        return False
    await client.acl_save()
    return True


# What a link user may not do: administer, reconfigure, wipe or stop the server.
LINK_DENIED = (
    "-@admin",
    "-@dangerous",
    "-flushall",
    "-flushdb",
    "-config",
    "-debug",
    "-acl",
    "-shutdown",
    "-monitor",
)


def link_user(grant: LinkGrant, major: int) -> AclUser:
    """A project + environment's user: every key and channel (or only those under its
    `key_prefix`), every command but the dangerous ones; off once the link is revoked."""
    keys = f"~{grant.key_prefix}:*" if grant.key_prefix else "~*"
    channels: tuple[str, ...] = ()
    if major >= 7:  # channel ACLs exist from 6.2; Debian ships 6.0 and 7.0
        channels = (f"&{grant.key_prefix}:*",) if grant.key_prefix else ("&*",)
    return AclUser(
        grant.username,
        grant.active,
        grant.password,
        ("resetkeys", keys, *channels, "+@all", *LINK_DENIED),
    )
