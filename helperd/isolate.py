"""Run liblxc calls in forked children (workers), with a deadline the parent enforces.

Why children: liblxc's start() moves its caller into the container's monitor cgroups, a template
may run for minutes, and a hung call (freeze, a stuck template) must be killable without taking
the helper down. Container changes go to pre-forked workers: handing a job to a waiting worker
costs a small fraction of a fork of the helper (bench/README.md). A worker that misses its
deadline is killed with its process group; one that cannot move back to the helper's cgroups,
or was niced, retires. A worker never returns into the event loop: it always _exits.
"""
from __future__ import annotations

import asyncio
import ctypes
import fcntl
import gc
import os
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from helperd import lxclog
from protocol import framing, ops
from protocol.errors import LwpError, invalid

OUTPUT_TAIL = 600  # characters of a failed child's output that go into the error message
PR_SET_PDEATHSIG = 1
SPARE_WORKERS = 2  # workers kept waiting: enough for two changes of different containers at once
WORKER_FD = 3  # the worker's end of its socket; every other inherited fd above 2 is closed
MAX_JOBS = 1000  # then a worker retires, so whatever liblxc leaks per call stays bounded
Task = Callable[[Any], None]  # runs in the worker, given the decoded job message


@dataclass(frozen=True)
class WorkerJob:
    """What the helper hands a worker: one request, as its op's name and its arguments. The
    worker rebuilds it from the wire, so the request is validated again on that side too."""

    request: ops.Request

    def to_wire(self) -> dict[str, Any]:
        return {"op": ops.OP_OF_REQUEST[type(self.request)].name,
                "args": ops.encode_args(self.request)}

    @classmethod
    def from_wire(cls, wire: object) -> WorkerJob:
        """The job in `wire`, or `invalid-request` for anything but a valid {op, args}."""
        if not isinstance(wire, dict) or wire.keys() != {"op", "args"}:
            raise invalid("job", "must be a map of op and args")
        if not isinstance(wire["op"], str):
            raise invalid("job.op", "must be str")
        return cls(ops.decode_args(wire["op"], wire["args"]))


class Workers:
    """A few pre-forked workers that run container changes, one job at a time each.

    Workers are taken last-in first-out, so a sequence of changes reuses one warm worker."""

    def __init__(self, perform: Callable[[Any], None], spare: int = SPARE_WORKERS) -> None:
        self._job: Task = lambda wire: perform(WorkerJob.from_wire(wire).request)
        self._spare = spare
        self._idle: list[_Worker] = []
        self._refill: asyncio.Handle | None = None  # a fill() due on the next loop turn

    def fill(self) -> None:
        """Fork spare workers up to the target (at start, and after one is used up)."""
        self._refill = None
        while len(self._idle) < self._spare:
            self._idle.append(_Worker.spawn(self._job))

    async def run(self, request: ops.Request, deadline: float,
                  on_child: Callable[[int], None] | None = None) -> None:
        """Run `request`'s change in a worker; re-raise its LwpError here, or `timeout`.

        `on_child` learns the worker's pid (its process group) before the job is sent: the
        audit trail keeps it, so a helper restarted after a kill -9 can end what is left."""
        if self._idle:
            worker = self._idle.pop()
        else:
            if self._refill is not None:  # this fork is the one it was due to make
                self._refill.cancel()
                self._refill = None
            worker = _Worker.spawn(self._job)
        try:
            if on_child is not None:
                on_child(worker.pid)
            await worker.call(WorkerJob(request).to_wire(), deadline)
        finally:
            if worker.reusable and len(self._idle) < self._spare:
                self._idle.append(worker)
            else:
                worker.kill()  # idle again, so nothing of its work is cut short
            if len(self._idle) < self._spare and self._refill is None:
                # After this reply is on its way: the fork then costs no request any time.
                self._refill = asyncio.get_running_loop().call_soon(self.fill)

    def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        while self._idle:
            self._idle.pop().kill()


async def run_isolated(call: Callable[[], None], deadline: float,
                       on_child: Callable[[int], None] | None = None) -> None:
    """Run `call` in a worker of its own (a fresh fork), then end it: for rare work such as
    the clean-up after a missed deadline, which is no request the workers know."""
    worker = _Worker.spawn(lambda _wire: call())
    try:
        if on_child is not None:
            on_child(worker.pid)
        await worker.call(None, deadline)
    finally:
        worker.kill()


class _Worker:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.alive = True
        self.reusable = False  # it answered its last job and is back in the helper's cgroups
        self.status = "running"

    @classmethod
    def spawn(cls, job: Task) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _serve(job, theirs.fileno(), parent)
        theirs.close()
        ours.setblocking(False)
        return cls(pid, ours)

    async def call(self, wire: Any, deadline: float) -> None:
        """Send one job and wait for its outcome; raise the LwpError it ended with."""
        loop = asyncio.get_running_loop()
        self.reusable = False
        try:
            async with asyncio.timeout(deadline):
                await loop.sock_sendall(self.sock, msgpack.packb(wire, use_bin_type=True))
                data = await loop.sock_recv(self.sock, framing.MAX_FRAME)
        except TimeoutError:
            self.kill()
            raise LwpError("timeout", f"the operation did not finish within {deadline:g} s "
                                      "and was ended") from None
        except BaseException:  # cancelled (the helper is stopping) or the socket broke
            self.kill()
            raise
        if not data:  # the liblxc call took the worker down (a crash, an exit)
            self.kill()
            raise LwpError("internal-error", f"the liblxc call ended its worker "
                                             f"({self.status})")
        reply = framing.decode_trusted_body(data)  # from a worker: root, our code
        self.reusable = reply["reusable"] is True
        if reply["code"] is not None:
            raise LwpError(reply["code"], reply["message"])

    def kill(self) -> None:
        """End the worker and everything in its process group (a template it runs, say)."""
        if self.alive:
            self.alive = False
            self.sock.close()
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone, but still to be reaped
            self.status = _describe(os.waitpid(self.pid, 0)[1])


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# -- the worker's side ---------------------------------------------------------------------

