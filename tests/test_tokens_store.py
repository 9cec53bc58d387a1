"""The helper's token store: a private database, a published snapshot, nothing on the loop.

No write (nor a lock someone holds against it) holds up the event loop or verify(); a last use
is recorded without a publish; a crash loses no token, and what was committed but not yet
published is published at the next start; an older install's shared database comes over whole.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend.auth import TokenReader
from helperd.tokenstore import PRIVATE_DIR, TokenStore, private_path
from protocol import ops, tokens
from tests.conftest import FIRST_RELEASE_SCHEMA, World


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def store(state: str) -> Iterator[TokenStore]:
    s = TokenStore(state, gid=0, min_length=20)
    yield s
    s.close()


def mode(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_the_database_is_private_and_the_snapshot_0640_in_rollback_mode(
        state: str, store: TokenStore) -> None:
    store.create(None, "one", "read", None)
    assert mode(os.path.join(state, PRIVATE_DIR)) == (0, 0, 0o700)
    assert mode(private_path(state)) == (0, 0, 0o600)
    snapshot = tokens.snapshot_path(state)
    assert mode(snapshot) == (0, 0, 0o640)
    with open(snapshot, "rb") as f:
        header = f.read(20)
    # Rollback mode (bytes 18-19): a WAL snapshot would need a -shm file to be read.
    assert header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x01\x01"
    assert sorted(os.listdir(state)) == [PRIVATE_DIR, tokens.KEY_FILE, tokens.DB_FILE]


async def test_a_write_held_up_by_a_lock_stalls_neither_the_loop_nor_verify(
        state: str, store: TokenStore) -> None:
    _id, known = store.create(None, "known", "read", None)
    blocker = sqlite3.connect(private_path(state), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock: the store's next write must wait
    pending = asyncio.ensure_future(store.run(store.create, None, "waits", "read", None))
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    verifies: list[float] = []
    until = loop.time() + 0.5
    while loop.time() < until:
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        ticks.append(time.perf_counter() - started - 0.01)
        started = time.perf_counter()
        assert store.verify(known) is not None
        verifies.append(time.perf_counter() - started)
    assert not pending.done()  # the write really was held up all along
    blocker.execute("ROLLBACK")
    blocker.close()
    token_id, _token = await asyncio.wait_for(pending, 10)
    assert token_id == 2
    assert max(ticks) < 0.05 and max(verifies) < 0.01, (max(ticks), max(verifies))


async def test_a_use_is_recorded_off_the_loop_and_publishes_nothing(
        state: str, store: TokenStore) -> None:
    _id, token = store.create(None, "used", "read", None)
    snapshot = os.open(tokens.snapshot_path(state), os.O_RDONLY)  # pins its inode
    try:
        before = tokens.fd_identity(snapshot)
        assert store.verify(token) is not None
        [listed] = await store.run(store.list)  # behind the recording, on the same thread
        assert listed.last_used is not None and abs(listed.last_used - time.time()) < 5
        assert tokens.snapshot_identity(tokens.snapshot_path(state)) == before
    finally:
        os.close(snapshot)


# -- an older install's shared database --------------------------------------------------------



def make_old_store(state: str) -> dict[str, int]:
    """The store as the previous release left it: key and database side by side in state_dir,
    the database in rollback-journal mode and written in place. Returns token -> id."""
    os.makedirs(state, mode=0o750)
    key = secrets.token_bytes(tokens.KEY_BYTES)
    with open(os.path.join(state, tokens.KEY_FILE), "wb") as f:
        f.write(key)
    db = sqlite3.connect(os.path.join(state, tokens.DB_FILE), isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute(FIRST_RELEASE_SCHEMA)  # no kind, user, idle, parent or containers
    made = {}
    for n, scope in enumerate(("admin", "operate", "read", "gone")):
        token = f"lwp_old_{n}_" + secrets.token_urlsafe(32)
        cur = db.execute("INSERT INTO tokens (digest, description, scope, created, expires, "
                         "last_used) VALUES (?, ?, ?, ?, ?, ?)",
                         (tokens.digest(key, token), f"old {scope}",
                          scope if scope != "gone" else "read", 1.7e9 + n, None, 1.7e9 + 10))
        assert cur.lastrowid is not None
        made[token] = cur.lastrowid
    gone = next(t for t, i in made.items() if i == 4)
    db.execute("DELETE FROM tokens WHERE id = 4")  # the highest id: AUTOINCREMENT remembers it
    db.close()
    del made[gone]
    return made


def test_an_older_installs_shared_database_is_migrated_with_every_token(state: str) -> None:
    made = make_old_store(state)
    store = TokenStore(state, gid=0, min_length=20)
    try:
        assert [(r.id, r.description, r.created, r.last_used) for r in store.list()] == [
            (1, "old admin", 1.7e9, 1.7e9 + 10), (2, "old operate", 1.7e9 + 1, 1.7e9 + 10),
            (3, "old read", 1.7e9 + 2, 1.7e9 + 10)]
        reader = TokenReader(state)
        for token, token_id in made.items():
            record = store.verify(token)
            assert record is not None and record.id == token_id
            seen = reader.lookup(token)
            assert seen is not None and seen.id == token_id
        assert store.create(None, "new", "read", None)[0] == 5  # no id handed out twice
        assert mode(tokens.snapshot_path(state))[2] == 0o640
    finally:
        store.close()


def test_a_migration_cut_short_is_done_again_whole_at_the_next_start(state: str) -> None:
    made = make_old_store(state)
    os.makedirs(os.path.join(state, PRIVATE_DIR), mode=0o700)
    with open(private_path(state) + ".migrating", "wb") as f:
        f.write(b"SQLite format 3\x00 and then the power went")  # a copy cut short
    store = TokenStore(state, gid=0, min_length=20)
    try:
        assert sorted(r.id for r in store.list()) == sorted(made.values())
        assert not os.path.exists(private_path(state) + ".migrating")
        assert all(TokenReader(state).lookup(token) is not None for token in made)
    finally:
        store.close()


# -- a live helper killed ----------------------------------------------------------------------

@pytest.fixture
def dedicated(fresh_world: World) -> World:
    return fresh_world


def start(w: World) -> None:
    """Start the helper and wait until it accepts: its socket file exists a moment before it
    listens, and a refused connection in between would fail a test for no reason."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(w.socket)  # a stopped or killed helper's
    w.start_helper()
    deadline = time.monotonic() + 10
    while True:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(w.socket)
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.01)


