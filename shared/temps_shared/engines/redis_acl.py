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


# What no link user may do, prefixed or not (measured on 6.0.16, 7.0.15 and 8.0.2):
# - administer, reconfigure, wipe, stop or replicate the server (`@admin`, `@dangerous`, and by
#   name what 6.0 files elsewhere);
# - reach the whole keyspace through keyless commands: KEYS, RANDOMKEY, DBSIZE, INFO (its
#   keyspace section is DBSIZE), SWAPDB, MIGRATE — key patterns do not filter their answers;
# - touch what other tenants share: SCRIPT FLUSH/KILL empty or stop the one script cache. The
#   cache is content-addressed, so SCRIPT LOAD and SCRIPT EXISTS stay (redis-py's Script and
#   Lock load with them); EVAL/EVALSHA stay too: every `redis.call` inside a script is checked
#   against the caller's key patterns (declared keys or not) on every version measured.
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
    "-keys",
    "-randomkey",
    "-dbsize",
    "-info",
    "-swapdb",
    "-migrate",
    "-script",
    "+script|load",
    "+script|exists",
)
# Redis 7+: FUNCTION LOAD REPLACE / FUNCTION FLUSH would replace or drop another tenant's library
# (its FCALL would then run foreign code with its rights). Only the platform's admin loads
# functions; FCALL stays (a function runs with the caller's key rights).
LINK_DENIED_7 = ("-function",)
# A prefixed user's keyless views beyond its prefix: SCAN walks every key (its answer is not
# filtered by the key pattern on 6, 7 or 8).
PREFIXED_DENIED = ("-scan",)
# Redis 7+: invalidation messages of CLIENT TRACKING BCAST name any key that changes, and PUBSUB
# CHANNELS/NUMSUB list channels beyond the channel pattern.
PREFIXED_DENIED_7 = ("-client|tracking", "-pubsub")
# Redis 6.0 has no channel ACLs: a prefixed user would read and write every channel, so it gets
# no Pub/Sub at all. (CLIENT, tracking included, is `@admin` there, denied above.)
PREFIXED_DENIED_6 = ("-@pubsub",)


def link_rules(key_prefix: str | None, major: int) -> tuple[str, ...]:
    """A link user's keys, channels and commands on a Redis of this major version."""
    if key_prefix:
        keys: tuple[str, ...] = (f"~{key_prefix}:*",)
        channels: tuple[str, ...] = (f"&{key_prefix}:*",) if major >= 7 else ()
        prefixed = PREFIXED_DENIED + (PREFIXED_DENIED_7 if major >= 7 else PREFIXED_DENIED_6)
    else:
        keys, channels, prefixed = ("~*",), (("&*",) if major >= 7 else ()), ()
    version_denied = LINK_DENIED_7 if major >= 7 else ()
    return ("resetkeys", *keys, *channels, "+@all", *LINK_DENIED, *version_denied, *prefixed)


def link_user(grant: LinkGrant, major: int) -> AclUser:
    """A project + environment's user: every key and channel (or only those under its
    `key_prefix`), every command but those above; off once the link is revoked. Applied with
    `reset` on every reconcile, so a user made under older rules loses what it no longer gets."""
    return AclUser(
        grant.username, grant.active, grant.password, link_rules(grant.key_prefix, major)
    )
