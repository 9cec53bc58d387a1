"""The connection guard's rules, on stand-in connections: a deadline for each whole request,
and past the cap the oldest connection still waiting for one makes room."""
from __future__ import annotations

import asyncio
import logging
import resource

import pytest

from frontend import guard
from frontend.guard import ConnectionGuard


class Conn:
    """What the guard needs of a connection: a peer, a request line, and force_close()."""

    def __init__(self, name: str) -> None:
        self.peer = name
        self.request_line = b""
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


async def test_a_connection_waiting_past_the_deadline_is_closed_a_busy_one_is_not() -> None:
    g = ConnectionGuard(0.2, 100, asyncio.get_running_loop())
    slow, busy, answered = Conn("slow"), Conn("busy"), Conn("answered")
    for c in (slow, busy, answered):
        g.opened(c)  # type: ignore[arg-type]
    g.received(busy)  # type: ignore[arg-type]
    g.received(answered)  # type: ignore[arg-type]
    g.waiting(answered)  # type: ignore[arg-type]  # its response went out: the clock restarts
    slow.request_line = b"GET /api/v1/cont"  # dribbling
    await asyncio.sleep(0.35)
    assert slow.closed and answered.closed and not busy.closed
    # Only the dribbler counts (and is logged); the idle keep-alive one is simply closed.
    assert g.dropped == 1 and len(g) == 1


async def test_past_the_cap_the_oldest_waiting_connection_is_closed() -> None:
    g = ConnectionGuard(60, 3, asyncio.get_running_loop())
    a, b, c, d = Conn("a"), Conn("b"), Conn("c"), Conn("d")
    for conn in (a, b, c):
        g.opened(conn)  # type: ignore[arg-type]
    g.received(a)  # type: ignore[arg-type]  # busy: never evicted
    g.opened(d)  # type: ignore[arg-type]
    assert [x.closed for x in (a, b, c, d)] == [False, True, False, False]
    assert g.evicted == 1 and len(g) == 3


async def test_when_every_other_connection_is_busy_the_newcomer_is_refused() -> None:
    g = ConnectionGuard(60, 2, asyncio.get_running_loop())
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b):
        g.opened(conn)  # type: ignore[arg-type]
        g.received(conn)  # type: ignore[arg-type]
    g.opened(c)  # type: ignore[arg-type]
    assert [x.closed for x in (a, b, c)] == [False, False, True]


def test_the_fd_limit_is_raised_to_fit_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 65536))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append(limits))
    assert guard.raise_fd_limit(4096) == 4096
    assert calls == [(4096 + guard.FD_RESERVE, 65536)]


def test_a_hard_limit_below_the_cap_lowers_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 2048))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: None)
    assert guard.raise_fd_limit(4096) == 2048 - guard.FD_RESERVE


def test_a_denied_setrlimit_keeps_the_soft_limit_and_says_what_to_set(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def denied(which: int, limits: tuple[int, int]) -> None:
        raise PermissionError("seccomp")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 524288))
    monkeypatch.setattr(resource, "setrlimit", denied)
    with caplog.at_level(logging.WARNING, "lwp.frontend.guard"):
        assert guard.raise_fd_limit(4096) == 1024 - guard.FD_RESERVE
    assert f"LimitNOFILE={4096 + guard.FD_RESERVE}" in caplog.text
