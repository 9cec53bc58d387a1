"""liblxc's state notifications for one lxcpath, taken only from root: hints, never facts.

liblxc 5.0 (monitor.c, lxc_monitor_send_state) has every container monitor write a struct lxc_msg
to the FIFO <rundir>/lxc/<lxcpath>/monitor-fifo when a reader holds it open. We are that reader
(taking the lock lxc-monitord takes), or, when lxc-monitord holds it, its client on its abstract
socket provided root listens there. Callers confirm each hint through monitor.py before use.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from protocol import rules

log = logging.getLogger("lwp.helperd.lxcnotify")

# src/lxc/monitor.h (5.0.2): struct lxc_msg {lxc_msg_type_t type; char name[NAME_MAX + 1];
# int value;} -- an enum (int), 256 bytes, an int; no padding on any Linux ABI.
MSG = struct.Struct("=i256si")
TYPES = {0: "state", 1: "priority", 2: "exit"}  # lxc_msg_type_t, in order
STATE_COUNT = 8  # lxc_state_t: STOPPED .. THAWED (monitor.STATES)
RUNDIR = "/run"  # get_rundir() for root: RUNTIME_PATH, as /run is root's
SUN_PATH = 108
# Read at most this much per wake-up: the loop stays responsive under a flood, and the FIFO
# (64 KiB) is drained faster than monitors can fill it.
READ_CHUNK = 64 * MSG.size
# struct flock on LP64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
FLOCK = struct.Struct("@hhqqi4x")
F_OFD_SETLK = 37  # linux/fcntl.h


@dataclass(frozen=True, slots=True)
class Notice:
    name: str
    kind: str  # "state" | "exit" (exit codes and priorities are hints too)
    value: int


class Locked(Exception):
    """Another process (lxc-monitord) reads the FIFO already."""


class Refused(Exception):
    """The FIFO or the socket is not root's alone: nothing from it is read."""


def fifo_path(lxcpath: str) -> str:
    """The path liblxc writes to, spelled as lxc_monitor_fifo_name spells it."""
    return f"{RUNDIR}/lxc/{lxcpath}/monitor-fifo"


def monitord_address(lxcpath: str) -> bytes | None:
    """lxc-monitord's abstract address (lxc_monitor_sock_name), None if liblxc finds it too
    long (its strnprintf fails past 105 characters and lxc-monitord does not start)."""
    digest = 0xCBF29CE484222325  # FNV-1a 64 of "lxc/<lxcpath>/monitor-sock"
    for byte in f"lxc/{lxcpath}/monitor-sock".encode():
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    name = f"lxc/{digest:016x}/{lxcpath}".encode()
    return None if len(name) > SUN_PATH - 3 else b"\0" + name


def parse(buffer: bytes) -> tuple[list[Notice], bytes, int]:
    """Whole messages in `buffer` as notices, the incomplete rest, and how many were refused
    (a name no client could address, an unknown type, a state out of range)."""
    notices: list[Notice] = []
    refused = 0
    whole = len(buffer) - len(buffer) % MSG.size
    for type_, raw, value in MSG.iter_unpack(buffer[:whole]):
        name = raw.partition(b"\0")[0].decode("ascii", "replace")
        kind = TYPES.get(type_)
        if (kind is None or not rules.NAME_RE.fullmatch(name)
                or (kind == "state" and not 0 <= value < STATE_COUNT)):
            refused += 1
            continue
        notices.append(Notice(name, kind, value))
    return notices, buffer[whole:], refused


def _root_only_dir(path: str) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise Refused(f"{path} is not a directory only root can write")


def _make_dirs(lxcpath: str, made: list[str] | None = None) -> str:
    """<rundir>/lxc/<lxcpath>, every component made (0755) or checked to be root's alone, so no
    one else can have put a FIFO, a link or a directory of their own on the way. The ones made
    here are added to `made`, for the caller to remove when it is done."""
    parts = [p for p in f"lxc/{lxcpath}".split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise Refused(f"lxcpath {lxcpath!r} is not a plain absolute path")
    path = RUNDIR
    _root_only_dir(path)
    for part in parts:
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o755)
            if made is not None and path != f"{RUNDIR}/lxc":  # liblxc's own: never removed
                made.append(path)
        except FileExistsError:
            pass
        _root_only_dir(path)
    return path


