"""Connection types the repositories accept (a pooled connection is a proxy of one).

Annotation-only aliases: asyncpg's classes are generic for the type checker, not at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
Executor: TypeAlias = "Connection | asyncpg.Pool[Any]"
