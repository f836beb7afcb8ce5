"""Connection types the repositories accept (a pooled connection is a proxy of one)."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
Executor: TypeAlias = Connection | asyncpg.Pool[Any]