def open_fifo(lxcpath: str, made: list[str] | None = None) -> int:
    """The FIFO opened for reading (O_RDWR, as lxc-monitord: never an end-of-file when the
    last writer goes) and locked as lxc-monitord locks it. Raises Locked or Refused."""
    _make_dirs(lxcpath, made)
    path = fifo_path(lxcpath)
    try:
        os.mknod(path, stat.S_IFIFO | 0o600)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        # Only root may write a hint: a FIFO of root's that no one else may open.
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
            raise Refused(f"{path} is not a FIFO only root can open "
                          f"(mode {stat.filemode(st.st_mode)}, uid {st.st_uid})")
        try:
            # An open-file-description lock: it conflicts with lxc-monitord's F_SETLK, and
            # no other open/close of the file in this process can release it by accident.
            fcntl.fcntl(fd, F_OFD_SETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise Locked(path) from None
            raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def connect_monitord(lxcpath: str) -> socket.socket | None:
    """A connection to lxc-monitord for `lxcpath` if root listens there; None if no one does.
    Raises Refused: any local user can bind the abstract name while lxc-monitord is not up."""
    address = monitord_address(lxcpath)
    if address is None:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.setblocking(False)
        try:
            s.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            return None
        except BlockingIOError:
            raise Refused("lxc-monitord's socket accepts no connection") from None
        pid, uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
        if uid != 0:
            raise Refused(f"lxc-monitord's socket is held by uid {uid} (pid {pid}), not root")
    except BaseException:
        s.close()
        raise
    return s


class Follower:
    """Keeps one source of notices open (the FIFO, else lxc-monitord), hands each notice to
    `on_notice`, and calls `on_gap` whenever notices may have been missed (no source, or a
    source changed): the caller then reconciles everything."""

    RETRY = 2.0  # seconds between attempts while neither source can be had

    def __init__(self, lxcpath: str, on_notice: Callable[[Notice], None],
                 on_gap: Callable[[], None]) -> None:
        self.lxcpath = lxcpath
        self.on_notice, self.on_gap = on_notice, on_gap
        self.source = "none"  # "fifo" | "monitord" | "none", for the doctor and metrics
        self.received = 0
        self.refused = 0  # malformed or unaddressable messages (from root: a bug, not an attack)
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._ended: asyncio.Event | None = None
        self._warned: set[str] = set()
        self._made: list[str] = []  # directories under <rundir>/lxc made for our FIFO

    async def run(self) -> None:
        """Follow until cancelled."""
        self._ended = asyncio.Event()
        try:
            while True:
                self._ended.clear()
                if self._open():
                    self.on_gap()  # what changed while no one listened
                    await self._ended.wait()
                    self._close()
                    self.on_gap()
                else:
                    await asyncio.sleep(self.RETRY)
        finally:
            self._close()

    def drain(self) -> None:
        """Read whatever has arrived, now (the list calls this before it answers)."""
        if self._fd is not None or self._sock is not None:
            self._readable()

    def _open(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            self._fd = open_fifo(self.lxcpath, self._made)
            self.source = "fifo"
            loop.add_reader(self._fd, self._readable)
            return True
        except Locked:
            pass
        except (Refused, OSError) as exc:
            self._warn(f"the monitor FIFO cannot be read: {exc}")
            return False
        try:
            self._sock = connect_monitord(self.lxcpath)
        except (Refused, OSError) as exc:
            self._warn(f"lxc-monitord cannot be followed: {exc}")
            return False
        if self._sock is None:
            return False  # lxc-monitord holds the FIFO but has not bound its socket yet
        self.source = "monitord"
        loop.add_reader(self._sock.fileno(), self._readable)
        return True

    def _warn(self, text: str) -> None:
        # Once per distinct reason: a squatter must not be able to fill the log every RETRY.
        if text not in self._warned and len(self._warned) < 64:
            self._warned.add(text)
            log.warning("%s; container states come from the reconciliation sweep only", text)

    def _readable(self) -> None:
        try:
            if self._fd is not None:
                chunk = os.read(self._fd, READ_CHUNK)
            elif self._sock is not None:
                chunk = self._sock.recv(READ_CHUNK)
                if not chunk:
                    raise ConnectionResetError
            else:
                return
        except BlockingIOError:
            return
        except OSError:
            if self._ended is not None:
                self._ended.set()
            self._stop_reading()
            return
        notices, self._buffer, refused = parse(self._buffer + chunk)
        self.refused += refused
        for notice in notices:
            self.received += 1
            self.on_notice(notice)

    def _stop_reading(self) -> None:
        loop = asyncio.get_running_loop()
        if self._fd is not None:
            loop.remove_reader(self._fd)
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())

    def _close(self) -> None:
        if self._fd is not None:
            self._stop_reading()
            # As lxc-monitord does at exit: with no FIFO, monitors' open fails at once (ENOENT)
            # instead of finding a FIFO nobody reads.
            try:
                os.unlink(fifo_path(self.lxcpath))
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
            for path in reversed(self._made):  # only if empty: another may be using it now
                try:
                    os.rmdir(path)
                except OSError:
                    break
            self._made = []
        if self._sock is not None:
            self._stop_reading()
            self._sock.close()
            self._sock = None
        self._buffer = b""
        self.source = "none"