def _serve(job: Task, sock_fd: int, parent: int) -> NoReturn:
    code = 1
    try:
        # Nothing inherited from the helper is ever finalised here: its fds are closed
        # below, and a finaliser must not close a number this worker has since reused.
        gc.freeze()
        signal.set_wakeup_fd(-1)  # the helper's event loop's, about to be closed here
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        if sock_fd != WORKER_FD:
            os.dup2(sock_fd, WORKER_FD, inheritable=False)
            os.close(sock_fd)
        # The helper's sockets (clients, the listening socket, other workers) stay the
        # helper's: a copy held here would keep a connection open after the helper hangs up.
        os.closerange(WORKER_FD + 1, os.sysconf("SC_OPEN_MAX"))
        # Own process group, so a timeout kills the template and whatever it started too
        # (a container's monitor makes a session of its own and is not part of it).
        os.setsid()
        # Die with the helper (its process group is ended by the next helper's recovery).
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # Fds 1 and 2 (what liblxc and templates print) go to one file, emptied per job.
        with tempfile.TemporaryFile() as output:
            fcntl.fcntl(output.fileno(), fcntl.F_SETFL,
                        fcntl.fcntl(output.fileno(), fcntl.F_GETFL) | os.O_APPEND)
            for fd in (1, 2):
                os.dup2(output.fileno(), fd)
        home = CgroupHome()
        priority = os.getpriority(os.PRIO_PROCESS, 0)
        jobs = 0
        # (A worker whose helper died before it could note that never begins.)
        while os.getppid() == parent and (message := os.read(WORKER_FD, framing.MAX_FRAME)):
            os.ftruncate(1, 0)
            reply = _perform(job, message)
            jobs += 1
            # Reused only as it began: in the helper's cgroups, at the helper's priority (a
            # create lowers it for good), and within its quota of jobs.
            reply["reusable"] = (home.restore() and jobs < MAX_JOBS
                                 and os.getpriority(os.PRIO_PROCESS, 0) == priority)
            os.write(WORKER_FD, msgpack.packb(reply, use_bin_type=True))
        code = 0
    finally:
        os._exit(code)


def _perform(job: Task, message: bytes) -> dict[str, Any]:
    """Run one job; the tail of its output explains a failed liblxc call."""
    try:
        job(framing.decode_trusted_body(message))
    except LwpError as exc:
        text = _with_tail(exc.message, 1) if exc.code == "operation-failed" else exc.message
        return {"code": exc.code, "message": text}
    except Exception as exc:  # noqa: BLE001 — reported as a code, never as a traceback
        return {"code": "internal-error", "message": f"unexpected {type(exc).__name__} in "
                                                     "liblxc call"}
    return {"code": None, "message": None}


def _with_tail(message: str, fd: int) -> str:
    """`message` with why: liblxc's first errors (lxclog.py), then the tail of whatever else
    the job printed (a template's complaint)."""
    end = os.lseek(fd, 0, os.SEEK_END)
    head = os.pread(fd, min(end, lxclog.READ), 0).decode("utf-8", "replace")
    start = max(0, end - OUTPUT_TAIL * 4)
    tail = os.pread(fd, end - start, start).decode("utf-8", "replace")
    printed = " ".join(line for line in tail.splitlines() if not lxclog.is_log_line(line))
    parts = lxclog.causes(head) + [" ".join(printed.split())[-OUTPUT_TAIL:]]
    detail = "; ".join(part for part in parts if part)[:OUTPUT_TAIL * 2]
    return f"{message}: {detail}" if detail else message


class CgroupHome:
    """liblxc's start() moves its caller into the container's monitor cgroups for good (see
    design-anchors): a long-lived process that starts containers must move back after each."""

    def __init__(self) -> None:
        self.dirs = own_cgroups()
        self.signature = self._read()

    @staticmethod
    def _read() -> str:
        with open("/proc/self/cgroup") as f:
            return f.read()

    def at_home(self) -> bool:
        return self._read() == self.signature

    def restore(self) -> bool:
        """Move back where this process began; False if that cannot be done."""
        if self.at_home():
            return True
        for d in self.dirs:
            try:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass  # a hierarchy we may not write (a delegated one): nothing to undo there
        return self.at_home()


def own_cgroups() -> list[str]:
    """This process's cgroup directories, one per mounted hierarchy (v1 or v2)."""
    mine: list[tuple[set[str], str]] = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, names, where = line.rstrip("\n").split(":", 2)
            mine.append((set(names.split(",")) - {""}, where))
    dirs = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = right.split()[:3]
            root, mountpoint = left.split()[3:5]
            for controllers, where in mine:
                v2 = fstype == "cgroup2" and not controllers
                v1 = fstype == "cgroup" and bool(controllers) \
                    and controllers <= set(options.split(","))
                if (v1 or v2) and where.startswith(root):
                    rel = where[len(root):].lstrip("/")
                    dirs.append(os.path.join(mountpoint, rel))
    return dirs
