"""The audit trail: who did what to which target, from where.

"From where" is the peer address uvicorn gives the request. Forwarded headers are believed only
from the reverse proxies named in `TEMPS_API_TRUSTED_PROXIES` (uvicorn then takes the rightmost
address not in that list); without it a client cannot choose the address recorded. Behind
Docker's userland proxy (a published port) the peer is the bridge gateway: the API container
needs host networking, bound to 127.0.0.1, to see local clients as 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import Request
from temps_shared.store.types import Connection

from temps_api.auth import Principal


async def record_audit(
    conn: Connection,
    principal: Principal,
    action: str,
    target: str | None,
    request: Request,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one audit row; raises if it cannot (reveal endpoints then fail closed)."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, ip, details) VALUES ($1, $2, $3, $4, $5)",
        f"token:{principal.name}:{principal.token_id}",
        action,
        target,
        request.client.host if request.client else None,
        details or {},
    )


def trusted_proxies(setting: str) -> list[str]:
    """`TEMPS_API_TRUSTED_PROXIES` parsed: each entry an address or a CIDR (ValueError else)."""
    entries = [item.strip() for item in setting.split(",") if item.strip()]
    for entry in entries:
        ipaddress.ip_network(entry, strict=False)  # raises ValueError naming the bad entry
    return entries


def uvicorn_proxy_options(setting: str) -> dict[str, Any]:
    """uvicorn's forwarded-header options: off unless trusted proxies are configured (uvicorn's
    own default believes X-Forwarded-For from 127.0.0.1, i.e. from any local user)."""
    trusted = trusted_proxies(setting)
    if not trusted:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted}
