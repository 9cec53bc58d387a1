"""The panel's static files as HTTP sees them: the security headers on every page response, a
versioned path cached for a year, an allow-list of files, and page code that never injects HTML."""
from __future__ import annotations

import os
import re
from typing import Any

import pytest

from frontend import pages

PANEL = pages.PANEL_DIR
# What would turn data into markup or code: the panel builds its DOM from text nodes only.
INJECTION = re.compile(r"\.innerHTML\s*=|\.outerHTML\s*=|insertAdjacentHTML\s*\(|document\.write"
                       r"|\beval\s*\(|new\s+Function\s*\(|setTimeout\s*\(\s*['\"`]"
                       r"|\.setAttribute\(\s*['\"`]on")


def version_of(index: str) -> str:
    found = re.search(r'static/([0-9a-f]{16})/app\.js', index)
    assert found, index
    return found.group(1)


async def test_index_carries_the_strict_csp_nosniff_and_no_referrer(api: Any) -> None:
    r = await api.get("/")
    assert r.status == 200
    assert r.content_type == "text/html"
    csp = r.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
                      "form-action 'self'", "object-src 'none'"):
        assert directive in csp
    assert "unsafe" not in csp  # no inline script or style, no eval
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-cache"
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_static_files_are_versioned_and_cached_for_a_year(api: Any) -> None:
    version = version_of(await (await api.get("/")).text())
    for name, kind in pages.PANEL.items():
        r = await api.get(f"/static/{version}/{name}")
        assert r.status == 200, name
        assert r.headers["Content-Type"].startswith(kind.split(";")[0]), name
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert r.headers["Content-Security-Policy"] == pages.CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_repeated_load_is_answered_304_by_etag(api: Any) -> None:
    first = await api.get("/")
    again = await api.get("/", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304
    assert again.headers["Content-Security-Policy"] == pages.CSP


async def test_gzip_is_served_to_a_client_that_takes_it(api: Any) -> None:
    version = version_of(await (await api.get("/")).text())
    r = await api.get(f"/static/{version}/app.js", headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip"
    assert int(r.headers["Content-Length"]) < os.path.getsize(os.path.join(PANEL, "app.js")) / 2
    with open(os.path.join(PANEL, "app.js"), "rb") as f:
        assert await r.read() == f.read()  # the same bytes once unpacked


@pytest.mark.security
@pytest.mark.parametrize("path", [
    "/static/{v}/index.html", "/static/{v}/../pages.py", "/static/{v}/%2e%2e%2fpages.py",
    "/static/{v}/nonexistent.js", "/static/0000000000000000/app.js", "/static/{v}/",
    "/pages.py", "/panel/app.js",
])
async def test_only_listed_files_of_the_current_version_are_served(api: Any, path: str) -> None:
    version = version_of(await (await api.get("/")).text())
    r = await api.get(path.replace("{v}", version))
    assert r.status == 404
    assert (await r.json())["code"] == "not-found"


@pytest.mark.security
def test_panel_code_never_turns_data_into_markup_or_code() -> None:
    for name in pages.PANEL:
        if name.endswith(".js"):
            with open(os.path.join(PANEL, name)) as f:
                found = INJECTION.findall(f.read())
            assert not found, f"{name}: {found}"


def test_the_served_list_is_every_file_of_the_panel() -> None:
    # A file added to panel/ but not to PANEL would 404 in the browser; one listed but
    # missing stops the frontend's start.
    assert set(os.listdir(PANEL)) == set(pages.PANEL) | {pages.INDEX}


def test_index_names_only_versioned_relative_urls() -> None:
    with open(os.path.join(PANEL, pages.INDEX)) as f:
        index = f.read()
    urls = re.findall(r'(?:href|src)="([^"#]+)"', index)
    assert urls and all(u.startswith(f"static/{pages.VERSION_MARK}/") for u in urls), urls
    assert "<style" not in index and " style=" not in index
    assert re.findall(r"<script[^>]*>", index) == [
        f'<script type="module" src="static/{pages.VERSION_MARK}/app.js">']
