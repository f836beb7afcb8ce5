"""Swagger UI (/api/docs) and ReDoc (/api/redoc) with every asset served by the API itself, so
they render on a host with no Internet access (FastAPI's defaults load them from a CDN).

The assets in `static/` are vendored from npm: swagger-ui-dist 5.35.0 (swagger-ui-bundle.js,
swagger-ui.css, favicon-32x32.png as favicon.png) and redoc 2.5.4 (bundles/redoc.standalone.js),
source-map comments removed; their licences are next to them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/api/static"
TITLE = "Temps managed services"


def install_api_docs(app: FastAPI, openapi_url: str) -> None:
    """Mount the assets and add both pages (no token needed, like the OpenAPI document)."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="api-static")

    @app.get("/api/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{TITLE} — API",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
            # Swagger UI would otherwise send the document to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/api/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{TITLE} — API",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
