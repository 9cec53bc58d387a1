"""The web panel's static files (frontend/panel/), served to anyone: they hold no data.

Only the files in PANEL are served, from memory, under static/<version>/ where the version is a
hash of them all (cached for a year: a changed file is a new URL); index.html is revalidated on
every load. Every page response carries SECURITY_HEADERS: no inline code, nothing from elsewhere.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass

from aiohttp import web

PANEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "panel")
# The allow-list: file name -> Content-Type. Nothing else under panel/ is ever served.
PANEL: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "actions.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "container.js": "text/javascript; charset=utf-8",
    "create.js": "text/javascript; charset=utf-8",
    "tokens.js": "text/javascript; charset=utf-8",
    "audit.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
INDEX = "index.html"
VERSION_MARK = "@VERSION@"
# Scripts and styles from our own origin only: no inline code, no eval (no 'unsafe-*'), no
# plugins, never framed, no <base> to redirect relative URLs, forms post only to ourselves.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LONG_CACHE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes  # compressed once at start; static files hold no secret (no BREACH)
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, gzip.compress(body, 9, mtime=0), content_type,
                 '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class Pages:
    """The panel's files, read once at start: a missing or unreadable file stops the start."""

    def __init__(self, directory: str = PANEL_DIR) -> None:
        raw = {}
        for name in sorted(PANEL):
            with open(os.path.join(directory, name), "rb") as f:
                raw[name] = f.read()
        digest = hashlib.sha256()
        for name, body in raw.items():
            digest.update(name.encode() + b"\0" + body + b"\0")
        self.version = digest.hexdigest()[:16]
        self.assets = {name: _asset(body, PANEL[name]) for name, body in raw.items()}
        with open(os.path.join(directory, INDEX), encoding="utf-8") as f:
            index = f.read().replace(VERSION_MARK, self.version)
        self.index = _asset(index.encode(), "text/html; charset=utf-8")

    def routes(self) -> list[web.RouteDef]:
        # Relative links only (static/<version>/…, api/v1/…): behind a reverse proxy that
        # strips a path prefix the panel works unchanged under that prefix.
        return [web.get("/", self.page), web.get("/static/{version}/{name}", self.static)]

    async def page(self, request: web.Request) -> web.Response:
        return _respond(request, self.index, REVALIDATE)

    async def static(self, request: web.Request) -> web.Response:
        asset = self.assets.get(request.match_info["name"])
        if asset is None or request.match_info["version"] != self.version:
            # An old version's file is gone for good: the index (revalidated) names the new.
            raise web.HTTPNotFound()
        return _respond(request, asset, LONG_CACHE)


def _respond(request: web.Request, asset: Asset, cache: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": asset.etag,
               "Vary": "Accept-Encoding"}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    response = web.Response(body=body, headers=headers)
    response.content_type = asset.content_type.split(";")[0]
    if "charset" in asset.content_type:
        response.charset = "utf-8"
    return response
