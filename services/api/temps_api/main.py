"""Startup: the one function that owns the gateway's I/O clients, and the FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import uvicorn
from fastapi import FastAPI, Response
from temps_shared.bootstrap import bootstrap
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.topology import HEALTH_PROJECTOR_CONSUMER, PROJECTOR_CONSUMER
from temps_shared.crypto import KeyRing
from temps_shared.messages import Role
from temps_shared.metrics import (
    CONTENT_TYPE,
    exposition,
    run_queue_sampler,
)
from temps_shared.store.certificate_authority import ensure_installation_ca
from temps_shared.store.pool import create_pool
from temps_shared.telemetry import setup_logging, setup_tracing

from temps_api.api_docs import install_api_docs
from temps_api.audit import uvicorn_proxy_options
from temps_api.auth import ensure_admin_token
from temps_api.errors import document_errors, install_error_handlers
from temps_api.outbox_relay import run_relay
from temps_api.projector import run_health_projector, run_projector
from temps_api.request_guard import RequestGuard
from temps_api.request_tracing import TraceRequests
from temps_api.routes import (
    audit_log,
    backup_destination,
    backup_schedule,
    backups,
    events,
    health,
    links,
    projects,
    runtime,
    service_health,
    services,
    tokens,
    wal_archiving,
)
from temps_api.settings import ApiSettings
from temps_api.state import AppState

log = logging.getLogger(__name__)
OPENAPI_URL = "/api/openapi.json"


def create_app(settings: ApiSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keyring = KeyRing.from_data_dir(settings.data_dir)
        pool = await create_pool(settings.database_dsn())
        nc = await connect_nats(settings.nats_url, Role.API, settings.data_dir, name="temps-api")
        js = nc.jetstream()
        stop = asyncio.Event()
        background: list[asyncio.Task[None]] = []
        try:
            await bootstrap(pool, js, settings)
            await ensure_installation_ca(pool, keyring, settings.data_dir)
            await ensure_admin_token(pool, settings.data_dir)
            app.state.temps = AppState(settings=settings, pool=pool, nc=nc, js=js, keyring=keyring)
            if settings.outbox_relay_enabled:
                background.append(
                    asyncio.create_task(
                        run_relay(pool, js, stop, settings.outbox_poll_s), name="outbox-relay"
                    )
                )
            if settings.projector_enabled:
                background.append(
                    asyncio.create_task(run_projector(pool, js, stop), name="projector")
                )
                background.append(
                    asyncio.create_task(
                        run_health_projector(
                            pool, js, stop, timedelta(days=settings.health_history_retention_days)
                        ),
                        name="health-projector",
                    )
                )
                background.append(
                    asyncio.create_task(
                        run_queue_sampler(
                            js,
                            [PROJECTOR_CONSUMER, HEALTH_PROJECTOR_CONSUMER],
                            stop,
                            settings.metrics_queue_sample_s,
                        ),
                        name="queue-depth",
                    )
                )
            yield
        finally:
            stop.set()
            if background:
                await asyncio.wait(background, timeout=10)
            with contextlib.suppress(Exception):
                await nc.drain()
            await pool.close()

    app = FastAPI(
        title="Temps managed services",
        version="0.1.0",
        openapi_url=OPENAPI_URL,
        docs_url=None,  # served with local assets by install_api_docs
        redoc_url=None,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_api_docs(app, OPENAPI_URL)

    app.add_middleware(TraceRequests)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics of this process (no token: figures only, no secrets)."""
        return Response(exposition(), media_type=CONTENT_TYPE)

    for module in (
        health,
        tokens,
        services,
        service_health,
        runtime,
        projects,
        links,
        audit_log,
        events,
        backups,
        backup_destination,
        backup_schedule,
        wal_archiving,
    ):
        document_errors(app, module.router)  # before including: FastAPI may copy the routes
        app.include_router(module.router)
    # Outermost: an oversized or non-JSON body is refused before anything reads it.
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    return app


def run() -> None:
    settings = ApiSettings()
    setup_logging(settings.log_level)
    setup_tracing("temps-api")
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        log_config=None,  # uvicorn's lines go through the root handler: JSON or text as ours
        # X-Forwarded-For only from TEMPS_API_TRUSTED_PROXIES (uvicorn alone trusts 127.0.0.1).
        **uvicorn_proxy_options(settings.api_trusted_proxies),
    )


if __name__ == "__main__":
    run()
