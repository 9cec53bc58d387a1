"""Failed authentication: limited per client address (429 + Retry-After), never another client's
problem, bounded in memory, and logged with address and reason but no token, within a budget."""
from __future__ import annotations

import dataclasses
import logging
import socket
import time
import urllib.request
from typing import Any

import pytest

from frontend.app import make_app
from frontend.ratelimit import AuthFailures, FailureLimiter, LogLimiter, client_key
from tests.conftest import Tokens, World
from tests.live import make_token, start_frontend, stop_frontend

SECRET_LOOKING = "lwp_this-is-not-a-token-but-looks-like-one_0123456789"


# -- the limiter itself ------------------------------------------------------------------------

def test_a_burst_of_failures_then_refusal_until_refilled() -> None:
    limiter = FailureLimiter(burst=3, per_minute=60, max_clients=100)
    for _ in range(3):
        assert limiter.retry_after("a", 0.0) == 0
        limiter.failed("a", 0.0)
    assert limiter.retry_after("a", 0.0) == pytest.approx(1.0)
    assert limiter.retry_after("a", 0.5) == pytest.approx(0.5)
    assert limiter.retry_after("a", 1.0) == 0


def test_one_clients_failures_never_limit_another() -> None:
    limiter = FailureLimiter(burst=2, per_minute=1, max_clients=100)
    for _ in range(50):
        limiter.failed("10.0.0.1", 0.0)
    assert limiter.retry_after("10.0.0.1", 0.0) > 0
    assert limiter.retry_after("10.0.0.2", 0.0) == 0


def test_memory_is_bounded_whatever_the_number_of_clients() -> None:
    limiter = FailureLimiter(burst=1, per_minute=1, max_clients=1000)
    for i in range(100_000):
        limiter.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", float(i))
    assert len(limiter) == 1000
    # The most recent offenders are the ones still remembered.
    assert limiter.retry_after("10.1.134.159", 100_000.0) > 0  # i = 99_999


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("unknown", "unknown"),
])
def test_limits_apply_per_ipv4_address_and_per_ipv6_64(address: str, key: str) -> None:
    assert client_key(address) == key


# -- the log budget ----------------------------------------------------------------------------

def test_a_flood_of_failures_logs_at_most_the_budget_then_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    failures = AuthFailures(FailureLimiter(10**6, 1, 10),
                            LogLimiter(logging.getLogger("t.auth"), per_minute=20),
                            clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, "t.auth"):
        for i in range(10_000):
            clock[0] = i * 0.001  # 10,000 failures in 10 s
            failures.failed("192.0.2.1", "unknown-or-expired-token", "GET /api/v1/containers")
        clock[0] = 61.0
        failures.failed("192.0.2.1", "no-token", "GET /api/v1/containers")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 20 + 2, lines[-3:]
    assert lines[20] == "9980 more such lines were not logged in the last 61 s"
    assert "reason=no-token" in lines[21]


# -- through the frontend ----------------------------------------------------------------------

def small_limits(world: World, **extra: Any) -> Any:
    return dataclasses.replace(world.frontend, auth_failures_burst=3,
                               auth_failures_per_minute=6.0, **extra)


async def test_failed_auth_is_429_with_retry_after_once_the_burst_is_spent(
        world: World, tokens: Tokens, aiohttp_client: Any) -> None:
    api = await aiohttp_client(make_app(small_limits(world)))
    for _ in range(3):
        assert (await api.get("/api/v1/containers", headers={"private-token": "x" * 30})
                ).status == 401
    r = await api.get("/api/v1/containers", headers={"private-token": tokens.read})
    body = await r.json()
    assert r.status == 429 and body["code"] == "rate-limited", body
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    assert r.content_type == "application/json" and "X-Request-Id" in r.headers


