"""The skeleton every command worker shares: its I/O clients opened and drained in one place,
and the dispatch of a delivery to the handler registered for its command type."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import docker
from nats.aio.client import Client
from nats.js import JetStreamContext

from temps_shared.bus.connect import connect_nats
from temps_shared.bus.consume import Delivery, Handler, OnTerminal, TerminalError, contract_message
from temps_shared.messages import Command, Role
from temps_shared.metrics import instrumented, start_metrics_server
from temps_shared.settings import TempsSettings
from temps_shared.store.migrations import apply_migrations
from temps_shared.store.pool import create_pool

C = TypeVar("C")
# A handler takes the worker's context and one of its command types (checked by the registry).
CommandHandler = Callable[[C, Any], Awaitable[None]]
# Announces a command's terminal failure (a `…Failed` event), given the reason.
FailureAnnouncer = Callable[[C, Any, str], Awaitable[None]]


@dataclass(frozen=True)
class WorkerClients:
    pool: asyncpg.Pool
    nc: Client
    js: JetStreamContext
    docker: docker.DockerClient


@contextlib.asynccontextmanager
async def worker_clients(
    settings: TempsSettings, role: Role, name: str, *, pool_size: int
) -> AsyncIterator[WorkerClients]:
    """Open the database pool (migrations applied), the bus connection as `role`, the Docker
    client and the metrics port; on exit drain the bus and close them all."""
    pool = await create_pool(settings.database_dsn(), max_size=pool_size)
    try:
        nc = await connect_nats(settings.nats_url, role, settings.data_dir, name=name)
    except BaseException:
        await pool.close()
        raise
    docker_client = docker.from_env()
    metrics = start_metrics_server(settings.metrics_host, settings.metrics_port)
    try:
        await apply_migrations(pool)
        yield WorkerClients(pool=pool, nc=nc, js=nc.jetstream(), docker=docker_client)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await pool.close()
        docker_client.close()
        if metrics is not None:
            metrics.close()


def dispatcher(
    worker: str, context: C, handlers: Mapping[type[Command], CommandHandler[C]]
) -> Handler:
    """A consume handler: the delivery's checked command goes to the handler registered for its
    type; a command this worker has no handler for is terminal. Instrumented as `worker`."""
    by_name = {kind.type_name(): handler for kind, handler in handlers.items()}

    async def handle(delivery: Delivery) -> None:
        command = contract_message(delivery, Command)
        handler = by_name.get(command.type_name())
        if handler is None:
            raise TerminalError(f"the {worker} has no handler for {command.type_name()}")
        await handler(context, command)

    return instrumented(worker, handle)


def terminal_announcer(
    context: C, announcers: Mapping[type[Command], FailureAnnouncer[C]]
) -> OnTerminal:
    """An `on_terminal` callback: announces the failure of the command types listed (the others
    are only terminated)."""

    async def on_terminal(delivery: Delivery, reason: str) -> None:
        command = delivery.message
        for kind, announce in announcers.items():
            if isinstance(command, kind):
                await announce(context, command, reason)
                return

    return on_terminal
