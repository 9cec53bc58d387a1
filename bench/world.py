"""A throw-away world for one benchmark run: its own lxcpath, state, socket, config and daemons.

Everything lives under one temporary directory; the daemons are subprocesses this module
started and stops by pid; the direct worker is the only process here that imports lxc.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PY = "/usr/bin/python3"  # the only interpreter with python3-lxc, aiohttp and msgpack
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUSYBOX = "/usr/share/lxc/templates/lxc-busybox"
ENV = {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"}

CONFIG = """\
socket = "{base}/run/helperd.sock"
state_dir = "{base}/state"
[tokens]
min_length = 20
[frontend]
listen = "127.0.0.1"
port = {port}
[helperd]
socket_group = "root"
allowed_users = []
lxcpath = "{base}/lxc"
templates_dir = "{base}/templates"
templates = ["busybox"]
default_config = "{base}/default.conf"
stores = ["dir"]
# 0: the API's stop is a hard stop at once, the same liblxc call as the direct c.stop().
stop_timeout = 0
freeze_timeout = 10
audit_dir = "{audit}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of its reaped children (the helper's forks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Direct:
    """The direct worker (bench/direct.py): one JSON command out, one JSON reply back."""

    def __init__(self, lxcpath: str, log: Any) -> None:
        self.proc = subprocess.Popen([PY, "-m", "bench.direct", lxcpath], cwd=ROOT, env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                     text=True, bufsize=1)

    def ask(self, deadline: float = 600, **cmd: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline)
        if not ready:
            raise RuntimeError(f"the direct worker did not answer {cmd.get('cmd')} "
                               f"{cmd.get('op', '')} within {deadline:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the direct worker died; see the run's log")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"direct {cmd.get('op', cmd.get('cmd'))}: {reply['error']}")
        return reply

    def times(self, op: str, reps: int = 1, **args: Any) -> list[float]:
        return list(self.ask(cmd="time", op=op, args=args, reps=reps)["t"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class World:
    base: str
    port: int
    log_path: str
    log: Any
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    token: str = ""

    @property
    def lxcpath(self) -> str:
        return os.path.join(self.base, "lxc")

    @property
    def config(self) -> str:
        return os.path.join(self.base, "lwp.toml")

    @property
    def socket(self) -> str:
        return os.path.join(self.base, "run", "helperd.sock")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.base, "state")

    @property
    def template(self) -> str:
        return os.path.join(self.base, "templates", "lxc-busybox")

    @property
    def default_config(self) -> str:
        return os.path.join(self.base, "default.conf")

    @classmethod
    def create(cls) -> World:
        base = tempfile.mkdtemp(prefix="lwp-bench-")
        os.makedirs(os.path.join(base, "lxc"))
        os.makedirs(os.path.join(base, "templates"))
        os.symlink(BUSYBOX, os.path.join(base, "templates", "lxc-busybox"))
        with open(os.path.join(base, "default.conf"), "w") as f:
            f.write("lxc.net.0.type = empty\n")
        log_path = os.path.join(base, "bench.log")
        world = cls(base, free_port(), log_path, open(log_path, "ab", buffering=0))  # noqa: SIM115
        world.write_config(os.path.join(base, "audit"))
        return world

    def write_config(self, audit_dir: str) -> None:
        with open(self.config, "w") as f:
            f.write(CONFIG.format(base=self.base, port=self.port, audit=audit_dir))

    def restart(self, audit_dir: str) -> None:
        """Both daemons anew, with the audit trail in `audit_dir` (the tokens stay)."""
        self.stop("frontend")
        self.stop("helper")
        self.write_config(audit_dir)
        self.start_helper()
        self.start_frontend()

    def start_helper(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)  # a previous helper's: readiness is a connect that works
        self.procs["helper"] = subprocess.Popen(
            [PY, "-m", "helperd", "--config", self.config], cwd=ROOT, env=ENV,
            stdout=self.log, stderr=self.log)
        self._wait("helper", lambda: _accepts_unix(self.socket))
        if self.token:
            return
        self.token = subprocess.run(
            [PY, "-m", "helperd.admin", "--config", self.config, "token", "add", "--scope",
             "admin", "--description", "bench"], cwd=ROOT, env=ENV, check=True,
            stdout=subprocess.PIPE, stderr=self.log, text=True).stdout.strip()

    def start_frontend(self) -> None:
        self.procs["frontend"] = subprocess.Popen(
            [PY, "-m", "frontend", "--config", self.config], cwd=ROOT, env=ENV,
            stdout=self.log, stderr=self.log)
        self._wait("frontend", lambda: _accepts(self.port))

    def start_nothing(self, port: int) -> None:
        """The do-nothing aiohttp server the chain's fixed cost is compared with."""
        self.procs["nothing"] = subprocess.Popen(
            [PY, "-m", "bench.nothing", str(port)], cwd=ROOT, env=ENV,
            stdout=self.log, stderr=self.log)
        self._wait("nothing", lambda: _accepts(port))

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + 20
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} process did not start; see {self.log_path}")
            time.sleep(0.02)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def remove(self, keep: bool) -> None:
        self.log.close()
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _accepts_unix(path: str) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(0.2)
        s.connect(path)
        return True
    return False
