"""The pooler in front of every PostgreSQL service: PgBouncer (`temps/pgbouncer`, Debian's 1.24)
in its own container, transaction pooling with protocol-level prepared statements
(`max_prepared_statements`), TLS on both sides with the installation CA.

Users are the service's own: PgBouncer looks a client's SCRAM secret up through `auth_query`
as the least-privileged role `temps_pooler`, which may only execute one SECURITY DEFINER
function in the `postgres` database (`temps_pooler.lookup`), and passes the SCRAM exchange
through to the server. Superusers and replication roles are not served through the pooler
(the administrator uses the direct endpoint). The admin console (`PAUSE`, `RESUME`,
`RECONNECT`) is reached as `temps_pooler_admin`, a user that exists only in
PgBouncer's auth file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import ssl
import time
from dataclasses import dataclass

import asyncpg

from temps_shared.engines.base import ServiceNotReadyError
from temps_shared.engines.scram import password_clause
from temps_shared.ids import LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE_ID, container_name
from temps_shared.runtime import ContainerSpec
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import ServerCertificate

log = logging.getLogger(__name__)

IMAGE = "temps/pgbouncer:1"
PORT = 6432
PORT_NAME = "pooler"  # the published port's name (one loopback port per service)
MEMBER = "pooler"  # the container's role label
POOL_MODE = "transaction"
AUTH_ROLE = "temps_pooler"
ADMIN_USER = "temps_pooler_admin"
AUTH_DATABASE = "postgres"
AUTH_SCHEMA = "temps_pooler"
LOOKUP_FUNCTION = f"{AUTH_SCHEMA}.lookup"
CONFIG_DIR = "/etc/temps/pgbouncer"
RUN_DIR = "/run/temps-pgbouncer"  # where the entrypoint copies the files (pgbouncer-owned)
TLS_DIR = "/etc/temps/tls"
DATA_MOUNT = "/var/lib/temps-pgbouncer"
MAX_PREPARED_STATEMENTS = 200
PAUSE_TIMEOUT_S = 30.0


def container(service: ServiceRecord) -> str:
    return f"{container_name(service.service_type, service.name)}-{MEMBER}"


@dataclass(frozen=True)
class PoolSizes:
    default_pool_size: int  # server connections per (database, user)
    reserve_pool_size: int
    max_db_connections: int  # server connections per database, all users
    max_client_conn: int


def pool_sizes(max_connections: int) -> PoolSizes:
    """Derived from the server's `max_connections`: the pooler may take 3/4 of it (the rest
    stays for direct sessions, superusers and the platform's own roles); one user's pool a
    quarter of that; clients queue far beyond."""
    budget = max(4, max_connections * 3 // 4)
    return PoolSizes(
        default_pool_size=max(2, budget // 4),
        reserve_pool_size=max(1, budget // 16),
        max_db_connections=budget,
        max_client_conn=max(100, max_connections * 10),
    )


def secrets(credentials: dict[str, str]) -> tuple[str, str]:
    """(auth role's password, admin console password). Services created before the pooler
    have no stored ones: derived from their replication password (never rotated)."""

    def derived(purpose: str) -> str:
        key = credentials["replication_password"].encode()
        return hmac.new(key, f"temps-pooler:{purpose}".encode(), hashlib.sha256).hexdigest()

    return (
        credentials.get("pooler_password") or derived("auth"),
        credentials.get("pooler_admin_password") or derived("admin"),
    )


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def config(primary_host: str, max_connections: int) -> str:
    """pgbouncer.ini (no secret in it: passwords live in userlist.txt)."""
    sizes = pool_sizes(max_connections)
    auth_query = f"SELECT uname, phash FROM {LOOKUP_FUNCTION}($1)"
    lines = [
        "[databases]",
        f"* = host={primary_host} port=5432",
        "",
        "[pgbouncer]",
        "listen_addr = *",
        f"listen_port = {PORT}",
        "unix_socket_dir =",
        "pidfile =",
        "auth_type = scram-sha-256",
        f"auth_file = {RUN_DIR}/userlist.txt",
        f"auth_user = {AUTH_ROLE}",
        f"auth_dbname = {AUTH_DATABASE}",
        f"auth_query = {auth_query}",
        f"admin_users = {ADMIN_USER}",
        f"stats_users = {ADMIN_USER}",
        f"pool_mode = {POOL_MODE}",
        f"max_prepared_statements = {MAX_PREPARED_STATEMENTS}",
        f"default_pool_size = {sizes.default_pool_size}",
        f"reserve_pool_size = {sizes.reserve_pool_size}",
        f"max_db_connections = {sizes.max_db_connections}",
        f"max_client_conn = {sizes.max_client_conn}",
        "ignore_startup_parameters = extra_float_digits",
        # A recreated primary may come back on another address: resolve on each new connection.
        "dns_max_ttl = 0",
        # Clients queue (PAUSE, a full pool) at most this long before an error.
        "query_wait_timeout = 120",
        "server_reset_query =",
        "client_tls_sslmode = require",
        f"client_tls_key_file = {RUN_DIR}/server.key",
        f"client_tls_cert_file = {RUN_DIR}/server.crt",
        f"client_tls_ca_file = {RUN_DIR}/ca.crt",
        "server_tls_sslmode = verify-full",
        f"server_tls_ca_file = {RUN_DIR}/ca.crt",
        "log_connections = 0",
        "log_disconnections = 0",
        "",
    ]
    return "\n".join(lines)


def spec(
    service: ServiceRecord,
    credentials: dict[str, str],
    local_port: int,
    certificate: ServerCertificate,
    primary_host: str,
    max_connections: int,
    image: str = IMAGE,
) -> ContainerSpec:
    """The pooler's container. The configuration's hash rides on the command line, so a
    changed configuration is drift (files alone are not compared)."""
    auth_password, admin_password = secrets(credentials)
    ini = config(primary_host, max_connections)
    userlist = (
        f"{_quote(AUTH_ROLE)} {_quote(auth_password)}\n"
        f"{_quote(ADMIN_USER)} {_quote(admin_password)}\n"
    )
    digest = hashlib.sha256(ini.encode()).hexdigest()[:16]
    name = container(service)
    return ContainerSpec(
        name=name,
        image=image,
        command=["pgbouncer", f"config={digest}"],
        labels={LABEL_MANAGED: "true", LABEL_SERVICE_ID: str(service.id), LABEL_ROLE: MEMBER},
        volume=f"{name}-data",
        mount_path=DATA_MOUNT,
        ports={PORT: local_port},
        files={
            f"{CONFIG_DIR}/pgbouncer.ini": ini.encode(),
            f"{CONFIG_DIR}/userlist.txt": userlist.encode(),
            f"{TLS_DIR}/server.crt": certificate.cert_pem.encode(),
            f"{TLS_DIR}/server.key": certificate.key_pem.encode(),
            f"{TLS_DIR}/ca.crt": certificate.ca_pem.encode(),
        },
        pids_limit=128,
    )


# --- the auth role, in the service's PostgreSQL ------------------------------------------


async def ensure_auth_role(conn: asyncpg.Connection, password: str) -> None:
    """`temps_pooler`: may log in (TLS, SCRAM) and connect to `postgres`; nothing else."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", AUTH_ROLE)
    if not exists:
        await conn.execute(f'CREATE ROLE "{AUTH_ROLE}"')
    await conn.execute(
        f'ALTER ROLE "{AUTH_ROLE}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT'
        f" NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 10 {password_clause(password)}"
    )
    await conn.execute(f'GRANT CONNECT ON DATABASE "{AUTH_DATABASE}" TO "{AUTH_ROLE}"')


