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
    kind TEXT NOT NULL DEFAULT 'api',
    user TEXT,
    idle REAL,
    parent INTEGER,
    containers TEXT
)"""
# A constant, interpolated into queries (never client input: hence the S608 waivers).
COLUMNS = ("id, digest, description, scope, created, expires, last_used, kind, user, idle, "
           "parent, containers")
# Columns later versions added, as ALTER TABLE adds them to an older store (upgrade()): a
# store written before them holds unlimited API tokens only, which the defaults say.
ADDED_COLUMNS = {"kind": "TEXT NOT NULL DEFAULT 'api'", "user": "TEXT", "idle": "REAL",
                 "parent": "INTEGER", "containers": "TEXT"}
API = "api"  # a token an admin made: presented in a header or the query
SESSION = "session"  # a browser's sign-in: presented only in the session cookie


@dataclass(frozen=True)
class TokenRecord:
    id: int
    description: str
    scope: str
    created: float
    expires: float | None
    last_used: float | None
    kind: str = API
    user: str | None = None  # a session's account name (None: exchanged from a token)
    idle: float | None = None  # a session ends after this many seconds without a request
    parent: int | None = None  # the API token a session was exchanged for; ends with it
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
    (id_, _digest, description, scope, created, expires, last_used, kind, user, idle, parent,
     containers) = row
    return TokenRecord(int(id_), str(description), str(scope), float(created),
                       None if expires is None else float(expires),
                       None if last_used is None else float(last_used), str(kind),
                       None if user is None else str(user),
                       None if idle is None else float(idle),
                       None if parent is None else int(parent),
                       decode_containers(containers))


def upgrade(conn: sqlite3.Connection) -> list[str]:
    """Add the columns an older store lacks (in place: ALTER TABLE ADD COLUMN rewrites no
    row); returns their names. The caller holds the only write connection."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(tokens)")}
    added = [name for name in ADDED_COLUMNS if name not in have]
    for name in added:
        conn.execute(f"ALTER TABLE tokens ADD COLUMN {name} {ADDED_COLUMNS[name]}")
    return added


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
