"""The helper's start-up: its malloc tuning and the socket it serves (made, or systemd's).

Run before any connection is served; nothing here is on a request's path.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
from dataclasses import dataclass

from helperd import safedirs
from helperd.config import HelperConfig
from protocol.config import ConfigError

M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def cap_malloc_arenas() -> None:
    """glibc gives every thread that mallocs an arena of its own (up to 8 per core), and the
    read pool's threads keep theirs: the helper's memory grew with every read thread. Two
    arenas keep it small (measured: see bench/README.md). Before the read pool starts."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to cap
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)


@dataclass(frozen=True)
class Listener:
    """The socket the helper serves, and the file it bound (None: systemd's, not its own)."""

    sock: socket.socket
    made: tuple[str, int, int] | None = None  # path, st_dev, st_ino of the file it bound

    def remove(self) -> None:
        """Unlink the socket file this helper made, if it is still that file (at exit)."""
        if self.made is None:
            return
        path, dev, ino = self.made
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) == (dev, ino):
                os.unlink(path)


def _socket_activated() -> bool:
    return (os.environ.get("LISTEN_PID") == str(os.getpid())
            and os.environ.get("LISTEN_FDS") == "1")


def claim_socket_path(cfg: HelperConfig, gid: int) -> None:
    """Make the socket's directory (0750 root:gid; a symlink there is refused) and clear a
    stale socket; refuse to start if a live helper answers on it. Run first of all: a second
    helper must not open the trail and "recover" the first one's operations in flight."""
    if _socket_activated():
        return  # systemd holds the socket: there is nothing of ours to claim
    # The frontend's group must traverse the directory.
    safedirs.ensure_dir(os.path.dirname(cfg.socket), gid, 0o750)
    _clear_stale(cfg.socket)


def listening_socket(cfg: HelperConfig, gid: int) -> Listener:
    """The socket systemd passed us (socket activation), or one we make: 0660 root:gid in 0750."""
    if _socket_activated():
        sock = socket.socket(fileno=3)
        if sock.family != socket.AF_UNIX:
            raise RuntimeError("the socket systemd passed is not a Unix socket")
        return Listener(sock)
    claim_socket_path(cfg, gid)  # again: cheap, and the path is checked right before the bind
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # 0660 from the start, root:root until the chown: never others'
    try:
        sock.bind(cfg.socket)
    finally:
        os.umask(old_umask)
    sock.listen(128)  # at once: a bound socket that refuses would look stale to a prober
    info = os.lstat(cfg.socket)
    os.chown(cfg.socket, 0, gid, follow_symlinks=False)
    return Listener(sock, (cfg.socket, info.st_dev, info.st_ino))


STALE_PROBE_TIMEOUT = 2.0  # seconds: a live helper accepts at once, even when busy


def _clear_stale(path: str) -> None:
    """Remove a socket left by a helper that is gone; refuse to start beside a live one, or
    over anything that is not a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path}: exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(STALE_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except FileNotFoundError:
            return  # gone meanwhile
        except ConnectionRefusedError:
            os.unlink(path)  # nothing listens: a helper that stopped without removing it
            return
        except OSError:
            pass  # a timeout (a full backlog) is a live listener too
    raise ConfigError(f"{path}: another helper is serving on this socket; stop it first "
                      "(the helper does not take over a live socket)")
