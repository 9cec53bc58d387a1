"""`make run` as a new user meets it: from a checkout only root can read, again and again,
ended by SIGTERM or killed outright, always with the one admin token it printed."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import PYTHON, ROOT, World, destroy_world, make_world

pytestmark = pytest.mark.lxc

CHECKOUT_PARTS = ("protocol", "helperd", "frontend", "tools", "packaging")


@pytest.fixture
def root_only_checkout() -> Iterator[str]:
    """A copy of this checkout in a 0700 directory, as /root/lxc-web-panel is."""
    base = tempfile.mkdtemp(prefix="lwp-root-checkout-")  # mkdtemp makes it 0700
    for part in CHECKOUT_PARTS:
        shutil.copytree(os.path.join(ROOT, part), os.path.join(base, part),
                        ignore=shutil.ignore_patterns("__pycache__"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def served_world() -> Iterator[tuple[World, str, int]]:
    """A world of its own (no helper yet) whose config lets user lwp's frontend in."""
    world = make_world()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(world.config) as f:
        text = f.read()
    text = text.replace('socket_group = "nogroup"', 'socket_group = "lwp"')
    text = text.replace("allowed_users = []", 'allowed_users = ["lwp"]')
    config = os.path.join(world.base, "make-run.toml")
    with open(config, "w") as f:
        f.write(f'{text}\n[frontend]\nlisten = "127.0.0.1"\nport = {port}\n')
    try:
        yield world, config, port
    finally:
        destroy_world(world)


def start(checkout: str, config: str,
          runs: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], str, str]:
    """make run's runner, until it prints the token; returns it and what it said of it."""
    process = subprocess.Popen([PYTHON, os.path.join(checkout, "tools", "run_service.py")],
                               env={**os.environ, "LWP_CONFIG": config}, cwd=checkout,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    runs.append(process)
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("admin token: "):
            return process, line.split()[2], process.stdout.readline().strip()
        assert line or process.poll() is None, f"make run ended: {process.poll()}"
    process.kill()
    raise AssertionError("make run printed no token within 30 s")


def status(port: int, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/containers",
                                     headers={"private-token": token})
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 (loopback)
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def all_gone(world: World, port: int) -> bool:
    """Neither daemon is left: nobody answers on the helper's socket, the port is free."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as helper, socket.socket() as front:
            try:
                helper.connect(world.socket)
            except OSError:
                # SO_REUSEADDR: a closed connection's TIME_WAIT is not a listener.
                front.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    front.bind(("127.0.0.1", port))
                    return True
                except OSError:
                    pass
        time.sleep(0.1)
    return False


def test_make_run_works_from_a_root_only_checkout_again_and_after_being_killed(
        root_only_checkout: str, served_world: tuple[World, str, int]) -> None:
    world, config, port = served_world
    runs: list[subprocess.Popen[str]] = []
    try:
        first, token, said = start(root_only_checkout, config, runs)
        assert "new" in said and "reused by the next make run" in said
        assert status(port, token) == 200  # the frontend runs as lwp, from a copy it can read
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        assert all_gone(world, port), "SIGTERM left a daemon behind"

        again, same, said = start(root_only_checkout, config, runs)
        assert same == token and "the same as last time" in said
        assert status(port, token) == 200
        again.kill()  # make run itself killed outright: its daemons end with it
        again.wait(10)
        assert all_gone(world, port), "a killed make run left a daemon behind"

        third, same, _ = start(root_only_checkout, config, runs)
        assert same == token and status(port, token) == 200
        third.send_signal(signal.SIGINT)  # Ctrl-C
        assert third.wait(20) == 0
        assert all_gone(world, port)
    finally:
        for process in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()
