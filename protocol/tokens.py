"""The token store's format, shared by its one writer (the helper) and its reader (the frontend).

Only HMAC-SHA256(key, token) is stored, never a token. Lookup is by digest through the unique
index, so an unknown token and a known one with a wrong secret cost the same. The frontend reads
a snapshot that the helper replaces whole (by rename) and never writes in place.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import urllib.parse
from dataclasses import dataclass
from typing import Any

from protocol import keyfile

DB_FILE = "tokens.sqlite3"  # in state_dir: the snapshot the helper publishes for the frontend
KEY_FILE = "token.key"
KEY_BYTES = keyfile.KEY_BYTES

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest BLOB NOT NULL UNIQUE,
    description TEXT NOT NULL,
    scope TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    last_used REAL,
    containers TEXT
)"""
# A constant, interpolated into queries (never client input: hence the S608 waivers).
COLUMNS = "id, digest, description, scope, created, expires, last_used, containers"
# Columns added after the first release, with their type: a store without one gains it
# (ALTER TABLE ... ADD COLUMN, NULL in every old row) when the helper opens it.
ADDED_COLUMNS = {"containers": "TEXT"}


@dataclass(frozen=True)
class TokenRecord:
    id: int
    description: str
    scope: str
    created: float
    expires: float | None
    last_used: float | None
    # The name patterns of the only containers it may see (rules.container_patterns); None:
    # every container. A limited token is also refused tokens, the trail and the host report.
    containers: tuple[str, ...] | None = None

    def public(self) -> dict[str, object]:
        """What may be shown about a token: everything but its secret, which we never have."""
        return {"id": self.id, "description": self.description, "scope": self.scope,
                "created": self.created, "expires": self.expires, "last_used": self.last_used,
                "containers": None if self.containers is None else list(self.containers)}


def encode_containers(patterns: tuple[str, ...] | None) -> str | None:
    """The containers column: a JSON list of patterns, or NULL for every container."""
    return None if patterns is None else json.dumps(list(patterns))


def decode_containers(text: str | None) -> tuple[str, ...] | None:
    """The column read back. Written by the helper alone, from validated patterns; a value
    that is not a list of strings fails closed (the empty tuple: no container matches)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ()
    return tuple(value)


def digest(key: bytes, token: str) -> bytes:
    return hmac.new(key, token.encode("utf-8"), hashlib.sha256).digest()


def load_key(state_dir: str) -> bytes:
    return keyfile.read(os.path.join(state_dir, KEY_FILE), KEY_FILE)


def snapshot_path(state_dir: str) -> str:
    return os.path.join(state_dir, DB_FILE)


def open_reader(state_dir: str) -> sqlite3.Connection:
    """A read-only connection on the snapshot: the frontend may verify tokens, never write one.

    `immutable`: the helper never writes a published snapshot (it replaces it), so SQLite may
    skip all locking and change detection; a replaced file is the caller's to notice, through
    snapshot_identity()."""
    path = urllib.parse.quote(snapshot_path(state_dir))  # a '?' or '#' in it stays a name
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                           check_same_thread=False, isolation_level=None)


def snapshot_identity(path: str) -> tuple[int, int, int, int]:
    """What tells one snapshot from the next (one stat on every request): a new inode
    at every publish (unique while a reader holds the old one open), a new mtime or size
    should root ever write the file in place."""
    st = os.stat(path)  # inlined, not shared with fd_identity: it runs on every request
    return st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size


def fd_identity(fd: int) -> tuple[int, int, int, int]:
    st = os.fstat(fd)
    return st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size


def row_record(row: tuple[Any, ...]) -> TokenRecord:
    id_, _digest, description, scope, created, expires, last_used, containers = row
    return TokenRecord(int(id_), str(description), str(scope), float(created),
                       None if expires is None else float(expires),
                       None if last_used is None else float(last_used),
                       decode_containers(containers))


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
