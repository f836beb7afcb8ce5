"""Swagger UI and ReDoc load everything from the API itself (issue 18): on a host with no
Internet access they must not stay blank for want of a CDN.

The asset check is the acceptance; a headless browser (Debian's `chromium`, installed by
`deploy/prepare-tests.sh`) that can resolve no name but the loopback also renders /api/docs.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from urllib.parse import urljoin

import httpx
import pytest

from tests.integration.conftest import Platform

pytestmark = pytest.mark.asyncio(loop_scope="session")
PAGES = ("/api/docs", "/api/redoc")
# Every URL a page names: src/href attributes and the document and assets in its script.
_URL = re.compile(r"""(?:src|href)=["']([^"']+)["']|(?:url|spec-url)["']?\s*[:=]\s*["']([^"']+)""")
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def urls_in(html: str) -> set[str]:
    return {a or b for a, b in _URL.findall(html)}


@pytest.mark.parametrize("page", PAGES)
async def test_docs_pages_name_only_local_assets(platform: Platform, page: str) -> None:
    # No token: the pages and their assets are public, like the OpenAPI document.
    async with httpx.AsyncClient(base_url=platform.base_url, timeout=30) as anonymous:
        response = await anonymous.get(page)
        assert response.status_code == 200
        html = response.text
        assert "://" not in html, "a page may name no absolute URL (a CDN, a font, a validator)"
        urls = urls_in(html)
        assets = {u for u in urls if u.endswith(tuple(ASSET_TYPES))}
        assert "/api/openapi.json" in urls
        assert len(assets) >= 2, urls  # the script and the favicon at least
        for url in urls:
            assert url.startswith("/api/"), url
            answer = await anonymous.get(urljoin(page, url))
            assert answer.status_code == 200, url
            if url in assets:
                suffix = url[url.rindex(".") :]
                assert answer.headers["content-type"].startswith(ASSET_TYPES[suffix]), url
                assert len(answer.content) > 500, url


async def test_swagger_ui_renders_without_network(platform: Platform) -> None:
    # Every name but 127.0.0.1 fails to resolve: a CDN reference would leave the page blank.
    command = [
        str(shutil.which("chromium")),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=10000",
        "--dump-dom",
        f"{platform.base_url}/api/docs",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Rendered by swagger-ui-bundle.js from /api/openapi.json: the title and an operation.
    assert "Temps managed services" in done.stdout
    assert 'class="opblock' in done.stdout, done.stdout[-2000:]
