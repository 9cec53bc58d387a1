"""A live frontend: a real `python3 -m frontend` process on 127.0.0.1 beside a real helper.

The network tests attack this, not an in-process test client, so what they prove holds for the
process an operator runs: its listener, its guard, its TLS, its file-descriptor limit.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from protocol import ops
from tests.conftest import PYTHON, ROOT, World, destroy_world, make_world


@dataclass
class Live:
    world: World
    port: int
    process: subprocess.Popen[bytes]
    log: str
    admin: str
    read: str
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_frontend(world: World, settings: str = "", scheme: str = "http",
                   admin: str = "", read: str = "") -> Live:
    """Start a frontend on a free port with extra [frontend] `settings`; wait until it listens."""
    port = free_port()
    # A file of its own: the world's config (which the helper reads) stays as it is.
    config = os.path.join(world.base, f"frontend-{port}.toml")
    with open(world.config) as f:
        base = f.read()
    with open(config, "w") as f:
        f.write(f'{base}\n[frontend]\nlisten = "127.0.0.1"\nport = {port}\n{settings}\n')
    log = os.path.join(world.base, f"frontend-{port}.log")
    with open(log, "ab") as out:
        process = subprocess.Popen([PYTHON, "-m", "frontend", "--config", config],
                                   cwd=ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                with open(log, errors="replace") as f:
                    raise RuntimeError("the frontend did not start:\n" + f.read()) from None
            time.sleep(0.05)
    return Live(world, port, process, log, admin, read, scheme)


def stop_frontend(live: Live) -> None:
    live.process.terminate()
    try:
        live.process.wait(10)
    except subprocess.TimeoutExpired:
        live.process.kill()
        live.process.wait(5)


@contextmanager
def live_world() -> Iterator[World]:
    """A world of its own (lxcpath, helper, tokens), torn down whatever happens."""
    world = make_world()
    world.start_helper()
    try:
        yield world
    finally:
        destroy_world(world)


def make_token(world: World, scope: str) -> str:
    token: str = world.call(ops.CreateToken(None, f"live {scope}", scope))["token"]
    return token
