"""The token store's format, shared by its one writer (the helper) and its reader (the frontend).

Only HMAC-SHA256(key, token) is stored, never a token. Lookup is by digest through the unique
index, so an unknown token and a known one with a wrong secret cost the same.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

DB_FILE = "tokens.sqlite3"
KEY_FILE = "token.key"
KEY_BYTES = 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest BLOB NOT NULL UNIQUE,
    description TEXT NOT NULL,
    scope TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    last_used REAL
)"""
# A constant, interpolated into queries (never client input: hence the S608 waivers).
COLUMNS = "id, digest, description, scope, created, expires, last_used"
# SQLite's file header (sqlite.org/fileformat.html): the magic string, the write and read
# format versions at bytes 18-19 (1: rollback journal, 2: WAL), the change counter at 24-27.
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_END = 28


@dataclass(frozen=True)
class TokenRecord:
    id: int
    description: str
    scope: str
    created: float
    expires: float | None
    last_used: float | None

    def public(self) -> dict[str, object]:
        """What may be shown about a token: everything but its secret, which we never have."""
        return {"id": self.id, "description": self.description, "scope": self.scope,
                "created": self.created, "expires": self.expires, "last_used": self.last_used}


def digest(key: bytes, token: str) -> bytes:
    return hmac.new(key, token.encode("utf-8"), hashlib.sha256).digest()


def load_key(state_dir: str) -> bytes:
    with open(os.path.join(state_dir, KEY_FILE), "rb") as f:
        key = f.read()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{KEY_FILE} must hold exactly {KEY_BYTES} bytes")
    return key


def open_reader(state_dir: str) -> sqlite3.Connection:
    """A read-only connection: the frontend may verify tokens but never write one."""
    path = os.path.join(state_dir, DB_FILE)
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                           isolation_level=None)


def row_record(row: tuple[Any, ...]) -> TokenRecord:
    id_, _digest, description, scope, created, expires, last_used = row
    return TokenRecord(int(id_), str(description), str(scope), float(created),
                       None if expires is None else float(expires),
                       None if last_used is None else float(last_used))


def lookup(conn: sqlite3.Connection, key: bytes, token: str, now: float) -> TokenRecord | None:
    """The live (known, unexpired) token record for a presented token, else None."""
    record = find(conn, digest(key, token))
    return record if record is not None and live(record, now) else None


def find(conn: sqlite3.Connection, wanted: bytes) -> TokenRecord | None:
    """The record stored under a digest, expired or not, else None."""
    row = conn.execute(f"SELECT {COLUMNS} FROM tokens WHERE digest = ?",  # noqa: S608
                       (wanted,)).fetchone()
    if row is None or not hmac.compare_digest(row[1], wanted):
        return None
    return row_record(row)


def live(record: TokenRecord, now: float) -> bool:
    return record.expires is None or record.expires > now


def open_header(state_dir: str) -> int:
    """A read-only descriptor on the store's file, for change_counter()."""
    return os.open(os.path.join(state_dir, DB_FILE), os.O_RDONLY | os.O_CLOEXEC)


def change_counter(fd: int) -> bytes | None:
    """SQLite's file change counter, read from the file header without SQLite (1 syscall).

    In rollback-journal mode (the store's, see helperd.tokenstore) every committed write
    moves it, before the writer's commit returns. In WAL mode it may not move: None then,
    as for a header that is not SQLite's, so that nothing is trusted to it.
    """
    head = os.pread(fd, HEADER_END, 0)
    if len(head) < HEADER_END or not head.startswith(SQLITE_MAGIC) or head[18:20] != b"\x01\x01":
        return None
    return head[24:28]