async def ensure_lookup_function(conn: asyncpg.Connection) -> None:
    """In the `postgres` database (a connection to it): the SECURITY DEFINER lookup PgBouncer's
    docs recommend, answering only for roles that may log in and are neither superusers nor
    replication roles (no row otherwise: PgBouncer then refuses the login; a row of NULLs
    would read as a configuration error); executable by `temps_pooler` alone."""
    await conn.execute(
        f"""
        CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA};
        REVOKE ALL ON SCHEMA {AUTH_SCHEMA} FROM PUBLIC;
        GRANT USAGE ON SCHEMA {AUTH_SCHEMA} TO "{AUTH_ROLE}";
        CREATE OR REPLACE FUNCTION {LOOKUP_FUNCTION}(i_username text)
        RETURNS TABLE (uname text, phash text)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $fn$
            SELECT a.rolname::text, a.rolpassword
            FROM pg_catalog.pg_authid a
            WHERE a.rolname = i_username
              AND a.rolcanlogin AND NOT a.rolsuper AND NOT a.rolreplication
              AND a.rolname <> '{AUTH_ROLE}'
              AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > now())
        $fn$;
        REVOKE ALL ON FUNCTION {LOOKUP_FUNCTION}(text) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION {LOOKUP_FUNCTION}(text) TO "{AUTH_ROLE}";
        """
    )


