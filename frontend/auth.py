"""Token verification on the frontend: read-only, against the helper's store.

The frontend can verify a token but never mint one (it has no write access to the store).
The store is opened lazily, so the frontend may start before the helper has created it.
"""
from __future__ import annotations

import sqlite3
import time

from aiohttp import web

from protocol import tokens
from protocol.errors import LwpError
from protocol.tokens import TokenRecord

QUERY_KEY = "private_token"
HEADER = "private-token"


def presented_token(request: web.Request) -> str | None:
    """The seed's rule: the query argument, else the header (its name is case-insensitive)."""
    if QUERY_KEY in request.rel_url.query:
        return request.rel_url.query[QUERY_KEY] or None
    return request.headers.get(HEADER) or None


class TokenReader:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._key: bytes | None = None
        self._db: sqlite3.Connection | None = None

    def lookup(self, token: str) -> TokenRecord | None:
        try:
            if self._key is None or self._db is None:
                self._key = tokens.load_key(self.state_dir)
                self._db = tokens.open_reader(self.state_dir)
            return tokens.lookup(self._db, self._key, token, time.time())
        except (OSError, ValueError, sqlite3.Error):
            self._key = self._db = None  # retry on the next request
            raise LwpError("helper-unavailable", "the token store cannot be read") from None
