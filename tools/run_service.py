#!/usr/bin/python3
"""`make run`: start the helper (root) and the frontend (as user lwp) from this checkout.

Uses packaging/lwp.toml (the shipped configuration) unless LWP_CONFIG names another file,
creates the service user if missing, prints the host's problems (helperd/doctor.py) and one
admin token (kept root-only and reused while it works), runs the frontend from a copy user lwp
can read (a checkout under /root is not), and stops both daemons on Ctrl-C or SIGTERM, or
when either ends (they end with make run if it is killed). The frontend's port is bound here
before anything starts and handed to the frontend as systemd would (fd 3, LISTEN_PID/
LISTEN_FDS), so nobody can take it in between; if somebody holds it already, nothing starts
and the holder is named. For a real installation use the Debian package instead.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
CONFIG = os.environ.get("LWP_CONFIG", os.path.join(ROOT, "packaging", "lwp.toml"))
sys.path.insert(0, ROOT)

from protocol import ops, rules  # noqa: E402
from protocol.client import HelperClient  # noqa: E402
from protocol.config import SERVICE_USER  # noqa: E402
from protocol.errors import LwpError  # noqa: E402

RUN_TOKEN = "make-run-token"  # noqa: S105 — a file name in state_dir, root-only
PR_SET_PDEATHSIG = 1
COPY_DIR = "make-run"  # in the socket's directory: the frontend's code, readable by lwp

TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket
# Run as the frontend: put the socket at fd 3 and say it is ours, as systemd does, then exec.
ACTIVATE = ("import os, sys\n"
            "fd = int(sys.argv[1])\n"
            "if fd != 3:\n"
            "    os.dup2(fd, 3)\n"
            "    os.close(fd)\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
            "os.execv(sys.argv[2], sys.argv[2:])\n")


class PortTaken(Exception):
    """The frontend's port is bound by somebody else: what to tell the operator."""


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on `port` (IPv4 and IPv6) in this network namespace."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def holders(inodes: set[str]) -> list[str]:
    """`pid N (command, user U)` for every process with one of those sockets open."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: list[str] = []
    for pid in sorted((p for p in os.listdir("/proc") if rules.ascii_digits(p)), key=int):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in fds):
                continue
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue  # gone meanwhile, or a file descriptor closed under us
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        found.append(f"pid {pid} ({comm}, user {user})")
    return found


def bind_port(host: str, port: int) -> socket.socket:
    """Bind and listen on the frontend's address, or raise PortTaken naming who holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the frontend binds itself
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        who = holders(listening_inodes(port))
        by = ", ".join(who) if who else "a process this user cannot see (another namespace?)"
        raise PortTaken(
            f"port {port} on {host} is already taken by {by}. Nothing was started: the frontend "
            "would not get the port, and whoever holds it would receive clients' tokens. Stop "
            "that process (e.g. `systemctl stop lwp-frontend.socket lwp-frontend.service` if "
            "the package is installed), or set another [frontend] port in a copy of the "
            "configuration and run with LWP_CONFIG=that file.") from None
    return sock


def frontend_copy(where: str) -> str:
    """The frontend's code and this configuration, copied where user lwp can read them.

    A checkout under /root (0700) is out of lwp's reach; the copy is root-owned 0755 (no one
    else may change what the frontend runs), beside the helper's socket (a directory lwp may
    traverse), replaced by each run and removed when make run ends."""
    shutil.rmtree(where, ignore_errors=True)
    os.mkdir(where, 0o755)
    os.chmod(where, 0o755)  # noqa: S103 — lwp must read it; only root may write
    for package in ("protocol", "frontend"):
        shutil.copytree(os.path.join(ROOT, package), os.path.join(where, package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CONFIG, os.path.join(where, "lwp.toml"))
    for dirpath, dirnames, filenames in os.walk(where):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)  # noqa: S103
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return where


async def _token_works(socket_path: str, token: str) -> bool:
    client = HelperClient(socket_path)
    try:
        await client.call(ops.Envelope(uuid.uuid4().hex, token, "make run", ops.ListTokens()))
    except LwpError as exc:
        if exc.code in ("unauthorized", "forbidden"):
            return False
        raise
    finally:
        await client.close()
    return True


