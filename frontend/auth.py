"""Token verification on the frontend: read-only, against the snapshot the helper publishes.

The frontend can verify a token but never mint one (it has no write access to the store), and
takes no lock on it. The snapshot is opened lazily, so the frontend may start before the helper.
"""
from __future__ import annotations

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
    # No query string, no query argument: parsing an empty one is a cost on every request
    # (measured: see bench/README.md).
    if url.raw_query_string and QUERY_KEY in url.query:
        return url.query[QUERY_KEY] or None
    return request.headers.get(HEADER) or None


# A verified record is reused while the store's snapshot stays the same file: the helper
# publishes every commit (a revocation, a new token) as a new file, renamed over the old one
# before it replies, so a revoked token is refused on the very next request. Telling is one
# stat, cheaper than a SQLite lookup (measured: see bench/README.md). MAX_AGE bounds the reuse
# even so. Only known tokens are kept, by HMAC digest: no token material, and no growth from
# guessing; expiry is checked on every use.
MAX_AGE = 1.0
MAX_KEPT = 1024


class TokenReader:
    def __init__(self, state_dir: str, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.path = tokens.snapshot_path(state_dir)
        self.clock = clock
        self._store: tuple[bytes, sqlite3.Connection, int] | None = None
        self._identity: tuple[int, ...] | None = None
        self._kept: dict[bytes, TokenRecord] = {}
        self._since = 0.0

    def lookup(self, token: str) -> TokenRecord | None:
        try:
            return self._lookup(token, self.clock())
        except (OSError, ValueError, sqlite3.Error):
            self._close()  # retry on the next request
            raise LwpError("helper-unavailable", "the token store cannot be read") from None

    def _lookup(self, token: str, now: float) -> TokenRecord | None:
        identity = tokens.snapshot_identity(self.path)
        if self._store is None or identity != self._identity:
            self._open(now)
        elif not 0 <= now - self._since < MAX_AGE:
            self._kept.clear()
            self._since = now
        assert self._store is not None
        key, db, _fd = self._store
        wanted = tokens.digest(key, token)
        record = self._kept.get(wanted)
        if record is None:
            record = tokens.find(db, wanted)
            if record is None:
                return None
            if len(self._kept) < MAX_KEPT:
                self._kept[wanted] = record
        return record if tokens.live(record, now) else None

    def _open(self, now: float) -> None:
        """Open the snapshot with a descriptor of our own first, then SQLite: SQLite gets that
        file or a newer one, never an older, and while our descriptor pins the file its inode
        cannot be reused, so any later publish changes what the path's stat shows."""
        self._close()
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            identity = tokens.fd_identity(fd)
            # The key too: a rotated key (which revokes every token) is read by the helper at
            # its start, which always publishes.
            key = tokens.load_key(self.state_dir)
            db = tokens.open_reader(self.state_dir)
        except BaseException:
            os.close(fd)
            raise
        self._store, self._identity, self._since = (key, db, fd), identity, now

    def _close(self) -> None:
        if self._store is not None:
            self._store[1].close()
            os.close(self._store[2])
        self._store = None
        self._identity = None
        self._kept.clear()
