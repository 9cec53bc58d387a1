"""Talk to a container's monitor over its command socket, and only if root answers there.

liblxc finds a monitor by an abstract socket name that any local user can bind while the
container is stopped, and believes whoever answers. Here every conversation is on a connection
whose listener's SO_PEERCRED uid is 0, and a pid handed back must be a child of this container's
monitor; nothing else about the container is taken from the socket, so liblxc never needs to.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol import rules

log = logging.getLogger("lwp.helperd.monitor")

# liblxc 5.0.2, src/lxc/commands.h: lxc_cmd_t values used here.
GET_STATE, GET_INIT_PID, STOP, GET_CONFIG_ITEM = 3, 4, 2, 7
SERVE_STATE_CLIENTS, GET_LIMIT_CGROUP, GET_LIMIT_CGROUP2_FD = 12, 19, 20
# struct lxc_cmd_req {int cmd; int datalen; const void *data} and struct lxc_cmd_rsp
# {int ret; int datalen; void *data} on x86_64 and every other LP64 ABI: int, int, pointer.
WIRE = struct.Struct("=iiQ")
# src/lxc/state.h: lxc_state_t, in order.
STATES = ("STOPPED", "STARTING", "RUNNING", "STOPPING", "ABORTING", "FREEZING", "FROZEN",
          "THAWED")
STATE_NUMBER = {s: n for n, s in enumerate(STATES)}
SUN_PATH = 108  # sizeof(struct sockaddr_un.sun_path)
MAX_DATA = 4096  # no answer we ask for is longer (a cgroup path, a config value)
TIMEOUT = 5.0  # a monitor answers from its main loop within milliseconds
WARNED_MAX = 1024  # squatters named once each in the log, so a squatter cannot flood it


class Untrusted(Exception):
    """The container's command socket is held by a process that is not root (or by one that
    lets no connection in, which no monitor does: its backlog is 100 and it accepts at once)."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"the command socket of container {name!r} is held by {holder}, not "
                         "by its monitor")
        self.name, self.holder = name, holder


@dataclass(frozen=True)
class Reply:
    ret: int
    data: int  # the pointer-sized field: a state or a pid for the commands asked here
    payload: bytes
    fd: int | None


def socket_name(lxcpath: str, name: str) -> bytes:
    """The abstract address liblxc's lxc_cmd_connect uses (lxc_make_abstract_socket_name)."""
    plain = f"{lxcpath}/{name}/command".encode()
    if len(plain) < SUN_PATH - 2:
        return b"\0" + plain
    digest = 0xCBF29CE484222325  # FNV-1a 64 of "lxcpath/name", as liblxc hashes long names
    for byte in f"{lxcpath}/{name}".encode():
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return b"\0" + f"lxc/{digest:016x}/command".encode()


_warned: set[tuple[str, str]] = set()


def _refuse(name: str, holder: str) -> Untrusted:
    if (name, holder) not in _warned and len(_warned) < WARNED_MAX:
        _warned.add((name, holder))
        log.warning("container %s: its command socket is held by %s, not by its monitor; "
                    "treated as not running, no change is made", name, holder)
    return Untrusted(name, holder)


