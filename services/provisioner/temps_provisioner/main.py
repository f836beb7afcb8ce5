"""Startup: the one function that owns the provisioner's I/O clients."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.consume import consume
from temps_shared.bus.topology import provisioner_consumer
from temps_shared.crypto import KeyRing
from temps_shared.messages import Role
from temps_shared.metrics import run_queue_sampler
from temps_shared.runtime import DockerRuntime
from temps_shared.store.certificate_authority import ensure_installation_ca
from temps_shared.store.services import installation_id
from temps_shared.worker import worker_clients
from temps_shared.worker_process import run_worker

from temps_provisioner.agent import serve_agent
from temps_provisioner.context import Provisioner
from temps_provisioner.handlers import make_handler, make_on_terminal
from temps_provisioner.oom_watch import watch_oom_kills
from temps_provisioner.resync import run_resync
from temps_provisioner.settings import ProvisionerSettings
from temps_provisioner.storage_jobs import run_s3_jobs


async def serve(settings: ProvisionerSettings, stop: asyncio.Event) -> None:
    """Consume provisioner commands until `stop` is set, then drain."""
    keyring = KeyRing.from_data_dir(settings.data_dir)
    # The host agent answers on its own connection, as its own role: a provisioner's
    # credentials cannot call it.
    agent_nc = await connect_nats(
        settings.nats_url, Role.AGENT, settings.data_dir, name=f"temps-agent-{settings.node_id}"
    )
    try:
        async with worker_clients(
            settings,
            Role.PROVISIONER,
            f"temps-provisioner-{settings.node_id}",
            pool_size=settings.concurrency * 2 + 2,
        ) as clients:
            provisioner = Provisioner(
                pool=clients.pool,
                js=clients.js,
                runtime=DockerRuntime(clients.docker, settings.docker_network),
                keyring=keyring,
                ca=await ensure_installation_ca(clients.pool, keyring, settings.data_dir),
                settings=settings,
                installation=await installation_id(clients.pool),
            )
            await _consume(provisioner, agent_nc, stop)
    finally:
        with contextlib.suppress(Exception):
            await agent_nc.drain()


async def _consume(provisioner: Provisioner, agent_nc: Client, stop: asyncio.Event) -> None:
    settings = provisioner.settings
    jobs = asyncio.create_task(run_s3_jobs(provisioner, stop), name="s3-jobs")
    agent = await serve_agent(provisioner, agent_nc)
    oom_watch = asyncio.create_task(watch_oom_kills(provisioner, stop), name="oom-watch")
    resync = asyncio.create_task(run_resync(provisioner, stop), name="resync")
    commands = provisioner_consumer(settings.command_ack_wait_s, settings.command_max_deliver)
    queue = asyncio.create_task(
        run_queue_sampler(provisioner.js, [commands], stop, settings.metrics_queue_sample_s),
        name="queue-depth",
    )
    try:
        await consume(
            provisioner.js,
            commands,
            make_handler(provisioner),
            stop=stop,
            on_terminal=make_on_terminal(provisioner),
            concurrency=settings.concurrency,
        )
    finally:
        await agent.unsubscribe()
        for task in (jobs, oom_watch, resync, queue):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run() -> None:
    settings = ProvisionerSettings()
    run_worker("temps-provisioner", settings, lambda stop: serve(settings, stop))


if __name__ == "__main__":
    run()
