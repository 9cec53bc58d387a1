"""The token store's only writer: creates, verifies, lists and revokes API tokens.

Tokens are stored as HMAC-SHA256(key, token); the key and the database are readable by root
and the service group (so the frontend can verify) and writable by root alone. Every write is
committed with synchronous=FULL before the helper replies, so a crash loses no token.
"""
from __future__ import annotations

import os
import secrets
import sqlite3
import time

from helperd import safedirs
from protocol import tokens
from protocol.errors import LwpError
from protocol.tokens import TokenRecord

GENERATED_PREFIX = "lwp_"
# last_used is written at most this often per token, so reads do not cost an fsync each.
LAST_USED_GRANULARITY = 60.0


def _ensure_file(path: str, gid: int, make: bytes | None) -> None:
    """Create `path` 0640 root:gid if missing (atomically, never readable by others)."""
    if make is not None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(make)
                f.flush()
                os.fsync(f.fileno())
    os.chown(path, 0, gid, follow_symlinks=False)
    os.chmod(path, 0o640, follow_symlinks=False)


class TokenStore:
    def __init__(self, state_dir: str, gid: int, min_length: int) -> None:
        self.min_length = min_length
        safedirs.ensure_dir(state_dir, gid, 0o750)  # the frontend's group must traverse it
        key_path = os.path.join(state_dir, tokens.KEY_FILE)
        _ensure_file(key_path, gid, secrets.token_bytes(tokens.KEY_BYTES))
        self.key = tokens.load_key(state_dir)
        db_path = os.path.join(state_dir, tokens.DB_FILE)
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        # Rollback journal, not WAL: the frontend opens the file read-only, which WAL forbids
        # unless it may write the -shm file.
        self.db.execute("PRAGMA journal_mode=DELETE")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(tokens.SCHEMA)
        _ensure_file(db_path, gid, None)
        self._last_used: dict[int, float] = {}

    def verify(self, token: str) -> TokenRecord | None:
        now = time.time()
        record = tokens.lookup(self.db, self.key, token, now)
        if record is not None and now - self._last_used.get(record.id, 0.0) > LAST_USED_GRANULARITY:
            self._last_used[record.id] = now
            self.db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (now, record.id))
        return record

    def create(self, token: str | None, description: str, scope: str,
               expires: float | None) -> tuple[int, str]:
        """Register a token (generating one when None); returns its id and the token."""
        if token is None:
            token = GENERATED_PREFIX + secrets.token_urlsafe(32)  # 256 bits
        elif len(token) < self.min_length:
            raise LwpError("invalid-request",
                           f"token: must be at least {self.min_length} characters")
        try:
            cur = self.db.execute(
                "INSERT INTO tokens (digest, description, scope, created, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (tokens.digest(self.key, token), description, scope, time.time(), expires))
        except sqlite3.IntegrityError:
            raise LwpError("token-exists", "that token is already registered") from None
        assert cur.lastrowid is not None
        return cur.lastrowid, token

    def revoke(self, token: str | None, token_id: int | None) -> TokenRecord:
        if token is not None:
            row = self.db.execute(f"SELECT {tokens.COLUMNS} FROM tokens WHERE digest = ?",  # noqa: S608
                                  (tokens.digest(self.key, token),)).fetchone()
        else:
            row = self.db.execute(f"SELECT {tokens.COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608
                                  (token_id,)).fetchone()
        if row is None:
            raise LwpError("not-found", "no such token")
        self.db.execute("DELETE FROM tokens WHERE id = ?", (row[0],))
        return tokens.row_record(row)

    def list(self) -> list[TokenRecord]:
        query = f"SELECT {tokens.COLUMNS} FROM tokens ORDER BY id"  # noqa: S608
        rows = self.db.execute(query).fetchall()
        return [tokens.row_record(row) for row in rows]