def command(lxcpath: str, name: str, cmd: int, data: bytes = b"", ptr: int = 0,
            timeout: float = TIMEOUT) -> Reply | None:
    """One command to the container's monitor; None when no one holds its name (stopped) or
    the monitor hung up without an answer (it is stopping). Raises Untrusted."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        # Not blocking: a Unix connect completes at once or finds the backlog full, which a
        # squatter could arrange to stall every caller for the whole timeout.
        s.setblocking(False)
        try:
            s.connect(socket_name(lxcpath, name))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except BlockingIOError:
            raise _refuse(name, "a process that accepts no connection") from None
        s.settimeout(timeout)
        # The listener's credentials, taken when it called listen(): root for liblxc's
        # socket (the pid is the process that started the container, maybe gone since).
        pid, uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
        if uid != 0:
            raise _refuse(name, f"uid {uid} (pid {pid})")
        try:
            # With our credentials in the message, as liblxc's client sends them: the monitor
            # sets SO_PASSCRED only after it accepts, and a request already queued then
            # carries none — read as uid 65534, and answered -EPERM (1 call in ~100 here).
            creds = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
            request = WIRE.pack(cmd, len(data), ptr) + data
            sent = s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
            if sent < len(request):
                s.sendall(request[sent:])
            head, fds, _flags, _addr = socket.recv_fds(s, WIRE.size, 1)
        except (ConnectionResetError, BrokenPipeError):
            return None  # the monitor is ending
        fd = fds[0] if fds else None
        for extra in fds[1:]:
            os.close(extra)
        if head:
            head += _recv_exactly(s, WIRE.size - len(head))
        if len(head) < WIRE.size:
            if fd is not None:
                os.close(fd)
            return None
        ret, datalen, value = WIRE.unpack(head)
        if datalen > MAX_DATA:  # as liblxc refuses it (E2BIG); nothing we ask is that long
            if fd is not None:
                os.close(fd)
            return Reply(-errno.E2BIG, value, b"", None)
        return Reply(ret, value, _recv_exactly(s, max(datalen, 0)), fd)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _int(value: int) -> int:
    """The low 32 bits of a pointer-sized field as a C int (INT_TO_PTR / PTR_TO_INT)."""
    low = value & 0xFFFFFFFF
    return low - (1 << 32) if low >= 1 << 31 else low


def state(lxcpath: str, name: str) -> str:
    """liblxc's word for the state: STOPPED when nothing holds the name. Raises Untrusted."""
    reply = command(lxcpath, name, GET_STATE)
    if reply is None:
        return "STOPPED"
    number = _int(reply.data)
    return STATES[number] if 0 <= number < len(STATES) else "STOPPED"


def released(lxcpath: str, name: str) -> bool:
    """Whether no monitor holds the name any more: a monitor reports STOPPED a moment before
    it ends, and liblxc's next call (destroy, start) still finds it. Raises Untrusted."""
    return command(lxcpath, name, GET_STATE) is None


def init_pid(lxcpath: str, name: str) -> int:
    """The container's init pid, checked to be a child of this container's monitor; 0 if it
    is not running (or stopped meanwhile). Raises Untrusted."""
    reply = command(lxcpath, name, GET_INIT_PID)
    if reply is None:
        return 0
    pid = _int(reply.data)
    return pid if pid > 0 and is_init_of(pid, lxcpath, name) else 0


DEFAULT_LXCPATH = "/var/lib/lxc"  # Debian's lxc.default_config_path (a test checks it)
LXC_START = "/usr/bin/lxc-start"
# lxc-start's options that name the container and the lxcpath (getopt_long, as in lxc_start.c).
LXC_START_OPTIONS = {"-n": "name", "--name": "name", "-P": "lxcpath", "--lxcpath": "lxcpath"}


def is_monitor_of(cmdline: bytes, exe: str, lxcpath: str, name: str) -> bool:
    """Whether a root process's command line is that of this container's monitor: liblxc's
    process title when a daemonised start made it (python3-lxc's start(), `lxc-start -n`),
    else lxc-start itself run in the foreground (lxc@NAME.service runs `lxc-start -F -n`)."""
    if cmdline.rstrip(b"\0") == f"[lxc monitor] {lxcpath} {name}".encode():
        return True
    if exe != LXC_START:
        return False
    args = [a.decode("utf-8", "replace") for a in cmdline.rstrip(b"\0").split(b"\0")[1:]]
    seen = {"lxcpath": DEFAULT_LXCPATH}
    foreground = False
    i = 0
    while i < len(args):
        arg = args[i]
        option, eq, value = arg.partition("=")
        if option in LXC_START_OPTIONS and option.startswith("--") and eq:
            seen[LXC_START_OPTIONS[option]] = value
        elif arg in LXC_START_OPTIONS and i + 1 < len(args):
            i += 1
            seen[LXC_START_OPTIONS[arg]] = args[i]
        elif arg[:2] in ("-n", "-P") and len(arg) > 2:
            seen[LXC_START_OPTIONS[arg[:2]]] = arg[2:]
        foreground = foreground or arg in ("-F", "--foreground")
        i += 1
    return foreground and seen.get("name") == name and seen["lxcpath"] == lxcpath


