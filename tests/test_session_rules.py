"""The session cookie's flags, the CSRF rule, the [helperd.session] policy, and the helper's
password check as its event loop runs it (refusal delay awaited, PAM threads bounded)."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from frontend import session as cookie
from helperd import sessions
from protocol import config
from protocol.config import ConfigError
from protocol.errors import LwpError
from protocol.session import SIGN_IN_REFUSED, CreateSession

HOST = "panel.example:5000"


def req(method: str, headers: dict[str, str] | None = None) -> web.Request:
    return make_mocked_request(method, "/api/v1/containers/x",
                               headers={"Host": HOST, **(headers or {})})


def set_cookie_header(response: web.Response) -> str:
    """The Set-Cookie header as aiohttp will send it."""
    return response.cookies[cookie.COOKIE].OutputString()


def test_the_cookie_is_httponly_strict_and_scoped_to_the_base_path() -> None:
    response = web.Response()
    cookie.set_cookie(response, "lwp_secret", "/panel/", secure=False)
    header = set_cookie_header(response)
    assert header.startswith("lwp_session=lwp_secret;")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/panel/"):
        assert flag in header, header
    assert "Secure" not in header and "Max-Age" not in header and "Domain" not in header


def test_the_cookie_is_secure_over_tls() -> None:
    response = web.Response()
    cookie.set_cookie(response, "lwp_secret", "/", secure=True)
    assert "Secure" in set_cookie_header(response)


def test_clearing_the_cookie_empties_and_expires_it_on_the_same_path() -> None:
    response = web.Response()
    cookie.clear_cookie(response, "/panel/", secure=False)
    header = set_cookie_header(response)
    assert header.startswith('lwp_session="";') or header.startswith("lwp_session=;")
    assert "Max-Age=0" in header and "Path=/panel/" in header and "HttpOnly" in header


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_safe_methods_need_no_csrf_header(method: str) -> None:
    assert cookie.csrf_refusal(req(method, {"Origin": "https://evil.example"}), ()) is None


@pytest.mark.security
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_a_cookie_request_that_changes_something_needs_the_header(method: str) -> None:
    assert cookie.csrf_refusal(req(method), ()) == "no X-LWP-Request header"
    wrong = req(method, {"X-LWP-Request": "yes"})
    assert cookie.csrf_refusal(wrong, ()) == "no X-LWP-Request header"
    assert cookie.csrf_refusal(req(method, {"X-LWP-Request": "1"}), ()) is None


@pytest.mark.security
@pytest.mark.parametrize("origin", ["https://evil.example", "http://panel.example:5001",
                                    "http://panel.example", "null",
                                    "http://panel.example:5000.evil.example"])
def test_a_foreign_origin_is_refused_even_with_the_header(origin: str) -> None:
    request = req("POST", {"X-LWP-Request": "1", "Origin": origin})
    assert cookie.csrf_refusal(request, ()) == "cross-origin"


def test_the_servers_own_origin_and_configured_public_origins_pass() -> None:
    own = req("POST", {"X-LWP-Request": "1", "Origin": f"http://{HOST}"})
    assert cookie.csrf_refusal(own, ()) is None
    proxied = req("POST", {"X-LWP-Request": "1", "Origin": "https://lxc.example.org"})
    assert cookie.csrf_refusal(proxied, ()) == "cross-origin"
    assert cookie.csrf_refusal(proxied, ("https://lxc.example.org",)) is None
    assert cookie.is_secure(proxied, ("https://lxc.example.org",))
    assert not cookie.is_secure(own, ())


def policy(**data: object) -> sessions.SessionPolicy:
    return sessions.load_policy(config.Section(dict(data), "helperd.session."))


def test_the_default_policy_maps_the_three_groups() -> None:
    assert policy() == sessions.SessionPolicy()
    assert policy().groups == {"lwp-admin": "admin", "lwp-operator": "operate",
                               "lwp-viewer": "read"}


@pytest.mark.parametrize(("data", "says"), [
    ({"idle": 0}, "idle: must be"), ({"lifetime": 10**9}, "lifetime: must be"),
    ({"idle": 600, "lifetime": 300}, "at least idle"), ({"fail_delay": 0}, "fail_delay"),
    ({"groups": {"wheel": "root"}}, "wheel: must be one of"),
    ({"groups": {"Bad Group": "read"}}, "not a group name"), ({"idel": 5}, "unknown key"),
])
def test_a_policy_that_would_weaken_sign_in_is_a_config_error(data: dict[str, object],
                                                              says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        policy(**data)


@pytest.mark.security
async def test_refusals_wait_on_the_loop_holding_no_pam_slot() -> None:
    """Eight refused sign-ins with two PAM slots all answer after about one delay (the wait
    holds no slot), and the event loop keeps serving meanwhile."""
    check = sessions.PasswordCheck(sessions.SessionPolicy(fail_delay=0.5, max_checks=2))
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await asyncio.gather(*(check("lwpt-nosuchuser", "wrong", "192.0.2.1")
                                     for _ in range(8)), return_exceptions=True)
    elapsed = time.monotonic() - started
    ticking.cancel()
    for result in results:
        assert isinstance(result, LwpError) and result.code == "unauthorized"
        assert result.message == SIGN_IN_REFUSED
    assert 0.5 <= elapsed < 1.0, elapsed
    assert max(gaps) < 0.2, max(gaps)


def test_a_sign_in_request_never_shows_its_secrets_in_repr() -> None:
    text = repr(CreateSession("alice", "s3cret-pass"))
    text += repr(CreateSession(token="lwp_" + "x" * 43))
    assert "s3cret-pass" not in text and "x" * 43 not in text and "alice" in text


@pytest.mark.parametrize("fields", [{}, {"username": "alice"}, {"password": "p"},
                                    {"token": "lwp_abc", "username": "alice"},
                                    {"username": "Alice", "password": "p"},
                                    {"username": "alice", "password": "a\0b"},
                                    {"token": "no spaces"}])
def test_a_sign_in_request_is_a_name_and_password_or_a_token(fields: dict[str, str]) -> None:
    with pytest.raises(LwpError) as caught:
        CreateSession(**fields)
    assert caught.value.code == "invalid-request"
