"""Sign-in, sessions and CSRF over HTTP, against a real helper that checks real accounts with
PAM in a temporary root (tests/pamroot.py) and a frontend built as `make run` builds it."""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestServer

from frontend.accesslog import AccessLogger
from frontend.app import make_app
from protocol import ops
from protocol.session import SIGN_IN_REFUSED
from tests import pamroot
from tests.conftest import PYTHON, ROOT, World, _accepts, destroy_world, make_world, trail
from tests.pamroot import User

GOOD = "correct horse battery"
USERS = [User("lwpt-admin", GOOD, ("lwp-admin",)), User("lwpt-viewer", GOOD, ("lwp-viewer",)),
         User("lwpt-nogroup", GOOD), User("lwpt-locked", None, ("lwp-admin",),
                                          hash="!" + pamroot.crypt(GOOD))]
OWN = "http://127.0.0.1"  # the test client's Host has a port: see own_origin()
EVIL = "https://evil.example"
IDLE = 2.0


@pytest.fixture(scope="module")
def pam_world() -> Iterator[World]:
    base = tempfile.mkdtemp(prefix="lwp-pamroot-")
    etc = pamroot.make_root(base, USERS)
    world = make_world()
    with open(world.config, "a") as f:
        f.write(f"\n[helperd.session]\nfail_delay = 0.3\nidle = {IDLE}\nlifetime = 600\n")
    with open(world.log, "ab") as log:
        world.process = subprocess.Popen(
            pamroot.command(etc, [PYTHON, "-m", "helperd", "--config", world.config,
                                  "--debug"]), cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while not _accepts(world.socket):
        assert world.process.poll() is None and time.monotonic() < deadline, world.log
        time.sleep(0.02)
    try:
        yield world
    finally:
        destroy_world(world)
        import shutil
        shutil.rmtree(base)


@pytest.fixture
async def web(pam_world: World, aiohttp_client: Any) -> Any:
    server = TestServer(make_app(pam_world.frontend))
    await server.start_server(access_log_class=AccessLogger)
    # No cookie jar: each test sends exactly the Cookie header it means to.
    return await aiohttp_client(server, cookie_jar=DummyCookieJar())


def own(web: Any) -> str:
    return f"http://{web.host}:{web.port}"


async def sign_in(web: Any, **body: str) -> tuple[int, dict[str, Any], str | None]:
    """Status, answer and the session cookie's Set-Cookie line (None if none was set)."""
    r = await web.post("/api/v1/session", json=body, headers={"Origin": own(web)})
    morsel = r.cookies.get("lwp_session")
    return r.status, await r.json(), None if morsel is None else morsel.OutputString()


def jar(set_cookie: str | None) -> dict[str, str]:
    """The Cookie header a browser would send back (the test client's jar is not used)."""
    assert set_cookie is not None
    return {"Cookie": set_cookie.split(";")[0]}


def changing(web: Any, cookie: dict[str, str], **extra: str) -> dict[str, str]:
    return {**cookie, "X-LWP-Request": "1", "Origin": own(web), **extra}


async def test_a_host_account_signs_in_with_an_httponly_strict_cookie(web: Any) -> None:
    status, body, set_cookie = await sign_in(web, username="lwpt-admin", password=GOOD)
    assert status == 200, body
    assert set(body) == {"id", "user", "scope", "expires", "idle"}
    assert (body["user"], body["scope"], body["idle"]) == ("lwpt-admin", "admin", IDLE)
    assert set_cookie is not None
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in set_cookie
    secret = jar(set_cookie)["Cookie"].split("=", 1)[1]
    assert secret not in str(body)  # the page never holds the secret
    cookie = jar(set_cookie)
    r = await web.get("/api/v1/containers", headers=cookie)
    assert r.status == 200
    r = await web.get("/api/v1/session", headers=cookie)
    assert await r.json() == {"id": body["id"], "kind": "session", "user": "lwpt-admin",
                              "scope": "admin", "expires": body["expires"], "idle": IDLE}


async def test_a_viewer_gets_read_and_cannot_act(web: Any) -> None:
    status, body, set_cookie = await sign_in(web, username="lwpt-viewer", password=GOOD)
    assert status == 200 and body["scope"] == "read"
    r = await web.post("/api/v1/tokens", json={"scope": "read"},
                       headers=changing(web, jar(set_cookie)))
    assert r.status == 403


@pytest.mark.security
async def test_every_refused_sign_in_is_the_same_401_and_sets_no_cookie(web: Any) -> None:
    answers = set()
    for body in ({"username": "lwpt-admin", "password": "wrong"},
                 {"username": "lwpt-nosuch", "password": GOOD},
                 {"username": "lwpt-nogroup", "password": GOOD},
                 {"username": "lwpt-locked", "password": GOOD},
                 {"token": "lwp_" + "x" * 43}):
        status, answer, set_cookie = await sign_in(web, **body)
        assert (status, set_cookie) == (401, None), body
        answers.add((answer["code"], answer["error"]))
    assert answers == {("unauthorized", SIGN_IN_REFUSED)}


@pytest.mark.security
async def test_a_cookie_request_that_changes_something_needs_the_header_and_our_origin(
        web: Any, pam_world: World) -> None:
    _, _, set_cookie = await sign_in(web, username="lwpt-admin", password=GOOD)
    cookie = jar(set_cookie)
    before = len(pam_world.call(ops.ListTokens()))
    # What another site's page can make a browser send: no custom header, or its own Origin.
    for headers in (cookie, {**cookie, "Origin": EVIL},
                    {**cookie, "X-LWP-Request": "1", "Origin": EVIL},
                    {**cookie, "X-LWP-Request": "1", "Origin": "null"}):
        r = await web.post("/api/v1/tokens", json={"scope": "admin"}, headers=headers)
        assert r.status == 403, headers
        assert (await r.json())["code"] == "forbidden"
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    assert len(pam_world.call(ops.ListTokens())) == before  # nothing was made
    r = await web.post("/api/v1/tokens", json={"scope": "read"}, headers=changing(web, cookie))
    assert r.status == 200
    no_origin = {**cookie, "X-LWP-Request": "1"}  # no Origin at all: the header suffices
    r = await web.post("/api/v1/tokens", json={"scope": "read"}, headers=no_origin)
    assert r.status == 200


@pytest.mark.security
async def test_a_preflight_from_another_origin_gets_no_cors_permission(web: Any) -> None:
    r = await web.options("/api/v1/tokens", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-lwp-request, content-type"})
    assert r.status in (401, 403, 405)
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


@pytest.mark.security
async def test_signing_in_from_another_origin_is_403(web: Any) -> None:
    """Login CSRF: another site's page must not sign a visitor in as someone else."""
    r = await web.post("/api/v1/session", json={"username": "lwpt-admin", "password": GOOD},
                       headers={"Origin": EVIL})
    assert r.status == 403 and "lwp_session" not in r.cookies


@pytest.mark.security
async def test_a_session_only_in_its_cookie_and_a_token_never_in_one(web: Any,
                                                                     pam_world: World) -> None:
    _, _, set_cookie = await sign_in(web, username="lwpt-admin", password=GOOD)
    secret = jar(set_cookie)["Cookie"].split("=", 1)[1]
    r = await web.get("/api/v1/containers", headers={"Private-Token": secret})
    assert r.status == 401
    token = pam_world.call(ops.CreateToken(None, "api", "admin"))["token"]
    r = await web.get("/api/v1/containers", headers={"Cookie": f"lwp_session={token}"})
    assert r.status == 401


@pytest.mark.security
async def test_signing_out_revokes_the_session_on_the_server(web: Any) -> None:
    _, _, set_cookie = await sign_in(web, username="lwpt-admin", password=GOOD)
    cookie = jar(set_cookie)
    r = await web.delete("/api/v1/session", headers=changing(web, cookie))
    assert r.status == 200
    cleared = r.cookies["lwp_session"].OutputString()
    assert "Max-Age=0" in cleared and "Path=/" in cleared
    # A copy of the cookie kept elsewhere (a stolen one) is worth nothing now.
    assert (await web.get("/api/v1/containers", headers=cookie)).status == 401


@pytest.mark.security
async def test_an_idle_session_ends(web: Any) -> None:
    _, _, set_cookie = await sign_in(web, username="lwpt-admin", password=GOOD)
    cookie = jar(set_cookie)
    assert (await web.get("/api/v1/containers", headers=cookie)).status == 200
    time.sleep(IDLE + 0.5)
    assert (await web.get("/api/v1/containers", headers=cookie)).status == 401
    assert (await web.get("/api/v1/containers", headers=cookie)).status == 401  # for good


@pytest.mark.security
async def test_a_token_exchanged_for_a_session_ends_it_when_revoked(web: Any,
                                                                    pam_world: World) -> None:
    made = pam_world.call(ops.CreateToken(None, "pasted", "operate"))
    status, body, set_cookie = await sign_in(web, token=made["token"])
    assert status == 200 and (body["user"], body["scope"]) == (None, "operate")
    cookie = jar(set_cookie)
    assert (await web.get("/api/v1/containers", headers=cookie)).status == 200
    pam_world.call(ops.RevokeToken(id=made["id"]))
    assert (await web.get("/api/v1/containers", headers=cookie)).status == 401


@pytest.mark.security
async def test_failed_sign_ins_count_in_the_per_address_limiter(pam_world: World,
                                                                aiohttp_client: Any) -> None:
    cfg = dataclasses.replace(pam_world.frontend, auth_failures_burst=3,
                              auth_failures_per_minute=1)
    web = await aiohttp_client(make_app(cfg), cookie_jar=DummyCookieJar())
    for _ in range(3):
        status, _, _ = await sign_in(web, username="lwpt-admin", password="wrong")
        assert status == 401
    r = await web.post("/api/v1/session", json={"username": "lwpt-admin", "password": GOOD},
                       headers={"Origin": own(web)})
    assert r.status == 429 and "Retry-After" in r.headers  # a right password is worth nothing


@pytest.mark.security
async def test_no_password_or_session_secret_reaches_a_log_or_the_trail(
        web: Any, pam_world: World, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "a-wrong-passphrase-42"
    caplog.set_level(logging.DEBUG)
    await sign_in(web, username="lwpt-admin", password=wrong)
    await sign_in(web, username="typed-password-here", password=GOOD)
    _, body, set_cookie = await sign_in(web, username="lwpt-admin", password=GOOD)
    secret = jar(set_cookie)["Cookie"].split("=", 1)[1]
    await web.delete("/api/v1/session", headers=changing(web, jar(set_cookie)))
    with open(pam_world.log, errors="replace") as f:
        helper_log = f.read()
    records = trail(pam_world)
    audit_text = "\n".join(map(str, records))
    for text in (helper_log, caplog.text, audit_text):
        for leaked in (GOOD, wrong, secret, "typed-password-here"):
            assert leaked not in text
    opened = [r for r in records if r.get("op") == "create_session" and r.get("outcome") == "ok"]
    assert opened and opened[-1]["args"] == {"method": "password", "id": body["id"],
                                             "user": "lwpt-admin"}
    ended = [r for r in records if r.get("op") == "end_session"][-1]
    assert ended["actor"] == {"token_id": body["id"], "description": "lwpt-admin",
                              "scope": "admin"}
    assert os.path.exists(pam_world.log)