def is_init_of(pid: int, lxcpath: str, name: str) -> bool:
    """Whether `pid` is a child of a root process in our namespaces titled as this container's
    monitor. Cheap (three small reads); a pid that vanished meanwhile is not."""
    try:
        parent = parent_of(pid)
        if _uid_of(parent) != 0 or not _same_namespaces(parent):
            return False
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            cmdline = f.read(8192)
        exe = os.readlink(f"/proc/{parent}/exe")
    except (OSError, ValueError):
        return False
    return is_monitor_of(cmdline, exe, lxcpath, name)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name in parentheses may hold anything: the fields follow the last ")".
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return int(line.split()[2])  # the effective uid
    raise ValueError("no Uid line")


def _same_namespaces(pid: int) -> bool:
    return all(os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}")
               for ns in ("pid", "user"))


def config_item(lxcpath: str, name: str, key: str) -> str:
    """A running container's config value as its monitor holds it; "" if none."""
    reply = command(lxcpath, name, GET_CONFIG_ITEM, key.encode() + b"\0")
    if reply is None or reply.ret < 0:
        return ""
    return reply.payload.rstrip(b"\0").decode("utf-8", "replace")


def notify(lxcpath: str, name: str, new_state: str) -> None:
    """Tell the monitor the state to report (liblxc's lxc_cmd_notify_state_listeners)."""
    command(lxcpath, name, SERVE_STATE_CLIENTS, ptr=STATE_NUMBER[new_state])


def hard_stop(lxcpath: str, name: str, timeout: float) -> bool:
    """Ask the monitor to kill init (lxc.signal.stop, SIGKILL by default) and wait until it
    has exited: the monitor answers only on failure, and hangs up as it ends."""
    try:
        reply = command(lxcpath, name, STOP, timeout=timeout)
    except TimeoutError:
        return False
    return reply is None or reply.ret >= 0


# -- cgroups ---------------------------------------------------------------------------------

