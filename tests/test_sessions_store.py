"""Sessions in the token store: tokens of kind `session`, bound to a user, ended by an idle
and an absolute lifetime and by their parent token's revocation; older stores upgraded."""
from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator

import pytest

from frontend.auth import TokenReader
from helperd.tokenstore import TokenStore, private_path
from protocol import tokens
from tests.conftest import FIRST_RELEASE_SCHEMA


@pytest.fixture
def state() -> Iterator[str]:
    base = tempfile.mkdtemp(prefix="lwp-sessions-")
    os.chmod(base, 0o755)
    yield os.path.join(base, "state")
    import shutil
    shutil.rmtree(base)


@pytest.fixture
def store(state: str) -> Iterator[TokenStore]:
    s = TokenStore(state, gid=0, min_length=20)
    yield s
    s.close()


def settle(store: TokenStore) -> None:
    """Wait for the store's thread (an idle session's end is written there)."""
    store._thread.submit(lambda: None).result()


def test_a_session_is_a_generated_token_of_kind_session_bound_to_its_user(
        store: TokenStore, state: str) -> None:
    session_id, secret = store.create_session("alice", "alice", "operate", idle=60,
                                              lifetime=600)
    record = store.verify(secret)
    assert record is not None and (record.id, record.kind, record.user, record.scope) == (
        session_id, "session", "alice", "operate")
    assert record.expires is not None and 590 < record.expires - time.time() <= 600
    assert secret.startswith("lwp_") and len(secret) == 47  # 256 random bits
    seen = TokenReader(state).lookup(secret)  # the frontend sees it, with its kind
    assert seen is not None and seen.kind == "session" and seen.user == "alice"
    assert store.list() == []  # the token list is an admin's API tokens only


@pytest.mark.security
def test_an_idle_session_ends_for_good_and_use_keeps_it_alive(store: TokenStore,
                                                              state: str) -> None:
    _, secret = store.create_session("alice", "alice", "read", idle=1.0, lifetime=600)
    for _ in range(4):  # used every 0.6 s: 2.4 s in all, past its idle time, still alive
        time.sleep(0.6)
        assert store.verify(secret) is not None
    time.sleep(1.2)
    assert store.verify(secret) is None
    settle(store)
    assert TokenReader(state).lookup(secret) is None  # gone from the frontend's snapshot too


@pytest.mark.security
def test_the_absolute_lifetime_ends_a_session_in_use(store: TokenStore) -> None:
    _, secret = store.create_session("alice", "alice", "read", idle=1.0, lifetime=1.5)
    ended = None
    started = time.monotonic()
    while time.monotonic() - started < 3:
        if store.verify(secret) is None:
            ended = time.monotonic() - started
            break
        time.sleep(0.3)
    assert ended is not None and 1.4 <= ended < 2.0, ended


@pytest.mark.security
def test_revoking_a_token_ends_the_sessions_exchanged_for_it(store: TokenStore) -> None:
    token_id, token = store.create(None, "laptop", "admin", None)
    _, session = store.create_session(None, "laptop", "admin", idle=60, lifetime=600,
                                      parent=token_id)
    _, other = store.create_session("bob", "bob", "read", idle=60, lifetime=600)
    store.revoke(None, token_id)
    assert store.verify(token) is None and store.verify(session) is None
    assert store.verify(other) is not None


def test_a_session_never_outlives_the_token_it_was_exchanged_for(store: TokenStore) -> None:
    token_id, _ = store.create(None, "short", "read", time.time() + 100)
    _, session = store.create_session(None, "short", "read", idle=60, lifetime=600,
                                      parent=token_id)
    record = store.verify(session)
    assert record is not None and record.expires is not None
    assert record.expires - time.time() <= 100


def test_a_store_from_before_sessions_is_upgraded_and_its_tokens_stay_api_tokens(
        state: str) -> None:
    os.makedirs(os.path.join(state, "private"), mode=0o700)
    key = secrets.token_bytes(tokens.KEY_BYTES)
    with open(os.path.join(state, tokens.KEY_FILE), "wb") as f:
        f.write(key)
    db = sqlite3.connect(private_path(state), isolation_level=None)
    db.execute(FIRST_RELEASE_SCHEMA)
    old = "lwp_old_" + secrets.token_urlsafe(32)
    db.execute("INSERT INTO tokens (digest, description, scope, created) VALUES (?, ?, ?, ?)",
               (tokens.digest(key, old), "from 2026", "admin", 1.7e9))
    db.close()
    store = TokenStore(state, gid=0, min_length=20)
    try:
        record = store.verify(old)
        assert record is not None and (record.kind, record.user, record.idle) == (
            "api", None, None)
        assert [r.description for r in store.list()] == ["from 2026"]
        seen = TokenReader(state).lookup(old)
        assert seen is not None and seen.kind == "api"
        _, secret = store.create_session("alice", "alice", "read", idle=60, lifetime=60)
        assert store.verify(secret) is not None
    finally:
        store.close()


@pytest.mark.security
def test_a_session_exchanged_for_a_limited_token_keeps_its_containers(store: TokenStore) -> None:
    """Exchanging a token limited to containers for a session must not lift the limit."""
    token_id, _ = store.create(None, "web only", "operate", None, ("web-*",))
    _, session = store.create_session(None, "web only", "operate", idle=60, lifetime=600,
                                      parent=token_id)
    record = store.verify(session)
    assert record is not None and record.containers == ("web-*",)
    _, signed_in = store.create_session("bob", "bob", "operate", idle=60, lifetime=600)
    bob = store.verify(signed_in)
    assert bob is not None and bob.containers is None  # a host account: its group's scope
