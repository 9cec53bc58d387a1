"""Fixtures: a real helper (subprocess, real Unix socket, real liblxc) in a temporary world.

Everything a test run touches lives under one temporary directory: its own lxcpath, state
directory, socket and templates. Containers are named `t-<random>` and destroyed at the end;
nothing outside that directory is touched.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from frontend.accesslog import AccessLogger
from frontend.app import make_app
from frontend.config import FrontendConfig
from protocol import framing, ops

PYTHON = "/usr/bin/python3"  # the only interpreter that can import lxc
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_TEMPLATES = "/usr/share/lxc/templates"

RECORDER = """#!/bin/sh
# A test template: records the arguments liblxc passed, then makes a minimal rootfs.
set -e
path=""
for arg in "$@"; do case "$arg" in --path=*) path="${arg#--path=}";; esac; done
mkdir -p "$path/rootfs"
printf '%s\\n' "$@" > "$path/template-args"
"""
FAILING = """#!/bin/sh
# A test template that half-creates a rootfs, then fails: nothing may remain afterwards.
for arg in "$@"; do case "$arg" in --path=*) path="${arg#--path=}";; esac; done
mkdir -p "$path/rootfs/etc" && echo partial > "$path/rootfs/etc/partial"
echo "disk quota exceeded while unpacking" >&2
exit 3
"""
SLOW = """#!/bin/sh
# A test template that takes its time, as real templates do.
for arg in "$@"; do case "$arg" in --path=*) path="${arg#--path=}";; esac; done
sleep 3
mkdir -p "$path/rootfs"
"""


@dataclass
class World:
    base: str
    lxcpath: str
    state_dir: str
    socket: str
    config: str
    log: str
    frontend: FrontendConfig
    process: subprocess.Popen[bytes] | None = None

    def call(self, request: Any, token: str | None = None) -> Any:
        """One request to the helper as root (no token needed) or with a token.

        Blocking on purpose: sync tests and fixtures must not start event loops of their own
        beside pytest-asyncio's."""
        envelope = ops.Envelope(uuid.uuid4().hex, token, "test", request)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(envelope.op.timeout)
            s.connect(self.socket)
            s.sendall(framing.encode_frame(ops.encode_request(envelope)))
            length = framing.body_length(_recv_exactly(s, framing.HEADER.size))
            return ops.decode_reply(framing.decode_untrusted_body(_recv_exactly(s, length)))

    def start_helper(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "helperd", "--config", self.config, "--debug"],
                cwd=ROOT, stdout=log, stderr=log)
        # Until it accepts a connection: the socket file exists a moment before listen().
        deadline = time.monotonic() + 10
        while not _accepts(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the helper did not start; see " + self.log)
            time.sleep(0.02)

    def stop_helper(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def container_dirs(self) -> set[str]:
        return set(os.listdir(self.lxcpath))


def become(user: str) -> None:
    """Drop this (forked) process to `user` for good: groups, gid, then uid."""
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def as_user(user: str, act: Callable[[], bytes]) -> bytes:
    """Run `act` in a forked child that has dropped to `user` for good; return its output.

    Whatever `act` raises is the test's to interpret, so it should catch what it expects."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            become(user)
            os.write(write_end, act())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the helper hung up")
        data += chunk
    return data


def write_config(base: str, extra: str = "", helperd: str = "") -> str:
    """The test world's lwp.toml; `helperd`: more keys of [helperd], `extra`: more tables."""
    path = os.path.join(base, "lwp.toml")
    with open(path, "w") as f:
        f.write(f"""
socket = "{base}/run/helperd.sock"
state_dir = "{base}/state"
[tokens]
min_length = 20
[helperd]
socket_group = "nogroup"
allowed_users = []
lxcpath = "{base}/lxc"
# Not `auto`: under a systemd unit (a CI runner) auto picks lxc@.service, which knows only
# /var/lib/lxc and refuses the world's own lxcpath.
start_method = "fork"
templates_dir = "{base}/templates"
templates = ["busybox", "recorder", "failing", "slow", "debian"]
default_config = "{base}/default.conf"
stores = ["dir"]
stop_timeout = 1
freeze_timeout = 5
audit_dir = "{base}/audit"
{helperd}
[helperd.template_options]
recorder = ["flavor", "release"]
debian = ["release", "arch", "packages"]
[helperd.template_values.debian]
release = ["bookworm"]
{extra}
""")
    return path


def trail(world: World) -> list[dict[str, Any]]:
    """Every record of the world's audit trail, oldest first."""
    from helperd import audit  # the harness reads what the helper wrote
    records = []
    for path in audit.trail_files(os.path.join(world.base, "audit")):
        with open(path, "rb") as f:
            records += [json.loads(line) for line in f]
    return records


def configure(world: World, **settings: Any) -> None:
    """Add [helperd] keys to a world's config before its helper starts."""
    with open(world.config) as f:
        text = f.read()
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    anchor = f'audit_dir = "{world.base}/audit"\n'
    with open(world.config, "w") as f:
        f.write(text.replace(anchor, anchor + extra))


def make_world() -> World:
    base = tempfile.mkdtemp(prefix="lwp-test-")
    os.chmod(base, 0o755)  # `nobody` must be able to reach the socket to be refused by uid
    lxcpath = os.path.join(base, "lxc")
    os.makedirs(lxcpath)
    templates = os.path.join(base, "templates")
    os.makedirs(templates)
    for real in ("busybox", "debian"):  # debian: tests/test_debian_template.py
        os.symlink(os.path.join(REAL_TEMPLATES, f"lxc-{real}"),
                   os.path.join(templates, f"lxc-{real}"))
    for name, text in (("recorder", RECORDER), ("failing", FAILING), ("slow", SLOW)):
        path = os.path.join(templates, f"lxc-{name}")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    with open(os.path.join(base, "default.conf"), "w") as f:
        f.write("lxc.net.0.type = empty\n")
    config = write_config(base)
    world = World(base=base, lxcpath=lxcpath, state_dir=os.path.join(base, "state"),
                  socket=os.path.join(base, "run", "helperd.sock"), config=config,
                  log=os.path.join(base, "helperd.log"),
                  frontend=FrontendConfig(socket=os.path.join(base, "run", "helperd.sock"),
                                          state_dir=os.path.join(base, "state"),
                                          listen="127.0.0.1", port=0, max_body=64 * 1024,
                                          # Tests fail authentication on purpose and often;
                                          # the limiter has tests of its own.
                                          auth_failures_burst=100_000))
    return world


def destroy_world(world: World) -> None:
    world.stop_helper()
    import lxc  # only the test harness's cleanup; product code outside helperd never does
    for name in lxc.list_containers(config_path=world.lxcpath, as_object=False):
        c = lxc.Container(name, world.lxcpath)
        if c.running:
            c.stop()
        c.destroy()
    if not os.environ.get("LWP_KEEP_TEST_DIR"):
        shutil.rmtree(world.base, ignore_errors=True)


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("the test suite runs real liblxc and must run as root")
    w = make_world()
    w.start_helper()
    try:
        yield w
    finally:
        destroy_world(w)


@pytest.fixture
def fresh_world() -> Iterator[World]:
    """A world of the test's own whose helper is not started yet (the test starts it)."""
    w = make_world()
    try:
        yield w
    finally:
        destroy_world(w)


@pytest.fixture
def bridge() -> Iterator[str]:
    """A bridge of the test's own, with no uplink: nothing on it can leave the host."""
    name = f"lwpbr{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=True)


@dataclass(frozen=True)
class Tokens:
    admin: str
    operate: str
    read: str


@pytest.fixture(scope="session")
def tokens(world: World) -> Tokens:
    made = {scope: world.call(ops.CreateToken(None, f"test {scope}", scope))["token"]
            for scope in ("admin", "operate", "read")}
    return Tokens(**made)


@pytest.fixture
async def api(world: World, aiohttp_client: Any) -> Any:
    # Started here with the product's access log: aiohttp's default one would write the
    # tokens in revoke paths into the test logs (aiohttp_client drops access_log_class).
    server = TestServer(make_app(world.frontend))
    await server.start_server(access_log_class=AccessLogger)
    return await aiohttp_client(server)


def new_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(tokens: Tokens) -> dict[str, str]:
    return {"private-token": tokens.admin}


async def make_container(api: Any, headers: dict[str, str], template: str = "busybox",
                         start: bool = False) -> str:
    name = new_name()
    r = await api.put("/api/v1/containers", json={"name": name, "template": template},
                      headers=headers)
    assert r.status == 200, await r.text()
    if start:
        r = await api.post(f"/api/v1/containers/{name}", json={"action": "start"},
                           headers=headers)
        assert r.status == 200, await r.text()
    return name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Fail loudly rather than skip: a real-LXC test that cannot run proves nothing.
    if any(i.get_closest_marker("lxc") for i in items):
        try:
            import lxc  # noqa: F401
        except ImportError:
            raise pytest.UsageError(
                f"run the tests with {PYTHON}, the interpreter that has python3-lxc") from None


# The token table of the first release, as its stores still hold it: the migrations
# (tokens.upgrade) must take such a store as it is.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest BLOB NOT NULL UNIQUE,
    description TEXT NOT NULL,
    scope TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    last_used REAL
)"""


@pytest.fixture
def privileged_world() -> Iterator[World]:
    """A world whose configuration allows privileged containers (the product's does not; the
    debian template refuses user namespaces)."""
    w = make_world()
    configure(w, allow_privileged=True)
    w.start_helper()
    try:
        yield w
    finally:
        destroy_world(w)
