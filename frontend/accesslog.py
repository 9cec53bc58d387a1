"""An access log that never contains token material.

aiohttp's default format writes the whole request line, query string included, so a token
passed as `private_token` (as the seed allows) would land in the log. The revoke route carries
a token in its path, so that segment is redacted too.
"""
from __future__ import annotations

import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from frontend.auth import QUERY_KEY

TOKEN_PATH = re.compile(r"^(/api/v1/tokens/)(?!id/)[^/]+")
REDACTED = "REDACTED"


def safe_target(request: web.BaseRequest) -> str:
    path = TOKEN_PATH.sub(rf"\g<1>{REDACTED}", request.rel_url.raw_path)
    query = request.rel_url.query
    if not query:
        return path
    parts = [f"{k}={REDACTED if k == QUERY_KEY else v}" for k, v in query.items()]
    return f"{path}?{'&'.join(parts)}"


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # The client as the authenticate middleware resolved it (trusted proxies honoured).
        client = request.get("client", request.remote)
        self.logger.info('%s "%s %s" %d %d %.1fms %s', client, request.method,
                         safe_target(request), response.status, response.body_length,
                         time * 1000, response.headers.get("X-Request-Id", "-"))
