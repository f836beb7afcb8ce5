"""The gateway's I/O clients, created by the startup function and shared by the routes."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from temps_shared.crypto import KeyRing

from temps_api.settings import ApiSettings


@dataclass(frozen=True)
class AppState:
    settings: ApiSettings
    pool: asyncpg.Pool
    nc: Client
    js: JetStreamContext
    keyring: KeyRing
