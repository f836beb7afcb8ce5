"""The pooler's figures for `/health`: `SHOW POOLS` rows summed, and the simple-query client of
PgBouncer's admin console (TLS, SCRAM-SHA-256, RowDescription/DataRow) against a fake console
that speaks the wire protocol; the verdict on a pooler that does not answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from temps_monitor.verdict import POOLER_REASON, judge
from temps_shared.engines import pgbouncer
from temps_shared.engines.pgbouncer_stats import (
    ConsoleQueryError,
    PoolFigures,
    pool_figures,
    summarize,
)
from temps_shared.messages import ServiceStatus as S
from temps_shared.tls import create_ca, issue_server_certificate

COLUMNS = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
]


def _row(
    db: str, active: int, waiting: int, sv_active: int, idle: int, used: int, wait_us: int
) -> list[str | None]:
    """One SHOW POOLS row (1.24's columns), cancel-request and login columns zero."""
    seconds, micros = divmod(wait_us, 1_000_000)
    values = {"database": db, "user": "u", "cl_active": active, "cl_waiting": waiting}
    values |= {"sv_active": sv_active, "sv_idle": idle, "sv_used": used}
    values |= {"maxwait": seconds, "maxwait_us": micros, "pool_mode": "transaction"}
    return [None if c == "load_balance_hosts" else str(values.get(c, 0)) for c in COLUMNS]


ROWS: list[list[str | None]] = [
    _row("app", 3, 2, 1, 1, 1, 1_250_000),
    _row("app", 1, 0, 1, 2, 0, 0),
    _row("pgbouncer", 1, 0, 0, 0, 0, 9_000_000),  # the console's own pseudo-database
]
PASSWORD = "console-secret"
CREDENTIALS = {"pooler_password": "auth", "pooler_admin_password": PASSWORD}


def test_summarize_sums_pools_without_the_console_itself() -> None:
    figures = summarize([dict(zip(COLUMNS, row, strict=True)) for row in ROWS])
    assert figures == PoolFigures(
        clients_active=4, clients_waiting=2, servers_active=2, servers_idle=4, max_wait_ms=1250.0
    )
    assert summarize([]) == PoolFigures(0, 0, 0, 0, 0.0)


def test_a_pooler_that_does_not_answer_degrades_and_down_wins() -> None:
    degraded = judge(container_status="running", probe_error=None, pooler_down=True)
    assert (degraded.status, degraded.reason) == (S.DEGRADED, POOLER_REASON)
    both = judge(
        container_status="running", probe_error=None, pooler_down=True, replicas_down=["replica-1"]
    )
    assert both.reason == f"{POOLER_REASON}; read replica not running: replica-1"
    assert judge(container_status="running", probe_error="refused", pooler_down=True).status == (
        S.DOWN
    )
    assert judge(container_status="running", probe_error=None).status == S.OPERATIONAL


# --- a fake admin console ---------------------------------------------------------------------


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    return header[:1], await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)


def _auth(code: int, data: bytes = b"") -> bytes:
    return _msg(b"R", struct.pack("!i", code) + data)


def _error(text: str) -> bytes:
    return _msg(b"E", b"SERROR\0C08P01\0M" + text.encode() + b"\0\0")


class FakeConsole:
    """PgBouncer's console as far as the client uses it: TLS, SCRAM (server side), one query."""

    def __init__(self, password: str, forge_signature: bool = False) -> None:
        self.password = password
        self.forge_signature = forge_signature
        self.queries: list[str] = []
        self.user = ""

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
    ) -> None:
        try:
            assert struct.unpack("!ii", await reader.readexactly(8)) == (8, 80877103)
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(context)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            startup = (await reader.readexactly(length - 4))[4:].split(b"\0")
            self.user = startup[startup.index(b"user") + 1].decode()
            writer.write(_auth(10, b"SCRAM-SHA-256\0\0"))
            _, body = await _read(reader)
            mechanism, rest = body.split(b"\0", 1)
            assert mechanism == b"SCRAM-SHA-256"
            first_bare = rest[4:].decode().split(",", 2)[2]
            nonce = first_bare.split("r=", 1)[1] + "server"
            salt = os.urandom(16)
            server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i=4096"
            writer.write(_auth(11, server_first.encode()))
            _, body = await _read(reader)
            final_bare, proof = body.decode().rsplit(",p=", 1)
            salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, 4096)
            message = f"{first_bare},{server_first},{final_bare}".encode()
            client_key = hmac.digest(salted, b"Client Key", "sha256")
            signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
            expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
            if base64.b64decode(proof) != expected:
                writer.write(_error(f'password authentication failed for user "{self.user}"'))
                await writer.drain()
                return
            server_key = hmac.digest(salted, b"Server Key", "sha256")
            verifier = hmac.digest(server_key, message, "sha256")
            if self.forge_signature:
                verifier = bytes(32)
            writer.write(_auth(12, b"v=" + base64.b64encode(verifier)))
            writer.write(_auth(0) + _msg(b"S", b"server_version\x001.24.1\0"))
            writer.write(_msg(b"Z", b"I"))
            kind, body = await _read(reader)
            assert kind == b"Q"
            self.queries.append(body.rstrip(b"\0").decode())
            fields = b"".join(n.encode() + b"\0" + bytes(18) for n in COLUMNS)
            writer.write(_msg(b"T", struct.pack("!h", len(COLUMNS)) + fields))
            for row in ROWS:
                cells = b"".join(
                    struct.pack("!i", -1)
                    if v is None
                    else struct.pack("!i", len(v.encode())) + v.encode()
                    for v in row
                )
                writer.write(_msg(b"D", struct.pack("!h", len(row)) + cells))
            writer.write(_msg(b"C", b"SHOW\0") + _msg(b"Z", b"I"))
            await writer.drain()
            await _read(reader)  # Terminate
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(console: FakeConsole) -> AsyncIterator[tuple[tuple[str, int], str]]:
    ca = create_ca()
    cert = issue_server_certificate(ca, ["temps-postgres-db1-pooler"], ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.pem").write_text(cert.cert_pem)
        (Path(tmp) / "k.pem").write_text(cert.key_pem)
        context.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await console.handle(reader, writer, context)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield ("127.0.0.1", port), ca.cert_pem
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_show_pools_over_tls_and_scram() -> None:
    console = FakeConsole(PASSWORD)
    async with serving(console) as (endpoint, ca_pem):
        figures = await asyncio.wait_for(pool_figures(endpoint, CREDENTIALS, ca_pem), 10)
    assert figures == summarize([dict(zip(COLUMNS, row, strict=True)) for row in ROWS])
    assert console.queries == ["SHOW POOLS"]
    assert console.user == pgbouncer.ADMIN_USER


@pytest.mark.asyncio
async def test_wrong_password_forged_server_and_untrusted_ca_are_refused() -> None:
    async with serving(FakeConsole("another")) as (endpoint, ca_pem):
        with pytest.raises(ConsoleQueryError, match="password authentication failed"):
            await asyncio.wait_for(pool_figures(endpoint, CREDENTIALS, ca_pem), 10)
    async with serving(FakeConsole(PASSWORD, forge_signature=True)) as (endpoint, ca_pem):
        with pytest.raises(ConsoleQueryError, match="signature"):
            await asyncio.wait_for(pool_figures(endpoint, CREDENTIALS, ca_pem), 10)
    async with serving(FakeConsole(PASSWORD)) as (endpoint, _):
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(pool_figures(endpoint, CREDENTIALS, create_ca().cert_pem), 10)
