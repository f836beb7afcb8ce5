"""Private addresses → loopback publications, for `temps run` (pure functions, no I/O).

Injected variables name services by their address on the private `temps` network
(`temps-postgres-db1:5432`), which only containers on that network can reach. A command run on
the Docker host reaches the same service at its loopback publication (`127.0.0.1:21034`); each
service's `connection_info` pairs the two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

Endpoint = tuple[str, int]
EndpointMap = dict[Endpoint, Endpoint]

# Values never rewritten: the CA is PEM, not an address.
UNTOUCHED = frozenset({"TEMPS_CA_CERT"})

# A `host:port` in address position: the whole value, or after `//`, `@` (userinfo) or `,`
# (libpq multi-host lists, comma-separated replica URLs), and followed by the end, a path, a
# query, a fragment or the next list item. `user:pass@` never matches: it is followed by `@`.
_ADDRESS = re.compile(
    r"(?P<lead>^|//|@|,)"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
    r":(?P<port>[0-9]{1,5})"
    r"(?=$|[/?#,])"
)


def _bare(host: str) -> str:
    return host.removeprefix("[").removesuffix("]").lower()


def _url_host(host: str) -> str:
    """A host as written in a URL: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host


def loopback_map(connection_infos: Iterable[Mapping[str, Any]]) -> EndpointMap:
    """(private host, port) → (loopback host, port) for every published port of the services:
    the primary, Redis's TLS port, PostgreSQL's read replicas and pooler."""
    mapping: EndpointMap = {}

    def add(host: Any, port: Any, local_host: Any, local_port: Any) -> None:
        if host and port and local_host and local_port:
            mapping[(_bare(str(host)), int(port))] = (_bare(str(local_host)), int(local_port))

    for info in connection_infos:
        add(info.get("host"), info.get("port"), info.get("local_host"), info.get("local_port"))
        add(
            info.get("host"),
            info.get("tls_port"),
            info.get("local_host"),
            info.get("local_tls_port"),
        )
        for replica in [*(info.get("replicas") or ()), info.get("pooler") or {}]:
            add(
                replica.get("host"),
                replica.get("port"),
                replica.get("local_host"),
                replica.get("local_port"),
            )
    return mapping


def rewrite_addresses(value: str, endpoints: Mapping[Endpoint, Endpoint]) -> str:
    """Every known `host:port` in `value` replaced by its loopback publication; the rest (user,
    password, path, query, unknown hosts) kept byte for byte."""

    def swap(match: re.Match[str]) -> str:
        target = endpoints.get((_bare(match["host"]), int(match["port"])))
        if target is None:
            return match[0]
        return f"{match['lead']}{_url_host(target[0])}:{target[1]}"

    return _ADDRESS.sub(swap, value)


def rewrite_variables(
    variables: Mapping[str, str], endpoints: Mapping[Endpoint, Endpoint]
) -> dict[str, str]:
    """The variables with private addresses rewritten: addresses inside values (`DATABASE_URL`,
    `DATABASE_REPLICA_URL`, `REDIS_URL`, `S3_ENDPOINT`, …) and split `X_HOST` + `X_PORT` pairs
    (`POSTGRES_HOST`/`POSTGRES_PORT`, `REDIS_HOST`/`REDIS_PORT`). Everything else is kept."""
    out = {
        name: value if name in UNTOUCHED else rewrite_addresses(value, endpoints)
        for name, value in variables.items()
    }
    for host_name, host in variables.items():
        if not host_name.endswith("_HOST"):
            continue
        port_name = host_name.removesuffix("_HOST") + "_PORT"
        port = variables.get(port_name, "")
        # A host alone says nothing about which of its ports is meant: only pairs are rewritten.
        if not port.isdigit():
            continue
        target = endpoints.get((_bare(host), int(port)))
        if target is not None:
            out[host_name], out[port_name] = target[0], str(target[1])
    return out
