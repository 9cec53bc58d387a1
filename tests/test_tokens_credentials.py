"""Tokens as a credential: recognisable and 256-bit when generated, listed without secrets,
revocable by id as well as by the token itself."""
from __future__ import annotations

import os
import re
import sqlite3
import stat
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from frontend.accesslog import safe_target
from protocol import tokens as store
from tests.conftest import Tokens, World

GENERATED = re.compile(r"lwp_[A-Za-z0-9_-]{43}")  # 32 random bytes, base64url: 256 bits


async def mint(api: Any, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.post("/api/v1/tokens", json=body, headers=admin)
    assert r.status == 200, await r.text()
    made: dict[str, Any] = await r.json()
    return made


async def test_generated_tokens_carry_the_prefix_and_256_bits(api: Any,
                                                              admin: dict[str, str]) -> None:
    made = [(await mint(api, admin, scope="read"))["token"] for _ in range(20)]
    assert all(GENERATED.fullmatch(t) for t in made), made
    assert len(set(made)) == len(made)


async def test_the_listing_shows_every_field_but_never_a_secret(api: Any,
                                                                admin: dict[str, str]) -> None:
    made = await mint(api, admin, scope="operate", description="listing", expires=4102444800)
    r = await api.get("/api/v1/tokens", headers=admin)
    text = await r.text()
    assert made["token"] not in text
    row = next(t for t in await r.json() if t["id"] == made["id"])
    assert row == {"id": made["id"], "description": "listing", "scope": "operate",
                   "created": row["created"], "expires": 4102444800, "last_used": None,
                   "containers": None}


async def test_revoke_by_id_ends_the_token_on_its_next_use(api: Any,
                                                           admin: dict[str, str]) -> None:
    made = await mint(api, admin, scope="read")
    mine = {"private-token": made["token"]}
    assert (await api.get("/api/v1/containers", headers=mine)).status == 200
    r = await api.delete(f"/api/v1/tokens/id/{made['id']}/", headers=admin)
    assert r.status == 200 and await r.json() == {"status": "ok", "id": made["id"]}
    assert (await api.get("/api/v1/containers", headers=mine)).status == 401
    r = await api.delete(f"/api/v1/tokens/id/{made['id']}", headers=admin)
    assert r.status == 404 and (await r.json())["code"] == "not-found"


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1e3", "9" * 19, "%C2%B2"])
async def test_revoke_by_a_malformed_id_is_400(api: Any, admin: dict[str, str], bad: str) -> None:
    r = await api.delete(f"/api/v1/tokens/id/{bad}", headers=admin)
    body = await r.json()
    assert r.status == 400 and body["code"] == "invalid-request", body


async def test_only_admin_may_revoke_by_id(api: Any, tokens: Tokens, admin: dict[str, str]) -> None:
    made = await mint(api, admin, scope="read")
    r = await api.delete(f"/api/v1/tokens/id/{made['id']}",
                         headers={"private-token": tokens.operate})
    assert r.status == 403
    assert (await api.get("/api/v1/containers",
                          headers={"private-token": made["token"]})).status == 200


async def test_an_empty_scope_is_refused_not_taken_for_admin(api: Any,
                                                             admin: dict[str, str]) -> None:
    r = await api.post("/api/v1/tokens", json={"scope": ""}, headers=admin)
    assert r.status == 400 and (await r.json())["code"] == "invalid-request"


def test_the_access_log_redacts_a_token_path_but_keeps_an_id_path() -> None:
    secret = "lwp_" + "x" * 43
    assert safe_target(make_mocked_request("DELETE", f"/api/v1/tokens/{secret}")) == \
        "/api/v1/tokens/REDACTED"
    assert safe_target(make_mocked_request("DELETE", "/api/v1/tokens/id/17")) == \
        "/api/v1/tokens/id/17"


def test_the_frontend_can_verify_but_never_write_the_store(world: World) -> None:
    reader = store.open_reader(world.state_dir)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM tokens")
    for name in (store.DB_FILE, store.KEY_FILE):
        st = os.stat(os.path.join(world.state_dir, name))
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o640, name


@pytest.mark.parametrize(("text", "status"), [
    ("Jürgen's laptop", 200), ("\U0001f600 ok", 200), ("日本語", 200),
    ("bidi \u202e override", 400), ("zero\u200bwidth", 400), ("line\u2028break", 400),
    ("lone \ud800 surrogate", 400), ("nul \x00", 400), ("tab\t", 400),
])
async def test_non_ascii_free_text_is_accepted_or_refused_never_a_5xx(
        api: Any, admin: dict[str, str], text: str, status: int) -> None:
    """The fuzzer speaks ASCII (see SECURITY.md); this covers what lies beyond it."""
    r = await api.post("/api/v1/tokens", json={"scope": "read", "description": text},
                       headers=admin)
    assert r.status == status, await r.text()
