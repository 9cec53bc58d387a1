"""Attacks on the helper's connection slots and on its lock queue, by allowed peers.

An allowed non-root uid (the frontend's, once compromised) must not lock root's admin CLI or
another allowed uid out of the helper, nor hold a slot without asking anything; a change that
waited for a container's lock runs only if its token is still good when the lock is taken.
"""
from __future__ import annotations

import grp
import os
import pwd
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from protocol import framing, ops
from protocol.errors import LwpError
from tests.conftest import World, destroy_world, make_world, new_name, write_config
from tests.live import make_token, start_frontend, stop_frontend

pytestmark = pytest.mark.security

SOCKET_GROUP = "nogroup"  # the test worlds' socket_group: a holder needs it to reach the socket
ABSENT = framing.encode_frame(ops.encode_request(
    ops.Envelope("req-1", None, "local", ops.ContainerInfo("t-absent-name"))))


class Holder:
    """A forked child, dropped to `user` for good, that opens `count` connections to the
    helper and keeps them; `asks`: each sends one request first and reads its reply, as the
    frontend's pooled connections do. The parent asks it how many the helper left open."""

    def __init__(self, user: str, path: str, count: int, asks: bool = False) -> None:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(SOCKET_GROUP).gr_gid
        self.control, child_end = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            try:
                self.control.close()
                os.setgroups([gid])
                os.setgid(gid)
                os.setuid(entry.pw_uid)
                _hold(child_end, path, count, asks)
            finally:
                os._exit(0)
        child_end.close()
        self.control.settimeout(60)
        assert self.control.recv(16) == b"ready"

    def still_open(self) -> int:
        """How many of its connections the helper has not hung up on."""
        self.control.sendall(b"?")
        return int(self.control.recv(16))

    def close(self) -> None:
        # Said, not left to EOF: a later holder's fork holds a copy of this end too.
        self.control.sendall(b"q")  # the child exits, closing its connections
        self.control.close()
        os.waitpid(self.pid, 0)


def _hold(control: socket.socket, path: str, count: int, asks: bool) -> None:
    held = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)  # the kernel accepts; whether the helper serves it is seen below
        if asks:
            try:
                s.sendall(ABSENT)
                s.settimeout(5)
                s.recv(65536)  # the reply, or b"" if the helper hung up
            except OSError:
                pass
        held.append(s)
    time.sleep(0.3)  # let the helper accept and judge every one
    control.sendall(b"ready")
    while control.recv(1) == b"?":
        open_now = 0
        for s in held:
            # Readable with nothing to read: the helper hung up. Not readable: still served.
            if not select.select([s], [], [], 0)[0] or s.recv(1, socket.MSG_PEEK):
                open_now += 1
        control.sendall(str(open_now).encode())


def world_with(users: list[str], helperd: str = "") -> World:
    """A world of its own whose helper serves `users` besides root, with `helperd` keys."""
    w = make_world()
    path = write_config(w.base, helperd=helperd)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("allowed_users = []", f"allowed_users = {users!r}".replace("'", '"')))
    w.start_helper()
    return w


@pytest.fixture
def default_limits() -> Iterator[World]:
    """A helper with the shipped limits (64 connections), `nobody` an allowed peer."""
    w = world_with(["nobody"])
    try:
        yield w
    finally:
        destroy_world(w)


@pytest.fixture
def small_limits() -> Iterator[World]:
    """10 connections, 5 per uid, 2 kept for root, 1 s for a first request."""
    w = world_with(["nobody", "daemon"], "max_connections = 10\nmax_connections_per_uid = 5\n"
                   "root_reserved_connections = 2\nfirst_frame_timeout = 1")
    try:
        yield w
    finally:
        destroy_world(w)


# -- issue #10 item 5: root can be locked out of the helper ---------------------------------

@pytest.mark.parametrize("asks", [False, True], ids=["silent", "after-one-request"])
def test_idle_connections_of_an_allowed_uid_never_lock_root_out(default_limits: World,
                                                                asks: bool) -> None:
    holder = Holder("nobody", default_limits.socket, 70, asks=asks)
    try:
        # Root's admin CLI is served at once, however many connections the peer holds.
        assert default_limits.call(ops.ListContainers()) == []
        held = holder.still_open()
        assert held <= 48, f"one non-root uid holds {held} connections"
    finally:
        holder.close()