def admin_token(state_dir: str, socket_path: str, env: dict[str, str]) -> tuple[str, str]:
    """make run's one admin token: the one kept in a root-only file while it still works,
    else a new one (which replaces it). Returns the token and what was done."""
    path = os.path.join(state_dir, RUN_TOKEN)
    try:
        with open(path) as f:
            kept = f.read().strip()
    except FileNotFoundError:
        kept = ""
    if kept and asyncio.run(_token_works(socket_path, kept)):
        return kept, f"the same as last time, kept in {path} (root only)"
    token = subprocess.run(
        [PY, "-m", "helperd.admin", "--config", CONFIG, "token", "add", "--scope", "admin",
         "--description", "make run"], cwd=ROOT, env=env, check=True,
        stdout=subprocess.PIPE, text=True).stdout.strip()
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(path + ".new", path)
    why = "revoked" if kept else "none kept yet"
    return token, f"new ({why}); kept in {path} (root only) and reused by the next make run"


def wait_until_answering(socket_path: str, helper: subprocess.Popen[bytes]) -> bool:
    """Until the helper accepts a connection: a socket file alone may be a dead helper's."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and helper.poll() is None:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(socket_path)
                return True
            except OSError:
                pass
        time.sleep(0.05)
    return False


def print_host_problems(cfg: Any) -> None:
    from helperd import doctor
    findings = [f for f in doctor.report(cfg) if f["status"] != doctor.OK]
    for f in findings:
        fix = f" -> {f['fix']}" if f["fix"] else ""
        print(f"make run: {f['status']}: {f['check']}: {f['detail']}{fix}", file=sys.stderr)
    if findings:
        print("make run: (lwp-admin doctor, i.e. `/usr/bin/python3 -m helperd.admin doctor`, "
              "checks again)", file=sys.stderr)


def stop_on_signals() -> None:
    """SIGTERM ends make run as Ctrl-C does: both daemons are stopped, nothing left behind.
    (SIGINT explicitly too: started in the background, make run inherits it ignored.)"""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)


def die_with_parent() -> None:
    """In a child: end with make run, even if make run is killed outright."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main() -> int:
    if os.geteuid() != 0:
        print("run this as root (the helper must be root)", file=sys.stderr)
        return 1
    from frontend import config as frontend_config
    from helperd import config
    front = frontend_config.load(CONFIG)
    try:
        listener = bind_port(front.listen, front.port)  # before anything starts
    except PortTaken as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["adduser", "--system", "--group", "--no-create-home",
                        "--home", "/nonexistent", SERVICE_USER], check=True)
    cfg = config.load(CONFIG)  # after the user: it checks that socket_group exists
    print_host_problems(cfg)
    stop_on_signals()
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"}
    copy = os.path.join(os.path.dirname(cfg.socket), COPY_DIR)
    helper = subprocess.Popen([PY, "-m", "helperd", "--config", CONFIG], cwd=ROOT, env=env,
                              preexec_fn=die_with_parent)  # make run starts no threads: safe
    frontend: subprocess.Popen[bytes] | None = None
    try:
        if not wait_until_answering(cfg.socket, helper):
            print("make run: the helper did not start (its messages are above)",
                  file=sys.stderr)
            return 1
        frontend_copy(copy)
        token, how = admin_token(cfg.state_dir, cfg.socket, env)
        url = f"http://{front.listen}:{front.port}"
        print(f"\nadmin token: {token}\n  ({how})\n"
              f"try: curl -H 'private-token: {token}' {url}/api/v1/containers\n"
              "Ctrl-C stops the helper and the frontend; containers keep running.\n",
              flush=True)
        frontend = subprocess.Popen(
            [PY, "-c", ACTIVATE, str(listener.fileno()), PY, "-m", "frontend",
             "--config", os.path.join(copy, "lwp.toml")], cwd=copy,
            env={**env, "PYTHONPATH": copy}, pass_fds=(listener.fileno(),),
            user=SERVICE_USER, group=SERVICE_USER, extra_groups=[],
            preexec_fn=die_with_parent)
        listener.close()  # the frontend has it now
        while helper.poll() is None and frontend.poll() is None:
            time.sleep(0.2)
        which = "helper" if helper.poll() is not None else "frontend"
        print(f"make run: the {which} ended; stopping the other", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()
        for process in (frontend, helper):
            if process is not None and process.poll() is None:
                process.terminate()
        for process in (frontend, helper):
            if process is not None:
                process.wait()
        shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
