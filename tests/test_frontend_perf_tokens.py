"""The frontend's token cache: a kept record never outlives a change to the store.

A revocation (or any other commit of the helper's) is seen on the very next lookup, as the
published snapshot is a new file; expiry and MAX_AGE still apply to a kept record; guesses are
never kept. Each test counts the lookups that
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
    assert len(finds) == 1  # the second use came from the cache
    store.revoke(token, None)  # (the store finds the token to revoke through tokens.find too)
    before = len(finds)
    assert reader.lookup(token) is None
    assert len(finds) == before + 1  # the third did not come from the cache


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


def test_every_create_and_revoke_publishes_a_new_snapshot_file(
        state: str, store: TokenStore) -> None:
    path = tokens.snapshot_path(state)
    held = [os.open(path, os.O_RDONLY)]  # held open, as a reader does: no inode is reused
    try:
        _id, token = store.create(None, "counted", "read", None)
        held.append(os.open(path, os.O_RDONLY))
        store.revoke(token, None)
        held.append(os.open(path, os.O_RDONLY))
        assert len({tokens.fd_identity(fd)[:2] for fd in held}) == 3
    finally:
        for fd in held:
            os.close(fd)


def test_a_file_written_in_place_is_reopened_not_trusted(
        state: str, store: TokenStore, finds: list[bytes]) -> None:
    """Only root can, and the helper never does; should an admin, the reader still follows."""
    _id, token = store.create(None, "edited", "read", None)
    reader = TokenReader(state, Clock())
    assert reader.lookup(token) is not None
    db = sqlite3.connect(tokens.snapshot_path(state))
    with db:
        db.execute("DELETE FROM tokens")
    db.close()
    os.utime(tokens.snapshot_path(state), ns=(1, 1))  # whatever the clock's granularity
    assert reader.lookup(token) is None
    assert len(finds) == 2


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
