"""Redis: an RDB snapshot through the backup ACL user (`redis-cli --rdb`, a replica's sync),
taken inside the container; restored by stopping the server, putting the RDB in its data
directory and starting it again (with AOF on, the AOF is rebuilt from the restored data).

Figures are taken from that very RDB: before it is streamed out, a second `redis-server` in the
service's container loads it (unix socket only, no TCP port, no persistence) and one Lua script
counts its keys and digests a sample; the server is shut down before the upload starts. Cost:
memory for a second copy of the dataset in the container for the time of the load and the
script (the Lua script lists every key name). The same script runs on a restored service.

Per database: the number of keys without a TTL (exact), and for the first `SAMPLE` of them by
name, SHA-1 of the name → type and SHA-1 of a canonical encoding of the value (sorted for sets
and hashes). Keys with a TTL are only counted, under `_volatile` (informational): they may have
expired by the time a backup is verified or restored."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker

from temps_shared.backups.codec import CHUNK, decode
from temps_shared.backups.figures import SUMMARY
from temps_shared.backups.protocol import (
    ArtifactSource,
    Figures,
    OpenArtifact,
    ServiceHandle,
    Snapshot,
)
from temps_shared.engines.redis import DATA_MOUNT, PORT
from temps_shared.engines.redis_acl import ADMIN_USER, BACKUP_USER
from temps_shared.runtime.container_io import (
    ExecFailed,
    collect,
    exec_output,
    put_file,
    start_container,
    stop_container,
)

SPOOL_DIR = "/tmp"
SPOOL_NAME = "temps-backup.rdb"
SPOOL = f"{SPOOL_DIR}/{SPOOL_NAME}"
# redis-cli writes the RDB to a file (6.x cannot write it to stdout): spooled in the
# container's /tmp, measured, streamed out, removed whatever happened.
RDB_COMMAND = (
    f"redis-cli -h 127.0.0.1 -p {PORT} --user {BACKUP_USER} --no-auth-warning --rdb {SPOOL} >&2"
)
FIGURES_SOCKET = "/tmp/temps-figures.sock"
SAMPLE = 64
# KEYS (not SCAN: exact, no duplicates) in a script nothing else runs beside.
FIGURES_SCRIPT = """
local function enc(parts)
  local out = {}
  for i, p in ipairs(parts) do out[i] = #p .. ':' .. p end
  return table.concat(out, ',')
