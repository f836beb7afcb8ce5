"""Long-lived requests (SSE streams) end soon after their token is revoked or expires.

One loop per API process checks the tokens of every open stream with one query per period,
whatever the number of streams (streams sharing a token share its check); the loop runs only
while a stream is open. A failed check keeps the streams (the next one decides): the database
being briefly unreachable does not cut every subscriber, and new requests are refused anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from uuid import UUID

import asyncpg
from fastapi import Request

from temps_api.auth import TOKEN_VALID, token_states

log = logging.getLogger(__name__)
CHECK_PERIOD_S = 1.0
OnEnd = Callable[[str], None]


class TokenWatch:
    def __init__(self, pool: asyncpg.Pool, period_s: float = CHECK_PERIOD_S) -> None:
        self.pool = pool
        self.period_s = period_s
        self._watchers: dict[UUID, set[OnEnd]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, token_id: UUID, on_end: OnEnd) -> Iterator[None]:
        """While inside, `on_end("token_revoked" | "token_expired")` is called (once) when the
        token stops being valid."""
        self._watchers.setdefault(token_id, set()).add(on_end)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="token-watch")
        try:
            yield
        finally:
            callbacks = self._watchers.get(token_id)
            if callbacks is not None:
                callbacks.discard(on_end)
                if not callbacks:
                    del self._watchers[token_id]

    async def _run(self) -> None:
        while self._watchers:
            await asyncio.sleep(self.period_s)
            try:
                await self.check()
            except Exception:  # never leave streams unwatched because of one bad round
                log.exception("token check failed")

    async def check(self) -> None:
        """One check of every watched token; ended ones are told and forgotten."""
        if not self._watchers:
            return
        try:
            states = await token_states(self.pool, list(self._watchers))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("token check failed (streams kept until the next one): %s", exc)
            return
        for token_id, state in states.items():
            if state == TOKEN_VALID:
                continue
            for on_end in self._watchers.pop(token_id, set()):
                on_end(f"token_{state}")


def token_watch(request: Request, pool: asyncpg.Pool) -> TokenWatch:
    """The app's watch, made on first use."""
    watch: TokenWatch | None = getattr(request.app.state, "token_watch", None)
    if watch is None:
        watch = request.app.state.token_watch = TokenWatch(pool)
    return watch
