"""The frontend's token cache: a kept record never outlives a change to the store.

A revocation (or any other commit of the helper's) is seen on the very next lookup; expiry and
MAX_AGE still apply to a kept record; guesses are never kept. Each test counts the lookups that
reached SQLite, so a cache that was never used cannot pass.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from frontend.auth import MAX_AGE, TokenReader, presented_token
from helperd.tokenstore import TokenStore
from protocol import tokens
from protocol.errors import LwpError
from protocol.tokens import TokenRecord


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path)


@pytest.fixture
def store(state: str) -> TokenStore:
    return TokenStore(state, gid=0, min_length=20)


@pytest.fixture
def finds(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The digests of every lookup that reached SQLite."""
    seen: list[bytes] = []
    real = tokens.find

    def counting(db: sqlite3.Connection, wanted: bytes) -> TokenRecord | None:
        seen.append(wanted)
        return real(db, wanted)

    monkeypatch.setattr(tokens, "find", counting)
    return seen


def test_a_known_token_is_read_from_sqlite_once_while_the_store_stands_still(
        state: str, store: TokenStore, finds: list[bytes]) -> None:
    token_id, token = store.create(None, "kept", "read", None)
    reader = TokenReader(state)
    for _ in range(5):
        record = reader.lookup(token)
        assert record is not None and record.id == token_id
    assert len(finds) == 1


def test_a_revoked_token_is_refused_on_the_very_next_lookup(
        state: str, store: TokenStore, finds: list[bytes]) -> None:
    _id, token = store.create(None, "revoked", "read", None)
    reader = TokenReader(state, Clock())  # a clock that stands still: MAX_AGE never ends
    assert reader.lookup(token) is not None
    assert reader.lookup(token) is not None
    store.revoke(token, None)
    assert reader.lookup(token) is None
    assert len(finds) == 2  # the second use came from the cache, the third did not


def test_any_commit_to_the_store_drops_every_kept_record(
        state: str, store: TokenStore, finds: list[bytes]) -> None:
    _id, token = store.create(None, "first", "read", None)
    reader = TokenReader(state, Clock())
    reader.lookup(token)
    store.create(None, "second", "read", None)
    assert reader.lookup(token) is not None
    assert len(finds) == 2


def test_a_kept_record_still_expires(state: str, store: TokenStore,
                                     finds: list[bytes]) -> None:
    clock = Clock()
    _id, token = store.create(None, "expiring", "read", clock.now + MAX_AGE / 4)
    reader = TokenReader(state, clock)
    assert reader.lookup(token) is not None
    clock.now += MAX_AGE / 2
    assert reader.lookup(token) is None
    assert len(finds) == 1  # refused from the cache: expiry is checked on every use


@pytest.mark.parametrize("step", [MAX_AGE, -1.0])
def test_nothing_is_kept_beyond_max_age_or_across_a_clock_step_back(
        state: str, store: TokenStore, finds: list[bytes], step: float) -> None:
    clock = Clock()
    _id, token = store.create(None, "aged", "read", None)
    reader = TokenReader(state, clock)
    reader.lookup(token)
    clock.now += step
    assert reader.lookup(token) is not None
    assert len(finds) == 2


def test_unknown_tokens_are_never_kept(state: str, store: TokenStore,
                                       finds: list[bytes]) -> None:
    reader = TokenReader(state, Clock())
    guess = "lwp_" + "x" * 43
    assert reader.lookup(guess) is None
    assert reader.lookup(guess) is None
    assert len(finds) == 2


def test_the_change_counter_moves_with_every_commit_of_the_store(
        state: str, store: TokenStore) -> None:
    fd = tokens.open_header(state)
    try:
        seen = [tokens.change_counter(fd)]
        _id, token = store.create(None, "counted", "read", None)
        seen.append(tokens.change_counter(fd))
        store.revoke(token, None)
        seen.append(tokens.change_counter(fd))
    finally:
        os.close(fd)
    assert None not in seen and len(set(seen)) == 3


def test_no_counter_is_trusted_from_a_wal_database_or_a_foreign_file(tmp_path: Path) -> None:
    wal = os.path.join(tmp_path, "wal.sqlite3")
    db = sqlite3.connect(wal, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.close()
    other = os.path.join(tmp_path, "other")
    with open(other, "wb") as f:
        f.write(b"not a database at all, but long enough to have a header")
    for path in (wal, other):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert tokens.change_counter(fd) is None, path
        finally:
            os.close(fd)


def test_a_store_that_cannot_be_read_is_helper_unavailable_then_retried(
        state: str, store: TokenStore) -> None:
    _id, token = store.create(None, "retried", "read", None)
    reader = TokenReader(state)
    key_path = os.path.join(state, tokens.KEY_FILE)
    os.rename(key_path, key_path + ".away")
    with pytest.raises(LwpError, match="token store cannot be read"):
        reader.lookup(token)
    os.rename(key_path + ".away", key_path)
    assert reader.lookup(token) is not None


@pytest.mark.parametrize(("target", "headers", "presented"), [
    ("/api/v1/containers", {"Private-Token": "from-header"}, "from-header"),
    ("/api/v1/containers", {"PRIVATE-TOKEN": "from-header"}, "from-header"),
    ("/api/v1/containers?private_token=from-query", {"Private-Token": "h"}, "from-query"),
    ("/api/v1/containers?force=1&private_token=q", {}, "q"),
    # Present but empty: the query argument still wins, and presents nothing.
    ("/api/v1/containers?private_token=", {"Private-Token": "from-header"}, None),
    ("/api/v1/containers?force=1", {"Private-Token": "from-header"}, "from-header"),
    ("/api/v1/containers?", {"Private-Token": "from-header"}, "from-header"),
    ("/api/v1/containers", {}, None),
    ("/api/v1/containers", {"Private-Token": ""}, None),
])
def test_the_presented_token_follows_the_seeds_rule(
        target: str, headers: dict[str, str], presented: str | None) -> None:
    assert presented_token(make_mocked_request("GET", target, headers=headers)) == presented
