"""An access log that never contains token material.

aiohttp's default format writes the whole request line, query string included, so a token
passed as `private_token` (as the seed allows) would land in the log. The revoke route carries
a token in its path, so that segment is redacted too.
"""
from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from frontend.auth import QUERY_KEY

REVOKE_PREFIX = "/api/v1/tokens/"
TOKEN_PATH = re.compile(rf"^({REVOKE_PREFIX})(?!id/)[^/]+")
REDACTED = "REDACTED"
LINE = '%s "%s %s" %d %d %.1fms %s'


def safe_target(request: web.BaseRequest) -> str:
    url = request.rel_url
    path = url.raw_path
    # The checks before the regex and the query parser only skip work that would find nothing.
    if path.startswith(REVOKE_PREFIX):
        path = TOKEN_PATH.sub(rf"\g<1>{REDACTED}", path)
    query = url.query if url.raw_query_string else None
    if not query:
        return path
    parts = [f"{k}={REDACTED if k == QUERY_KEY else v}" for k, v in query.items()]
    return f"{path}?{'&'.join(parts)}"


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        # The client as the authenticate middleware resolved it (trusted proxies honoured).
        args = (request.get("client", request.remote), request.method, safe_target(request),
                response.status, response.body_length, time * 1000,
                response.headers.get("X-Request-Id", "-"))
        # Logger.info would first walk the stack, once per request, for the caller's file and
        # line, which no access line shows (measured: see bench/README.md).
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, LINE, args, None))
