"""The pooler's figures (`SHOW POOLS` on PgBouncer's admin console), for the health monitor.

The admin console speaks only the simple query protocol, and asyncpg's `fetch` always uses the
extended one (PgBouncer answers "extended query protocol not supported by admin console"), so
this is a minimal client of the wire protocol: SSLRequest and verified TLS, SCRAM-SHA-256 as
`temps_pooler_admin` (its password comes from `pgbouncer.secrets`), one `Query`, the rows as
text. The server's SCRAM signature is checked, so a password is never proven to an impostor.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets as token
import ssl
import struct
from dataclasses import dataclass

from temps_shared.engines import pgbouncer

_SSL_REQUEST = 80877103
_PROTOCOL_3 = 196608
_ADMIN_DATABASE = "pgbouncer"  # the console's pseudo-database (its own pool is not counted)


class ConsoleQueryError(Exception):
    """The console refused the login or the query, or spoke out of turn."""


@dataclass(frozen=True)
class PoolFigures:
    """`SHOW POOLS` summed over the pools (the console's own pseudo-database left out)."""

    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    max_wait_ms: float


def _int(row: dict[str, str | None], column: str) -> int:
    value = row.get(column)
    return int(value) if value else 0


def summarize(rows: list[dict[str, str | None]]) -> PoolFigures:
    """The figures of `SHOW POOLS`' rows. `sv_idle` counts idle server connections ready for a
    client; `sv_used` (idle, awaiting the server check) joins them; `maxwait` (s) plus
    `maxwait_us` is the oldest waiting client's wait."""
    pools = [r for r in rows if r.get("database") != _ADMIN_DATABASE]
    return PoolFigures(
        clients_active=sum(_int(r, "cl_active") for r in pools),
        clients_waiting=sum(_int(r, "cl_waiting") for r in pools),
        servers_active=sum(_int(r, "sv_active") for r in pools),
        servers_idle=sum(_int(r, "sv_idle") + _int(r, "sv_used") for r in pools),
        max_wait_ms=max(
            (_int(r, "maxwait") * 1000 + _int(r, "maxwait_us") / 1000 for r in pools),
            default=0.0,
        ),
    )


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


class _Wire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        (length,) = struct.unpack("!i", header[1:])
        return header[:1], await self.reader.readexactly(length - 4)


def _error_text(body: bytes) -> str:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return fields.get(b"M", "error")


def _authentication(body: bytes) -> tuple[int, bytes]:
    (code,) = struct.unpack("!i", body[:4])
    return code, body[4:]


async def _scram(wire: _Wire, mechanisms: bytes, password: str) -> None:
    if b"SCRAM-SHA-256" not in mechanisms.split(b"\0"):
        raise ConsoleQueryError(f"no SCRAM-SHA-256 among {mechanisms!r}")
    nonce = base64.b64encode(token.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    await wire.send(_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
    kind, body = await wire.receive()
    if kind == b"E":
        raise ConsoleQueryError(_error_text(body))
    code, server_first_raw = _authentication(body)
    if kind != b"R" or code != 11:
        raise ConsoleQueryError(f"unexpected SCRAM step {kind!r} {code}")
    server_first = server_first_raw.decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise ConsoleQueryError("SCRAM: the server's nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    final_bare = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    await wire.send(_message(b"p", final_bare.encode() + b",p=" + proof))
    kind, body = await wire.receive()
    if kind == b"E":
        raise ConsoleQueryError(_error_text(body))
    code, server_final = _authentication(body)
    if kind != b"R" or code != 12:
        raise ConsoleQueryError(f"unexpected SCRAM step {kind!r} {code}")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
    if not hmac.compare_digest(server_final.strip(b"\0"), b"v=" + expected):
        raise ConsoleQueryError("SCRAM: the server's signature does not match")


async def _login(wire: _Wire, password: str) -> None:
    params = f"user\0{pgbouncer.ADMIN_USER}\0database\0{_ADMIN_DATABASE}\0\0".encode()
    body = struct.pack("!i", _PROTOCOL_3) + params
    await wire.send(struct.pack("!i", len(body) + 4) + body)
    while True:
        kind, body = await wire.receive()
        if kind == b"E":
            raise ConsoleQueryError(_error_text(body))
        if kind == b"R":
            code, rest = _authentication(body)
            if code == 10:
                await _scram(wire, rest, password)
            elif code != 0:
                raise ConsoleQueryError(f"unsupported authentication request {code}")
        elif kind == b"Z":
            return


def _row_description(body: bytes) -> list[str]:
    (count,) = struct.unpack("!h", body[:2])
    names, at = [], 2
    for _ in range(count):
        end = body.index(b"\0", at)
        names.append(body[at:end].decode())
        at = end + 1 + 18  # table oid, column, type oid, size, modifier, format
    return names


def _data_row(body: bytes) -> list[str | None]:
    (count,) = struct.unpack("!h", body[:2])
    values: list[str | None] = []
    at = 2
    for _ in range(count):
        (length,) = struct.unpack("!i", body[at : at + 4])
        at += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[at : at + length].decode())
            at += length
    return values


async def simple_query(
    endpoint: tuple[str, int], password: str, ca_pem: str, sql: str
) -> list[dict[str, str | None]]:
    """`sql`'s rows (text values) from the admin console; unbounded: wrap it in a timeout."""
    host, port = endpoint
    reader, writer = await asyncio.open_connection(host, port)
    try:
        wire = _Wire(reader, writer)
        await wire.send(struct.pack("!ii", 8, _SSL_REQUEST))
        if await reader.readexactly(1) != b"S":
            raise ConsoleQueryError("the pooler refused TLS")
        context = ssl.create_default_context(cadata=ca_pem)
        await writer.start_tls(context, server_hostname=host)
        await _login(wire, password)
        await wire.send(_message(b"Q", sql.encode() + b"\0"))
        columns: list[str] = []
        rows: list[dict[str, str | None]] = []
        error: str | None = None
        while True:
            kind, body = await wire.receive()
            if kind == b"T":
                columns = _row_description(body)
            elif kind == b"D":
                rows.append(dict(zip(columns, _data_row(body), strict=True)))
            elif kind == b"E":
                error = _error_text(body)
            elif kind == b"Z":
                break
        if error is not None:
            raise ConsoleQueryError(error)
        with contextlib.suppress(OSError):
            await wire.send(_message(b"X", b""))
        return rows
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def pool_figures(
    endpoint: tuple[str, int], credentials: dict[str, str], ca_pem: str
) -> PoolFigures:
    """`SHOW POOLS` summed; raises OSError, ssl.SSLError, ConsoleQueryError,
    asyncio.IncompleteReadError (a closed connection) when the pooler does not answer."""
    password = pgbouncer.secrets(credentials)[1]
    return summarize(await simple_query(endpoint, password, ca_pem, "SHOW POOLS"))
