"""The token store's only writer: its own database, and the snapshot the frontend verifies from.

The database lives in a 0700 root directory that no other user can open, so no one can hold a
lock on it; after every committed create or revoke, before the reply, a complete snapshot
replaces `tokens.sqlite3` (0640 root:group) by rename. Writes run on one thread of their own.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from helperd import safedirs
from protocol import keyfile, tokens
from protocol.errors import LwpError
from protocol.tokens import TokenRecord

log = logging.getLogger("lwp.helperd")
T = TypeVar("T")

GENERATED_PREFIX = "lwp_"
# last_used is written at most this often per token, so reads do not cost an fsync each.
LAST_USED_GRANULARITY = 60.0
# Where the helper's own database lives, under state_dir: 0700 root, so that the frontend's
# user cannot open it, and so cannot hold the read lock that once stalled every revocation.
PRIVATE_DIR = "private"
# The only process that opens the private database is the helper, whose writer connection stays
# open, so in WAL mode a read never has a lock to wait for. Should one ever appear (WAL
# recovery), the loop waits this long at most, then the request fails.
READ_WAIT = 0.1
INSERT = (f"INSERT INTO tokens ({tokens.COLUMNS}) "  # noqa: S608 — constants only
          f"VALUES ({', '.join('?' * len(tokens.COLUMNS.split(',')))})")


def private_path(state_dir: str) -> str:
    """The helper's own database (never the frontend's: it reads the published snapshot)."""
    return os.path.join(state_dir, PRIVATE_DIR, tokens.DB_FILE)


def _create_private(path: str) -> None:
    """Make `path` 0600 (empty, if new) before SQLite opens it: its journal, WAL and shared
    memory files take the database's mode, and a directory's mode is one line of defence."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    os.chmod(path, 0o600, follow_symlinks=False)


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_durably(tmp: str, final: str) -> None:
    """Put a complete, synced file in place: a crash leaves the old file or the new one."""
    os.rename(tmp, final)
    _fsync(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY)


def _migrate(shared: str, private: str) -> None:
    """Bring an older install's database (the shared file, written in place) into the private
    directory. The copy is complete and synced before it takes the private name, and the shared
    file is left as it was until the publish that follows replaces it: a crash at any point
    leaves either nothing migrated (done again at the next start) or all of it."""
    tmp = private + ".migrating"
    _remove(tmp, tmp + "-journal")
    # Read-write, as root: should the old helper have died mid-write, SQLite rolls back its hot
    # journal first. A reader's lock (the frontend's) does not stand in the way of reading.
    source = sqlite3.connect(shared, isolation_level=None)
    try:
        _create_private(tmp)
        copy = sqlite3.connect(tmp, isolation_level=None)
        try:
            source.backup(copy)  # every page: ids, and AUTOINCREMENT's memory of them, kept
        finally:
            copy.close()
    finally:
        source.close()
    _fsync(tmp)
    _rename_durably(tmp, private)
    log.info("token store moved from %s to %s", shared, private)