def kill(w: World) -> None:
    assert w.process is not None
    w.process.kill()
    w.process.wait()
    w.process = None


@pytest.mark.lxc
@pytest.mark.security
def test_a_helper_killed_right_after_a_create_or_revoke_loses_nothing(dedicated: World) -> None:
    w = dedicated
    start(w)
    kept = w.call(ops.CreateToken(None, "kept", "read"))
    ended = w.call(ops.CreateToken(None, "ended", "read"))
    w.call(ops.RevokeToken(id=ended["id"]))
    kill(w)
    start(w)
    reader = TokenReader(w.state_dir)
    record = reader.lookup(kept["token"])
    assert record is not None and record.id == kept["id"]
    assert reader.lookup(ended["token"]) is None
    assert w.call(ops.ListContainers(), kept["token"]) == []
    assert [t["id"] for t in w.call(ops.ListTokens())] == [kept["id"]]


@pytest.mark.lxc
@pytest.mark.security
def test_what_was_committed_but_not_yet_published_is_published_at_the_next_start(
        dedicated: World) -> None:
    w = dedicated
    start(w)
    revoked = w.call(ops.CreateToken(None, "revoked before the crash", "read"))
    kill(w)
    # The helper's commits, as a crash between commit and publish would leave them: in its
    # own database, not yet in the frontend's snapshot.
    created = "lwp_committed_" + secrets.token_urlsafe(32)
    db = sqlite3.connect(private_path(w.state_dir), isolation_level=None)
    db.execute("INSERT INTO tokens (digest, description, scope, created) VALUES (?, ?, ?, ?)",
               (tokens.digest(tokens.load_key(w.state_dir), created), "created", "read",
                time.time()))
    db.execute("DELETE FROM tokens WHERE id = ?", (revoked["id"],))
    db.close()
    assert TokenReader(w.state_dir).lookup(created) is None  # not published: not yet seen
    assert TokenReader(w.state_dir).lookup(revoked["token"]) is not None
    start(w)
    reader = TokenReader(w.state_dir)
    assert reader.lookup(created) is not None
    assert reader.lookup(revoked["token"]) is None


@pytest.mark.lxc
def test_the_helper_upgrades_an_older_installs_store_and_serves_its_tokens(
        dedicated: World) -> None:
    w = dedicated
    made = make_old_store(w.state_dir)
    start(w)
    assert sorted(t["id"] for t in w.call(ops.ListTokens())) == sorted(made.values())
    reader = TokenReader(w.state_dir)
    for token, token_id in made.items():
        assert w.call(ops.ListContainers(), token) == []
        record = reader.lookup(token)
        assert record is not None and record.id == token_id
    new = w.call(ops.CreateToken(None, "after the upgrade", "read"))
    w.stop_helper()
    start(w)  # the second start finds the private database: nothing is migrated again
    assert sorted(t["id"] for t in w.call(ops.ListTokens())) == sorted(
        [*made.values(), new["id"]])
    assert TokenReader(w.state_dir).lookup(new["token"]) is not None
