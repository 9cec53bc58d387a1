"""Token verification on the frontend: read-only, against the helper's store.

The frontend can verify a token but never mint one (it has no write access to the store).
The store is opened lazily, so the frontend may start before the helper has created it.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable

from aiohttp import web

from protocol import tokens
from protocol.errors import LwpError
from protocol.tokens import TokenRecord

QUERY_KEY = "private_token"
HEADER = "private-token"


def presented_token(request: web.Request) -> str | None:
    """The seed's rule: the query argument, else the header (its name is case-insensitive)."""
    url = request.rel_url
    # No query string, no query argument: parsing an empty one costs ~3 us a request.
    if url.raw_query_string and QUERY_KEY in url.query:
        return url.query[QUERY_KEY] or None
    return request.headers.get(HEADER) or None


# A verified record is reused while the store's file change counter stands still: every
# commit of the helper's (a revocation, a new token, an expiry change) moves it before the
# helper replies, so a revoked token is refused on the very next request. The counter is one
# pread; a SQLite lookup costs a read transaction (locks, a journal check) every time.
# MAX_AGE bounds the reuse even so. Only known tokens are kept, by HMAC digest: no token
# material, and no growth from guessing; expiry is checked on every use.
MAX_AGE = 1.0
MAX_KEPT = 1024


class TokenReader:
    def __init__(self, state_dir: str, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self._store: tuple[bytes, sqlite3.Connection, int] | None = None
        self._kept: dict[bytes, TokenRecord] = {}
        self._counter: bytes | None = None
        self._since = 0.0

    def lookup(self, token: str) -> TokenRecord | None:
        try:
            return self._lookup(token, self.clock())
        except (OSError, ValueError, sqlite3.Error):
            self._close()  # retry on the next request
            raise LwpError("helper-unavailable", "the token store cannot be read") from None

    def _lookup(self, token: str, now: float) -> TokenRecord | None:
        key, db, header = self._store or self._open()
        wanted = tokens.digest(key, token)
        # Read before the lookup: a commit landing in between moves the counter past the
        # one stored here, so what the lookup saw is dropped on the next request.
        counter = tokens.change_counter(header)
        if counter is None or counter != self._counter or not 0 <= now - self._since < MAX_AGE:
            self._kept.clear()
            self._counter, self._since = counter, now
        record = self._kept.get(wanted)
        if record is None:
            record = tokens.find(db, wanted)
            if record is None:
                return None
            if counter is not None and len(self._kept) < MAX_KEPT:
                self._kept[wanted] = record
        return record if tokens.live(record, now) else None

    def _open(self) -> tuple[bytes, sqlite3.Connection, int]:
        key = tokens.load_key(self.state_dir)
        db = tokens.open_reader(self.state_dir)
        self._store = (key, db, tokens.open_header(self.state_dir))
        return self._store

    def _close(self) -> None:
        if self._store is not None:
            with contextlib.suppress(OSError):
                os.close(self._store[2])
            self._store[1].close()
        self._store = None
        self._kept.clear()