# --- the admin console -----------------------------------------------------------------


class PoolerError(Exception):
    """The admin console refused a command or could not be reached."""


class Console:
    """PgBouncer's admin console (database `pgbouncer`) over verified TLS."""

    def __init__(self, endpoint: tuple[str, int], credentials: dict[str, str], ca_pem: str):
        self.endpoint = endpoint
        self.password = secrets(credentials)[1]
        self.ca_pem = ca_pem

    async def connect(self) -> asyncpg.Connection:
        host, port = self.endpoint
        context = ssl.create_default_context(cadata=self.ca_pem)
        try:
            return await asyncpg.connect(
                host=host,
                port=port,
                user=ADMIN_USER,
                password=self.password,
                database="pgbouncer",
                ssl=context,
                timeout=5,
                statement_cache_size=0,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, ssl.SSLError) as exc:
            raise ServiceNotReadyError(str(exc) or type(exc).__name__) from exc

    async def command(self, sql: str, timeout_s: float = 10.0) -> None:
        conn = await self.connect()
        try:
            await conn.execute(sql, timeout=timeout_s)
        except asyncpg.PostgresError as exc:
            raise PoolerError(f"{sql}: {exc}") from exc
        finally:
            await _close(conn)

    async def check_ready(self) -> None:
        """Ready when the console answers (PgBouncer listens, TLS and the auth file work)."""
        try:
            await self.command("SHOW VERSION", 5)
        except (PoolerError, OSError, TimeoutError) as exc:
            raise ServiceNotReadyError(str(exc) or type(exc).__name__) from exc

    async def resume_quietly(self) -> bool:
        """RESUME if paused (a provisioner that died mid-hold left it so); True if it was."""
        try:
            await self.command("RESUME")
            return True
        except PoolerError:
            return False  # "pooler is not paused/suspended"


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        conn.terminate()


@dataclass
class Hold:
    """One PAUSE … RESUME: how long clients were held, and whether the bound cut it short."""

    started: float
    paused: bool = False
    resumed_at: float | None = None
    timed_out: bool = False
    error: str = ""

    @property
    def held_s(self) -> float:
        end = self.resumed_at if self.resumed_at is not None else time.monotonic()
        return end - self.started


class Pause:
    """`async with Pause(console, 30) as hold:` PAUSE (in-flight transactions finish first),
    the body restarts the server, then RECONNECT (server connections opened before the restart
    are dropped, never reused) and RESUME. Bounded: at `timeout_s` a watchdog resumes even if
    the body still runs (clients then see the server's own errors instead of waiting forever).
    A pooler that cannot be paused does not stop the body: the hold says why."""

    def __init__(self, console: Console, timeout_s: float = PAUSE_TIMEOUT_S):
        self.console = console
        self.timeout_s = timeout_s
        self.hold = Hold(started=time.monotonic())
        self._watchdog: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Hold:
        self.hold.started = time.monotonic()
        try:
            await self.console.command("PAUSE", self.timeout_s)
            self.hold.paused = True
        except (PoolerError, ServiceNotReadyError, OSError, TimeoutError) as exc:
            self.hold.error = f"not paused: {exc or type(exc).__name__}"
            log.warning("pooler %s: %s", self.console.endpoint, self.hold.error)
            if not isinstance(exc, ServiceNotReadyError):
                await self.console.resume_quietly()  # a half-done PAUSE must not linger
            return self.hold
        remaining = self.timeout_s - (time.monotonic() - self.hold.started)
        self._watchdog = asyncio.create_task(self._resume_after(max(0.0, remaining)))
        return self.hold

    async def _resume_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self.hold.timed_out = True
        await self._resume()

    async def _resume(self) -> None:
        async with self._lock:
            if not self.hold.paused or self.hold.resumed_at is not None:
                return
            for sql in ("RECONNECT", "RESUME"):
                for attempt in range(3):
                    try:
                        await self.console.command(sql)
                        break
                    except PoolerError as exc:
                        log.warning("pooler %s: %s", sql, exc)
                        break
                    except (ServiceNotReadyError, OSError, TimeoutError) as exc:
                        if attempt == 2:
                            self.hold.error = f"{sql} failed: {exc}"
                        await asyncio.sleep(0.2)
            self.hold.resumed_at = time.monotonic()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.shield(self._resume())
