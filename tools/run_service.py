#!/usr/bin/python3
"""`make run`: start the helper (root) and the frontend (as user lwp) from this checkout.

Uses packaging/lwp.toml (the shipped configuration) unless LWP_CONFIG names another file,
creates the service user if missing, prints a fresh admin token once, and stops both daemons
on Ctrl-C. The frontend's port is bound here before anything starts and handed to the frontend
as systemd would (fd 3, LISTEN_PID/LISTEN_FDS), so nobody can take it in between; if somebody
holds it already, nothing starts and the holder is named. For a real installation use the
Debian package instead.
"""
from __future__ import annotations

import errno
import os
import pwd
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
CONFIG = os.environ.get("LWP_CONFIG", os.path.join(ROOT, "packaging", "lwp.toml"))
sys.path.insert(0, ROOT)

from protocol.config import SERVICE_USER  # noqa: E402

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
    for pid in sorted((p for p in os.listdir("/proc") if p.isascii() and p.isdigit()), key=int):
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


def main() -> int:
    if os.geteuid() != 0:
        print("run this as root (the helper must be root)", file=sys.stderr)
        return 1
    from frontend import config as frontend_config
    from helperd import config
    cfg = config.load(CONFIG)
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
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"}
    helper = subprocess.Popen([PY, "-m", "helperd", "--config", CONFIG], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(cfg.socket):
            if helper.poll() is not None or time.monotonic() > deadline:
                print("the helper did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        token = subprocess.run(
            [PY, "-m", "helperd.admin", "--config", CONFIG, "token", "add", "--scope", "admin",
             "--description", "make run"], cwd=ROOT, env=env, check=True,
            stdout=subprocess.PIPE, text=True).stdout.strip()
        print(f"\nadmin token (shown once): {token}\n"
              f"try: curl -H 'private-token: {token}' "
              f"http://{front.listen}:{front.port}/api/v1/containers\n", flush=True)
        frontend = subprocess.Popen(
            [PY, "-c", ACTIVATE, str(listener.fileno()), PY, "-m", "frontend",
             "--config", CONFIG], cwd=ROOT, env=env, pass_fds=(listener.fileno(),),
            user=SERVICE_USER, group=SERVICE_USER, extra_groups=[])
        listener.close()  # the frontend has it now
        try:
            return frontend.wait()
        except KeyboardInterrupt:
            frontend.terminate()
            frontend.wait()
            return 0
    finally:
        listener.close()
        helper.terminate()
        helper.wait()


if __name__ == "__main__":
    sys.exit(main())