async def test_a_limited_address_does_not_lock_out_a_client_behind_a_trusted_proxy(
        world: World, tokens: Tokens, aiohttp_client: Any) -> None:
    import ipaddress
    cfg = small_limits(world, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    api = await aiohttp_client(make_app(cfg))
    attacker = {"X-Forwarded-For": "198.51.100.66"}
    for _ in range(10):
        await api.get("/api/v1/containers", headers={**attacker, "private-token": "y" * 30})
    r = await api.get("/api/v1/containers", headers={**attacker, "private-token": tokens.read})
    assert r.status == 429
    r = await api.get("/api/v1/containers",
                      headers={"X-Forwarded-For": "198.51.100.7", "private-token": tokens.read})
    assert r.status == 200, await r.text()


async def test_auth_failures_are_logged_with_address_and_reason_and_never_the_token(
        world: World, aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    api = await aiohttp_client(make_app(world.frontend))
    with caplog.at_level(logging.WARNING, "lwp.frontend.auth"):
        await api.get(f"/api/v1/containers?private_token={SECRET_LOOKING}")
        await api.get("/api/v1/containers", headers={"private-token": SECRET_LOOKING})
        await api.delete(f"/api/v1/tokens/{SECRET_LOOKING}")
        await api.get("/api/v1/tokens")
    lines = [r.getMessage() for r in caplog.records if r.name == "lwp.frontend.auth"]
    assert len(lines) == 4, lines
    assert all("client=127.0.0.1" in line for line in lines), lines
    assert [line.split("reason=")[1].split()[0] for line in lines] == [
        "unknown-or-expired-token"] * 2 + ["no-token"] * 2
    assert not any(SECRET_LOOKING in line or SECRET_LOOKING[:12] in line for line in lines)
    assert "request='DELETE /api/v1/tokens/REDACTED'" in lines[2]


# -- on a real socket: two source addresses ----------------------------------------------------

def get_from(source: str, port: int, token: str) -> tuple[int, dict[str, str]]:
    """GET the container list from a given loopback source address (127/8 is all ours)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    request = (f"GET /api/v1/containers HTTP/1.1\r\nHost: x\r\nprivate-token: {token}\r\n"
               "Connection: close\r\n\r\n")
    with sock:
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), headers


def test_a_flooding_address_is_limited_while_another_address_is_served(world: World) -> None:
    read = make_token(world, "read")
    live = start_frontend(world, "auth_failures_burst = 5\nauth_failures_per_minute = 60",
                          read=read)
    try:
        statuses = [get_from("127.0.0.2", live.port, "z" * 30)[0] for _ in range(8)]
        status, headers = get_from("127.0.0.2", live.port, read)
        other = [get_from("127.0.0.3", live.port, read)[0] for _ in range(3)]
        time.sleep(1.1)  # 60 per minute: one more try a second
        after = get_from("127.0.0.2", live.port, read)[0]
        log = live.log_text()
    finally:
        stop_frontend(live)
    assert statuses == [401] * 5 + [429] * 3
    assert status == 429 and headers["Retry-After"] == "1"
    assert other == [200] * 3
    assert after == 200
    assert "client=127.0.0.2 reason=unknown-or-expired-token" in log
    assert "client=127.0.0.2 reason=rate-limited" in log
    assert "z" * 30 not in log


def test_the_helper_is_told_the_socket_address_not_a_forged_header(world: World) -> None:
    """Without trusted proxies, X-Forwarded-For is ignored: the access log and the limiter
    see the socket's peer."""
    read = make_token(world, "read")
    live = start_frontend(world, read=read)
    try:
        request = urllib.request.Request(f"{live.url}/api/v1/containers", headers={
            "private-token": read, "X-Forwarded-For": "203.0.113.99"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        # aiohttp writes the access line after the response has gone out: wait for it.
        deadline = time.monotonic() + 5
        while ('"GET /api/v1/containers" 200' not in (log := live.log_text())
               and time.monotonic() < deadline):
            time.sleep(0.05)
    finally:
        stop_frontend(live)
    assert '127.0.0.1 "GET /api/v1/containers" 200' in log
    assert "203.0.113.99" not in log