end
local function digest(key)
  local kind = redis.call('TYPE', key).ok
  local body = ''
  if kind == 'string' then body = enc({redis.call('GET', key)})
  elseif kind == 'list' then body = enc(redis.call('LRANGE', key, 0, -1))
  elseif kind == 'set' then
    local members = redis.call('SMEMBERS', key); table.sort(members); body = enc(members)
  elseif kind == 'zset' then body = enc(redis.call('ZRANGE', key, 0, -1, 'WITHSCORES'))
  elseif kind == 'hash' then
    local flat, pairs_ = redis.call('HGETALL', key), {}
    for i = 1, #flat, 2 do pairs_[#pairs_ + 1] = enc({flat[i], flat[i + 1]}) end
    table.sort(pairs_); body = enc(pairs_)
  elseif kind == 'stream' then
    local parts = {}
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '+')) do
      parts[#parts + 1] = entry[1]; parts[#parts + 1] = enc(entry[2])
    end
    body = enc(parts)
  end
  return kind .. ':' .. redis.sha1hex(body)
end
local persistent, volatile = {}, 0
for _, key in ipairs(redis.call('KEYS', '*')) do
  if redis.call('PTTL', key) >= 0 then volatile = volatile + 1
  else persistent[#persistent + 1] = key end
end
table.sort(persistent)
local sample = {}
for i = 1, math.min(tonumber(ARGV[1]), #persistent) do
  sample[redis.sha1hex(persistent[i])] = digest(persistent[i])
end
return cjson.encode({keys = #persistent, volatile = volatile, sample = sample})
"""
READY_WAIT_S = 60.0
# Settings the server restarts with during a restore (its own come back afterwards).
RESTART_WITH = {"appendonly": "no", "save": "3600 1"}


def _admin(
    client: docker.DockerClient, container: str, credentials: dict[str, str], *args: str
) -> str:
    argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(PORT), "--user", ADMIN_USER,
            "--no-auth-warning", *args]  # fmt: skip
    return collect(exec_output(client, container, argv, {"REDISCLI_AUTH": credentials["password"]}))


def _config_get(
    client: docker.DockerClient, container: str, credentials: dict[str, str], key: str
) -> str:
    lines = _admin(client, container, credentials, "CONFIG", "GET", key).split("\n")
    return lines[1] if len(lines) > 1 else ""


def _configure(
    client: docker.DockerClient,
    container: str,
    credentials: dict[str, str],
    settings: dict[str, str],
) -> None:
    """Apply `settings` live and write them to the config file (CONFIG REWRITE)."""
    for key, value in settings.items():
        _admin(client, container, credentials, "CONFIG", "SET", key, value)
    _admin(client, container, credentials, "CONFIG", "REWRITE")


def _wait_ready(client: docker.DockerClient, container: str, credentials: dict[str, str]) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        try:
            if _admin(client, container, credentials, "PING").strip() == "PONG":
                return
        except (ExecFailed, docker.errors.APIError):
            pass
        if time.monotonic() >= deadline:
            raise ExecFailed(f"Redis did not answer within {READY_WAIT_S:.0f}s after the restore")
        time.sleep(0.3)


# `redis-cli <args>` against one server: its output.
RedisCli = Callable[[list[str]], str]
KEYSPACE_LINE = re.compile(r"^db(\d+):")


def figures_with(cli: RedisCli) -> Figures:
    """Keys and sampled digests of every non-empty database of the server `cli` talks to."""
    keyspace = cli(["INFO", "keyspace"])
    databases: dict[str, Figures] = {}
    volatile: dict[str, int] = {}
    for line in keyspace.splitlines():
        match = KEYSPACE_LINE.match(line.strip())
        if match is None:
            continue
        db = match.group(1)
        output = cli(["-n", db, "EVAL", FIGURES_SCRIPT, "0", str(SAMPLE)])
        try:
            found = json.loads(output)
        except ValueError as exc:
            raise ExecFailed(f"the figures script answered {output[:200]!r}") from exc
        sample = found["sample"] if isinstance(found["sample"], dict) else {}  # {} → [] in Lua
        if found["keys"]:
            databases[db] = {"keys": found["keys"], "sample": sample}
        if found["volatile"]:
            volatile[db] = found["volatile"]
    keys = sum(d["keys"] for d in databases.values())
    return {
        "databases": databases,
        "_volatile": volatile,
        SUMMARY: f"{len(databases)} databases, {keys} keys without TTL "
        f"({sum(len(d['sample']) for d in databases.values())} sampled), "
        f"{sum(volatile.values())} with a TTL",
    }


def _run(handle: ServiceHandle, argv: list[str], env: dict[str, str] | None = None) -> str:
    return collect(exec_output(handle.client, handle.container, argv, env or {}, handle.timeout_s))


def _spool_figures(handle: ServiceHandle) -> Figures:
    """The figures of the spooled RDB, loaded in a private server (unix socket, no port)."""
    socket_cli = ["redis-cli", "-s", FIGURES_SOCKET]
    stop_private = f"{' '.join(socket_cli)} SHUTDOWN NOSAVE >/dev/null 2>&1; rm -f {FIGURES_SOCKET}"
    _run(handle, ["sh", "-c", f"{stop_private}; true"])  # one a killed worker left running
    _run(handle, ["redis-server", "--port", "0", "--unixsocket", FIGURES_SOCKET,
                  "--unixsocketperm", "700", "--dir", SPOOL_DIR, "--dbfilename", SPOOL_NAME,
                  "--save", "", "--appendonly", "no", "--daemonize", "yes",
                  "--pidfile", f"{SPOOL_DIR}/temps-figures.pid", "--logfile", ""])  # fmt: skip
    try:
        deadline = time.monotonic() + handle.timeout_s  # a large RDB takes long to load
        ping = ["sh", "-c", f"{' '.join(socket_cli)} PING 2>&1 || true"]
        while _run(handle, ping).strip() != "PONG":
            if time.monotonic() >= deadline:
                raise ExecFailed(f"the RDB did not load within {handle.timeout_s:.0f}s")
            time.sleep(0.2)
        return figures_with(lambda args: _run(handle, [*socket_cli, *args]))
    finally:
        with contextlib.suppress(ExecFailed, docker.errors.APIError):
            _run(handle, ["sh", "-c", f"{stop_private}; true"])


class RedisBackup:
    @contextlib.contextmanager
    def snapshot(self, handle: ServiceHandle) -> Iterator[Snapshot]:
        figures: Figures = {}

        def chunks() -> Iterator[bytes]:
            try:
                _run(handle, ["sh", "-c", RDB_COMMAND],
                     {"REDISCLI_AUTH": handle.credentials["backup_password"]})  # fmt: skip
                figures.update(_spool_figures(handle))
                yield from exec_output(
                    handle.client, handle.container, ["cat", SPOOL], {}, handle.timeout_s
                )
            finally:
                with contextlib.suppress(ExecFailed, docker.errors.APIError):
                    _run(handle, ["rm", "-f", SPOOL])

        yield Snapshot([ArtifactSource("dump.rdb", chunks, {"format": "rdb"})], lambda: figures)

    def figures(self, handle: ServiceHandle) -> Figures:
        auth = {"REDISCLI_AUTH": handle.credentials["password"]}
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(PORT), "--user", ADMIN_USER,
               "--no-auth-warning"]  # fmt: skip
        return figures_with(lambda args: _run(handle, [*cli, *args], auth))

    def restore(
        self, handle: ServiceHandle, artifacts: list[dict[str, Any]], open_artifact: OpenArtifact
    ) -> None:
        target = handle
        (artifact,) = [a for a in artifacts if a.get("format") == "rdb"]
        client, container, credentials = target.client, target.container, target.credentials
        with tempfile.TemporaryFile() as plain:
            # Decoded first (the RDB's size goes into the archive header), before anything
            # about the service changes.
            with open_artifact(artifact) as stored:
                decode(stored, target.identity, plain)
            size = plain.tell()
            owner_text = collect(
                exec_output(client, container, ["stat", "-c", "%u %g", DATA_MOUNT], {})
            )
            uid, gid = (int(part) for part in owner_text.split())
            # The server must come back from the RDB: not from an AOF it would replay instead,
            # and not with persistence off (then the image's entrypoint removes the RDB).
            live = {key: _config_get(client, container, credentials, key) for key in RESTART_WITH}
            _configure(client, container, credentials, RESTART_WITH)
            stop_container(client, container, timeout_s=30)
            plain.seek(0)
            put_file(
                client,
                container,
                f"{DATA_MOUNT}/dump.rdb",
                size,
                iter(lambda: plain.read(CHUNK), b""),
                (uid, gid),
            )
            start_container(client, container)
            _wait_ready(client, container, credentials)
            _configure(client, container, credentials, live)