class TokenStore:
    def __init__(self, state_dir: str, gid: int, min_length: int) -> None:
        self.min_length = min_length
        self.gid = gid
        safedirs.ensure_dir(state_dir, gid, 0o750)  # the frontend's group must traverse it
        key_path = os.path.join(state_dir, tokens.KEY_FILE)
        keyfile.make(key_path, gid, 0o640)  # the frontend's group reads it
        self.key = tokens.load_key(state_dir)
        safedirs.ensure_dir(os.path.join(state_dir, PRIVATE_DIR), 0, 0o700)
        self.path = private_path(state_dir)
        self.snapshot = tokens.snapshot_path(state_dir)
        if not os.path.exists(self.path) and os.path.exists(self.snapshot):
            _migrate(self.snapshot, self.path)
        _create_private(self.path)
        # WAL: nobody else opens this file, and a WAL reader never waits for the writer.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the reply
        self._db.execute(tokens.SCHEMA)
        added = tokens.upgrade(self._db)  # a store from before sessions: published below
        if added:
            log.info("token store: added columns %s", ", ".join(added))
        self._reads = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                      timeout=READ_WAIT)
        self._reads.execute("PRAGMA query_only=1")
        self._lock = threading.Lock()  # the write connection: one user at a time
        # One thread, so writes keep their order; never the event loop's.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tokens")
        self._last_used: dict[int, float] = {}
        self._seen: dict[int, float] = {}  # sessions: the last use, to the second
        # Always, at start: a crash between a commit and its publish loses nothing.
        with self._lock:
            self._publish()

    async def run(self, method: Callable[..., T], *args: Any) -> T:
        """Run one of this store's blocking methods on its own thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, method, *args)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._reads.close()
        self._db.close()

    def verify(self, token: str) -> TokenRecord | None:
        """The live record of a presented token, else None. Safe on the event loop: one
        indexed read that no lock can hold up; the last_used write goes to the store's thread."""
        now = time.time()
        record = tokens.lookup(self._reads, self.key, token, now)
        if record is None:
            return None
        if record.idle is not None:
            # last_used reaches the database once a minute; this memory has every use (after
            # a restart a session may end up to a minute early, never late).
            seen = max(self._seen.get(record.id, 0.0), record.last_used or 0.0, record.created)
            if now - seen > record.idle:
                self._seen.pop(record.id, None)
                self._thread.submit(self._end_idle, record.id)  # for good, not for a request
                return None
            self._seen[record.id] = now
        if now - self._last_used.get(record.id, 0.0) > LAST_USED_GRANULARITY:
            self._last_used[record.id] = now
            self._thread.submit(self._touch, record.id, now)
        return record

    def create(self, token: str | None, description: str, scope: str,
               expires: float | None,
               containers: tuple[str, ...] | None = None) -> tuple[int, str]:
        """Register a token (generating one when None); returns its id and the token.

        Blocking (a commit and a publish, with their fsyncs): the helper calls it through run()."""
        if token is None:
            token = GENERATED_PREFIX + secrets.token_urlsafe(32)  # 256 bits
        elif len(token) < self.min_length:
            raise LwpError("invalid-request",
                           f"token: must be at least {self.min_length} characters")
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO tokens (digest, description, scope, created, expires, "
                    "containers) VALUES (?, ?, ?, ?, ?, ?)",
                    (tokens.digest(self.key, token), description, scope, time.time(), expires,
                     tokens.encode_containers(containers)))
            except sqlite3.IntegrityError:
                raise LwpError("token-exists", "that token is already registered") from None
            self._publish()
        assert cur.lastrowid is not None
        return cur.lastrowid, token

    def create_session(self, user: str | None, description: str, scope: str, idle: float,
                       lifetime: float, parent: int | None = None) -> tuple[int, str]:
        """Mint a session: a generated token of kind `session`, bound to `user`, that ends
        after `idle` seconds unused or `lifetime` seconds after now (sooner if its parent
        token expires first); blocking, as create()."""
        secret = GENERATED_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        expires = now + lifetime
        containers = None
        with self._lock:
            if parent is not None:
                owner = self._by_id(parent)
                if owner is None:  # revoked while this sign-in ran
                    raise LwpError("unauthorized", "Unauthorized")
                if owner.expires is not None:
                    expires = min(expires, owner.expires)
                # A session is never more than the token it was exchanged for.
                containers = owner.containers
            cur = self._db.execute(
                "INSERT INTO tokens (digest, description, scope, created, expires, kind, user, "
                "idle, parent, containers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tokens.digest(self.key, secret), description, scope, now, expires,
                 tokens.SESSION, user, idle, parent, tokens.encode_containers(containers)))
            self._publish()
        assert cur.lastrowid is not None
        return cur.lastrowid, secret

    def _end_idle(self, session_id: int) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM tokens WHERE id = ? AND kind = ?",
                                 (session_id, tokens.SESSION))
                self._publish()
        except (OSError, sqlite3.Error) as exc:  # it is refused anyway; retried at next use
            log.warning("session %d: idle end not recorded: %s", session_id, exc)
        else:
            log.info("session %d ended: idle", session_id)

    def revoke(self, token: str | None, token_id: int | None) -> TokenRecord:
        """Delete a token (by token or by id); blocking, as create()."""
        with self._lock:
            record = (tokens.find(self._db, tokens.digest(self.key, token)) if token is not None
                      else self._by_id(token_id))
            if record is None:
                raise LwpError("not-found", "no such token")
            self._db.execute("DELETE FROM tokens WHERE id = ?", (record.id,))
            # The sessions a token was exchanged for end with it.
            self._db.execute("DELETE FROM tokens WHERE parent = ?", (record.id,))
            self._publish()
        return record

    def _by_id(self, token_id: int | None) -> TokenRecord | None:
        row = self._db.execute(f"SELECT {tokens.COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608
                               (token_id,)).fetchone()
        return None if row is None else tokens.row_record(row)

    def list(self) -> list[TokenRecord]:
        """API tokens (sessions are not tokens an admin manages here)."""
        query = f"SELECT {tokens.COLUMNS} FROM tokens WHERE kind = ? ORDER BY id"  # noqa: S608
        with self._lock:
            rows = self._db.execute(query, (tokens.API,)).fetchall()
        return [tokens.row_record(row) for row in rows]

    def _touch(self, token_id: int, now: float) -> None:
        """Record a use. Not published: the frontend has no use for last_used."""
        try:
            with self._lock:
                self._db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (now, token_id))
        except sqlite3.Error as exc:  # a lost last_used is no reason to fail anything
            log.warning("token %d: last use not recorded: %s", token_id, exc)

    def _publish(self) -> None:
        """Replace the frontend's snapshot with what is committed (the caller holds the lock).

        The new file is complete, 0640 root:group and synced before it takes the name, so a
        reader opens the old snapshot or the new one, never a part; the directory is synced
        after, so the rename outlives a crash. No one's lock on the old file matters."""
        tmp = os.path.join(os.path.dirname(self.snapshot), f".{tokens.DB_FILE}.new")
        _remove(tmp, tmp + "-journal")  # a crashed publish's
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            snap = sqlite3.connect(tmp, isolation_level=None)
            try:
                # A scratch file until renamed: no journal to roll back to, and one fsync
                # (below) instead of SQLite's. journal_mode=OFF keeps the rollback-mode header.
                snap.execute("PRAGMA journal_mode=OFF")
                snap.execute("PRAGMA synchronous=OFF")
                snap.execute(tokens.SCHEMA)
                snap.execute("BEGIN")
                snap.executemany(INSERT, self._db.execute(
                    f"SELECT {tokens.COLUMNS} FROM tokens"))  # noqa: S608
                snap.execute("COMMIT")
            finally:
                snap.close()
            os.fchown(fd, 0, self.gid)
            os.fchmod(fd, 0o640)
            os.fsync(fd)
        finally:
            os.close(fd)
        _rename_durably(tmp, self.snapshot)