def test_a_connection_that_asks_nothing_is_closed_at_the_deadline(small_limits: World) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.settimeout(10)
        silent.connect(small_limits.socket)
        started = time.monotonic()
        assert silent.recv(1) == b""  # hung up on
        assert 0.8 < time.monotonic() - started < 5
    # A connection that has asked once may idle past the deadline: it is the frontend's pool.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as pooled:
        pooled.settimeout(10)
        pooled.connect(small_limits.socket)
        pooled.sendall(ABSENT)
        assert pooled.recv(65536)
        time.sleep(2)
        pooled.sendall(ABSENT)
        assert pooled.recv(65536), "a pooled connection was closed for idling"


def test_each_uid_stops_at_its_cap_and_the_last_slots_are_roots(small_limits: World) -> None:
    nobody = Holder("nobody", small_limits.socket, 7, asks=True)
    daemon = Holder("daemon", small_limits.socket, 7, asks=True)
    roots: list[socket.socket] = []
    try:
        assert nobody.still_open() == 5  # its own cap
        assert daemon.still_open() == 3  # what is left before root's 2
        assert small_limits.call(ops.ListContainers()) == []
        for _ in range(2):  # root may take the last slots itself
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            roots.append(s)
            s.settimeout(5)
            s.connect(small_limits.socket)
            s.sendall(ABSENT)
            assert s.recv(65536)
        with pytest.raises((ConnectionError, OSError)):  # 10 of 10: even root waits its turn
            small_limits.call(ops.ListContainers())
    finally:
        for s in roots:
            s.close()
        nobody.close()
        daemon.close()


def test_a_frontend_idle_past_the_deadline_answers_its_next_request(small_limits: World) -> None:
    admin = make_token(small_limits, "admin")
    live = start_frontend(small_limits, admin=admin)
    try:
        def get() -> Any:
            request = urllib.request.Request(f"{live.url}/api/v1/containers",
                                             headers={"private-token": admin})
            with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 — loopback
                return r.status
        assert get() == 200  # its pooled connection to the helper is open now
        time.sleep(2.5)  # past the helper's 1 s first-request deadline
        assert get() == 200
        assert "helper-unavailable" not in live.log_text()
    finally:
        stop_frontend(live)


# -- issue #10 item 8: a change queued behind another runs after its token was revoked -------

def test_a_change_queued_behind_another_is_refused_once_its_token_is_revoked(
        world: World) -> None:
    name = new_name()
    made = world.call(ops.CreateToken(None, "revoked while queued", "admin"))
    token, token_id = made["token"], made["id"]
    outcomes: dict[str, Any] = {}

    def attempt(key: str, request: Any, token: str | None = None) -> None:
        try:
            outcomes[key] = world.call(request, token)
        except LwpError as exc:
            outcomes[key] = exc.code

    slow = threading.Thread(target=attempt, args=("create", ops.CreateContainer(name, "slow")))
    slow.start()  # its template sleeps 3 s, holding the container's lock
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(world.lxcpath, name)):
            assert time.monotonic() < deadline, "the slow create did not begin"
            time.sleep(0.05)
        queued = threading.Thread(target=attempt, args=(
            "destroy", ops.DestroyContainer(name, force=True), token))
        queued.start()
        time.sleep(0.5)  # authorised, and waiting for the lock
        assert "destroy" not in outcomes
        world.call(ops.RevokeToken(token=token))
        slow.join(30)
        queued.join(30)
        assert outcomes == {"create": {}, "destroy": "unauthorized"}
        assert os.path.isfile(os.path.join(world.lxcpath, name, "config")), "the destroy ran"
        records = world.call(ops.QueryAudit(container=name, op="destroy_container"))["records"]
        assert [(r["phase"], r["outcome"], r["actor"]["token_id"]) for r in records] == [
            ("single", "denied", token_id)]  # refused before any start record: never begun
    finally:
        slow.join(30)
        world.call(ops.DestroyContainer(name, force=True))