@dataclass
class Cgroups:
    """Reads and writes the container's limiting cgroup as its monitor names it."""
    lxcpath: str
    name: str
    v1_mounts: dict[str, str]

    def __post_init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._v2: int | None = None
        self._v2_asked = False

    def close(self) -> None:
        if self._v2 is not None:
            os.close(self._v2)
            self._v2 = None

    def __enter__(self) -> Cgroups:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def unified(self) -> int | None:
        """The limiting cgroup2 directory's fd, on a host with only cgroup v2 (else None)."""
        if not self._v2_asked:
            self._v2_asked = True
            reply = command(self.lxcpath, self.name, GET_LIMIT_CGROUP2_FD)
            if reply is not None and reply.fd is not None:
                if reply.ret >= 0:
                    self._v2 = reply.fd
                else:
                    os.close(reply.fd)
        return self._v2

    def _dir(self, controller: str) -> str:
        if controller not in self._paths:
            mount = self.v1_mounts.get(controller)
            reply = command(self.lxcpath, self.name, GET_LIMIT_CGROUP,
                            controller.encode() + b"\0")
            if mount is None or reply is None or reply.ret < 0:
                raise KeyError(controller)
            self._paths[controller] = _under(mount, reply.payload.rstrip(b"\0").decode())
        return self._paths[controller]

    def _open(self, item: str, flags: int) -> int:
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        fd = self.unified()
        if fd is not None:
            return os.open(item, flags, dir_fd=fd)
        return os.open(os.path.join(self._dir(item.partition(".")[0]), item), flags)

    def get(self, item: str) -> str:
        """An item's contents, as liblxc's get_cgroup_item: KeyError if the cgroup lacks it."""
        try:
            fd = self._open(item, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyError(item) from None
        except OSError as exc:  # as liblxc's ValueError: the item is there but unreadable
            raise ValueError(f"{item}: {exc.strerror}") from None
        try:
            return os.read(fd, 65536).decode("ascii", "replace")
        finally:
            os.close(fd)

    def put(self, item: str, value: str) -> None:
        fd = self._open(item, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def _under(mount: str, path: str) -> str:
    """The cgroup directory `path` (as the monitor reports it) inside `mount`, or ValueError."""
    full = os.path.normpath(os.path.join(mount, path.lstrip("/")))
    if not path.startswith("/") or os.path.commonpath([full, mount]) != mount:
        raise ValueError(f"cgroup path {path!r} leaves {mount}")
    return full


def v1_mounts() -> dict[str, str]:
    """controller -> mount point of each cgroup v1 hierarchy in this mount namespace."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) >= 3 and fields[0] == "cgroup":
                for option in fields[2].split(","):
                    mounts.setdefault(option.removeprefix("name="), left.split()[4])
    return mounts


# Per direction: what liblxc writes, what it waits to read back, the states it reports.
FREEZER = {
    True: {"v1": ("freezer.state", "FROZEN", "FROZEN"), "v2": ("cgroup.freeze", "1", "frozen 1"),
           "before": "FREEZING", "done": "FROZEN", "failed": "RUNNING"},
    False: {"v1": ("freezer.state", "THAWED", "THAWED"), "v2": ("cgroup.freeze", "0", "frozen 0"),
            "before": "THAWED", "done": "RUNNING", "failed": "FROZEN"},
}


def set_frozen(cg: Cgroups, frozen: bool, sleep: Callable[[float], None] = time.sleep) -> None:
    """Freeze or thaw as liblxc does (lxc_freeze / cgroup_freeze): tell the monitor, write the
    freezer, wait until the kernel reports it done, tell the monitor. The caller's deadline
    bounds the wait (a v1 freezer can stay in FREEZING for ever)."""
    how = FREEZER[frozen]
    v2 = cg.unified() is not None
    item, value, done = how["v2" if v2 else "v1"]
    notify(cg.lxcpath, cg.name, str(how["before"]))
    ok = False
    try:
        cg.put(item, value)
        while not ok:
            text = cg.get("cgroup.events" if v2 else item)
            ok = done in text.splitlines() if v2 else text.strip() == done
            if not ok:
                sleep(0.01)
    finally:
        notify(cg.lxcpath, cg.name, str(how["done" if ok else "failed"]))


# -- signals to init -----------------------------------------------------------------------------

def halt_signal(pid: int, configured: str) -> int:
    """liblxc's choice: lxc.signal.halt if set, SIGRTMIN+3 if init blocks it (systemd), else
    SIGPWR."""
    if configured:
        return _signal_number(configured)
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            blocked = next((int(line.split()[1], 16) for line in f
                            if line.startswith(b"SigBlk:")), 0)
    except OSError:
        blocked = 0
    rtmin3 = signal.SIGRTMIN + 3
    return rtmin3 if blocked & (1 << (rtmin3 - 1)) else signal.SIGPWR


def _signal_number(text: str) -> int:
    text = text.strip().upper()
    if rules.ascii_digits(text):
        return int(text)
    base, _, offset = text.partition("+")
    if base in ("SIGRTMIN", "RTMIN"):
        return signal.SIGRTMIN + int(offset or 0)
    return int(signal.Signals[base if base.startswith("SIG") else "SIG" + base])


def signal_init(pid: int, lxcpath: str, name: str, signum: int) -> int | None:
    """Send `signum` to the container's init through a pidfd, re-checked after opening, so
    no other process can receive it; the pidfd (to wait on) or None if init is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # The pid named a child of the monitor before; checked again now that the pidfd pins the
    # process, so a pid reused in between is not signalled.
    if not is_init_of(pid, lxcpath, name):
        os.close(pidfd)
        return None
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        os.close(pidfd)
        return None
    return pidfd


def wait_exit(pidfd: int, timeout: float) -> bool:
    """Whether the process behind `pidfd` exits within `timeout` seconds."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        return bool(poller.poll(max(0, int(timeout * 1000))))
    except OSError as exc:
        if exc.errno == errno.EINTR:
            return False
        raise
