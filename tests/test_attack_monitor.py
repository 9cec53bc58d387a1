"""A local user impersonates a container's monitor on its abstract command socket.

liblxc reaches a monitor at `@<lxcpath>/<name>/command` in the host's network namespace, which
any user can bind while the container is stopped; liblxc believes whoever answers. Here a fake
monitor, run as `nobody`, speaks liblxc 5.0.2's wire protocol and names a root process and a
cgroup of its choosing: the helper must neither report nor touch them.
"""
from __future__ import annotations

import collections
import errno
import os
import pwd
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from helperd import cgroupstats, monitor
from protocol import ops
from protocol.errors import LwpError
from tests.conftest import PYTHON, Tokens, World, become, new_name

pytestmark = [pytest.mark.lxc, pytest.mark.security]

WIRE = struct.Struct("=iiQ")  # struct lxc_cmd_req / lxc_cmd_rsp on x86_64
RUNNING, MAX_STATE = 2, 8
FREEZER_MOUNT = "/sys/fs/cgroup/freezer"


# -- the fake monitor --------------------------------------------------------------------------

@dataclass
class Fake:
    pid: int
    ready: int  # the read end of the pipe on which it says "bound"

    def wait_bound(self) -> None:
        with os.fdopen(os.dup(self.ready), "rb") as f:
            if f.read(5) != b"bound":
                raise RuntimeError("the fake monitor could not bind its name")

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.ready)


@dataclass
class Script:
    """What a fake monitor answers beyond its victims (for the root fake of the v2 test)."""
    cgroup2_fd: int | None = None  # sent for GET_LIMIT_CGROUP2_FD
    told: int | None = None  # a pipe to write each state it is told (SERVE_STATE_CLIENTS)


def _answer(conn: socket.socket, cmd: int, ptr: int, victim_pid: int, victim_cgroup: str,
            script: Script) -> bool:
    """One answer as liblxc's client expects it; True: keep the connection (a state client)."""
    if cmd == monitor.GET_LIMIT_CGROUP2_FD and script.cgroup2_fd is not None:
        socket.send_fds(conn, [WIRE.pack(0, 0, 0)], [script.cgroup2_fd])
    elif cmd == monitor.SERVE_STATE_CLIENTS and script.told is not None:
        os.write(script.told, bytes([ptr]))
        conn.sendall(WIRE.pack(0, 0, 0))
    elif cmd == monitor.GET_STATE:
        conn.sendall(WIRE.pack(0, 0, RUNNING))
    elif cmd == monitor.GET_INIT_PID:
        conn.sendall(WIRE.pack(0, 0, victim_pid))
    elif cmd in (monitor.GET_LIMIT_CGROUP, 6):  # the limiting and the plain cgroup path
        path = victim_cgroup.encode() + b"\0"
        conn.sendall(WIRE.pack(0, len(path), 0) + path)
    elif cmd == 10:  # ADD_STATE_CLIENT: "not there yet, I will tell you" (liblxc waits)
        conn.sendall(WIRE.pack(0, 0, MAX_STATE))
        return True
    elif cmd in (monitor.SERVE_STATE_CLIENTS, monitor.STOP):
        conn.sendall(WIRE.pack(0, 0, 0))
    else:  # the init pidfd, the cgroup2 fd, config items, ...: "cannot" (liblxc falls back)
        conn.sendall(WIRE.pack(-errno.EINVAL, 0, 0))
    return False


def _serve(listener: socket.socket, victim_pid: int, victim_cgroup: str,
           script: Script) -> None:
    kept = []
    while True:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            head = conn.recv(WIRE.size)
            if len(head) == WIRE.size:
                cmd, datalen, ptr = WIRE.unpack(head)
                if datalen > 0:
                    conn.recv(datalen)
                if _answer(conn, cmd, ptr, victim_pid, victim_cgroup, script):
                    kept.append(conn)
                    continue
        except OSError:
            pass
        conn.close()


def remove_cgroup(path: str) -> None:
    """rmdir a cgroup the test made, once the kernel has let its last process go."""
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.05)


def start_fake(address: bytes, victim_pid: int, victim_cgroup: str, user: str = "nobody",
               wait_for_name: float = 0, stall: bool = False,
               script: Script | None = None) -> Fake:
    """Bind `address` as `user` (retrying up to `wait_for_name` s while it is taken) and answer
    as a monitor would. Returns at once if it is to wait for the name, else once bound."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(ready_r)
            become(user)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            deadline = time.monotonic() + wait_for_name
            while True:
                try:
                    listener.bind(address)
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                        raise
            if stall:  # a full backlog, never accepted: every connect would block
                listener.listen(0)
                filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                filler.connect(address)
                os.write(ready_w, b"bound")
                time.sleep(3600)
            listener.listen(64)
            os.write(ready_w, b"bound")
            _serve(listener, victim_pid, victim_cgroup, script or Script())
        finally:
            os._exit(0)
    os.close(ready_w)
    fake = Fake(pid, ready_r)
    if not wait_for_name:
        try:
            fake.wait_bound()
        except RuntimeError:
            fake.stop()
            raise
    return fake


# -- victims: a root process and a cgroup the attacker names -----------------------------------

@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A root process: SIGPWR (liblxc's halt signal) ends it, as it would end pid 1."""
    proc = subprocess.Popen(["/bin/sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def victim_cgroup() -> Iterator[str]:
    """A freezer cgroup with a root process in it; its path as a monitor would name it."""
    if not os.path.isdir(FREEZER_MOUNT):
        pytest.fail("this test needs the cgroup v1 freezer (this build host has it)")
    rel = f"/lwp-victim-{uuid.uuid4().hex[:8]}"
    path = FREEZER_MOUNT + rel
    os.mkdir(path)
    proc = subprocess.Popen(["/bin/sleep", "600"])
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        yield rel
    finally:
        with open(os.path.join(path, "freezer.state"), "w") as f:
            f.write("THAWED")
        proc.kill()
        proc.wait()
        remove_cgroup(path)


def _freezer_state(rel: str) -> str:
    with open(f"{FREEZER_MOUNT}{rel}/freezer.state") as f:
        return f.read().strip()


def _listing(world: World, token: str) -> dict[str, str]:
    return {c["container"]: c["state"] for c in world.call(ops.ListContainers(), token=token)}


def _refused(world: World, request: ops.Request, token: str) -> LwpError | None:
    """The helper's refusal of `request`, or None if it went through."""
    try:
        world.call(request, token=token)
    except LwpError as err:
        return err
    return None


def _is_refusal(err: LwpError | None) -> bool:
    return (err is not None and err.code == "invalid-state" and "is held by " in err.message
            and "refusing to act on it" in err.message)


@pytest.fixture
def stopped(world: World) -> str:
    name = new_name()
    world.call(ops.CreateContainer(name, "busybox"))
    return name


# -- a stopped container -----------------------------------------------------------------------

def test_a_fake_monitor_of_a_stopped_container_is_not_believed_by_list_or_info(
        world: World, tokens: Tokens, stopped: str,
        victim: subprocess.Popen[bytes]) -> None:
    fake = start_fake(monitor.socket_name(world.lxcpath, stopped), victim.pid, "/")
    try:
        assert _listing(world, tokens.read)[stopped] == "stopped"
        info = world.call(ops.ContainerInfo(stopped), token=tokens.read)
        assert info["state"] == "STOPPED" and info["pid"] == 0
    finally:
        fake.stop()
    with open(world.log) as f:
        assert f"container {stopped}: its command socket is held by uid " \
               f"{pwd.getpwnam('nobody').pw_uid} (pid {fake.pid})" in f.read()


def test_stop_through_a_fake_monitor_signals_no_process(
        world: World, tokens: Tokens, stopped: str,
        victim: subprocess.Popen[bytes]) -> None:
    fake = start_fake(monitor.socket_name(world.lxcpath, stopped), victim.pid, "/")
    try:
        errors = [_refused(world, request, tokens.operate)
                  for request in (ops.StopContainer(stopped), ops.RestartContainer(stopped))]
    finally:
        fake.stop()
    time.sleep(0.2)  # a signal sent would have landed by now
    assert victim.poll() is None, "the helper signalled the process the fake monitor named"
    assert all(_is_refusal(err) for err in errors), errors


def test_freeze_through_a_fake_monitor_freezes_no_cgroup(
        world: World, tokens: Tokens, stopped: str, victim_cgroup: str) -> None:
    fake = start_fake(monitor.socket_name(world.lxcpath, stopped), 1, victim_cgroup)
    try:
        freeze = _refused(world, ops.FreezeContainer(stopped), tokens.operate)
        assert _freezer_state(victim_cgroup) == "THAWED", "the helper froze the fake's cgroup"
        assert _is_refusal(freeze), freeze
        assert _is_refusal(_refused(world, ops.StartContainer(stopped), tokens.operate))
    finally:
        fake.stop()


def test_a_squatter_that_accepts_no_connection_stalls_nothing(
        world: World, tokens: Tokens, stopped: str) -> None:
    fake = start_fake(monitor.socket_name(world.lxcpath, stopped), 1, "/", stall=True)
    try:
        began = time.monotonic()
        assert _listing(world, tokens.read)[stopped] == "stopped"
        assert world.call(ops.ContainerInfo(stopped), token=tokens.read)["state"] == "STOPPED"
        refusal = _refused(world, ops.StartContainer(stopped), tokens.operate)
        assert time.monotonic() - began < 2
        assert _is_refusal(refusal) and "accepts no connection" in str(refusal), refusal
    finally:
        fake.stop()


def test_a_root_answer_naming_a_pid_that_is_no_child_of_the_monitor_is_not_taken(
        world: World, stopped: str, victim: subprocess.Popen[bytes]) -> None:
    # Defence in depth for a root process that is not this container's monitor (a privileged
    # container sharing the host's network namespace, say): its init pid is not believed.
    fake = start_fake(monitor.socket_name(world.lxcpath, stopped), victim.pid, "/", user="root")
    try:
        assert monitor.state(world.lxcpath, stopped) == "RUNNING"  # root is believed on state
        assert monitor.init_pid(world.lxcpath, stopped) == 0
        info = world.call(ops.ContainerInfo(stopped))
        assert info["pid"] == 0 and info["state"] == "STOPPED"
    finally:
        fake.stop()


# -- a running container -----------------------------------------------------------------------

def _bind_as_nobody(address: bytes) -> int:
    """The errno of binding `address` as nobody (0: it was free)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            entry = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(address)
        except OSError as exc:
            code = exc.errno or 255
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        code = f.read(1)[0]
    os.waitpid(pid, 0)
    return code


def test_a_running_containers_monitor_holds_its_name_and_is_believed(
        world: World, tokens: Tokens, stopped: str) -> None:
    name = stopped
    world.call(ops.StartContainer(name), token=tokens.operate)
    try:
        assert _bind_as_nobody(monitor.socket_name(world.lxcpath, name)) == errno.EADDRINUSE
        info = world.call(ops.ContainerInfo(name), token=tokens.read)
        assert info["state"] == "RUNNING" and info["pid"] > 1
        parent = monitor.parent_of(info["pid"])
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            assert f.read().rstrip(b"\0") == f"[lxc monitor] {world.lxcpath} {name}".encode()
        assert info["memory_bytes"] > 0 and info["cpu_ns"] > 0  # cgroups the monitor named
        world.call(ops.FreezeContainer(name), token=tokens.operate)
        assert _listing(world, tokens.read)[name] == "frozen"
        world.call(ops.UnfreezeContainer(name), token=tokens.operate)
        assert _listing(world, tokens.read)[name] == "running"
    finally:
        world.call(ops.StopContainer(name), token=tokens.operate)
    assert _listing(world, tokens.read)[name] == "stopped"


def test_a_real_monitor_answers_every_request_at_once_after_connect(
        world: World, stopped: str) -> None:
    """A request sent right after connect reaches the monitor before it has set SO_PASSCRED
    on the connection; without credentials of its own in the message it reads as uid 65534
    and is answered -EPERM (33 of 3,000 here before the fix): a running container read as
    stopped now and then."""
    world.call(ops.StartContainer(stopped))
    try:
        answers = collections.Counter()
        for _ in range(3000):
            reply = monitor.command(world.lxcpath, stopped, monitor.GET_INIT_PID)
            assert reply is not None
            if reply.fd is not None:
                os.close(reply.fd)
            answers[reply.ret] += 1
        assert answers == {0: 3000}
    finally:
        world.call(ops.StopContainer(stopped))


def test_a_name_taken_the_moment_a_running_container_stops_is_not_believed(
        world: World, tokens: Tokens, stopped: str,
        victim: subprocess.Popen[bytes]) -> None:
    name = stopped
    world.call(ops.StartContainer(name), token=tokens.operate)
    address = monitor.socket_name(world.lxcpath, name)
    # The squatter waits in a tight loop for the monitor to give up the name as it stops.
    squatter = start_fake(address, victim.pid, "/", wait_for_name=60)
    try:
        time.sleep(0.3)  # the squatter is at work
        world.call(ops.StopContainer(name), token=tokens.operate)
        squatter.wait_bound()
        assert _listing(world, tokens.read)[name] == "stopped"
        info = world.call(ops.ContainerInfo(name), token=tokens.read)
        assert info["state"] == "STOPPED" and info["pid"] == 0
        for request in (ops.StartContainer(name), ops.StopContainer(name),
                        ops.FreezeContainer(name)):
            assert _is_refusal(_refused(world, request, tokens.operate)), request
    finally:
        squatter.stop()
    assert victim.poll() is None


# -- the cgroup v2 path, run on this host's unified hierarchy -------------------------------------

def test_freeze_on_cgroup_v2_writes_the_fd_the_monitor_sends_and_tells_it_each_state(
        world: World) -> None:
    # This build host freezes through v1; a stock Debian 12 host through v2. The v2 code is
    # run here against a root stand-in monitor that hands over a real cgroup2 directory.
    unified = "/sys/fs/cgroup/unified"
    if not os.path.isfile(os.path.join(unified, "cgroup.procs")):
        pytest.fail("this test needs a cgroup2 hierarchy at /sys/fs/cgroup/unified")
    path = os.path.join(unified, f"lwp-v2-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    worker = subprocess.Popen(["/bin/sleep", "600"])
    told_r, told_w = os.pipe()
    dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    name = new_name()
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(worker.pid))
        fake = start_fake(monitor.socket_name(world.lxcpath, name), 1, "/", user="root",
                          script=Script(cgroup2_fd=dirfd, told=told_w))
        try:
            with monitor.Cgroups(world.lxcpath, name, {}) as cg:
                assert cg.unified() is not None
                monitor.set_frozen(cg, True)
                with open(os.path.join(path, "cgroup.events")) as f:
                    assert "frozen 1" in f.read().splitlines()
                # Items are read through the fd the monitor sent, as info reads them.
                assert cg.get("cgroup.procs").split() == [str(worker.pid)]
                assert set(cgroupstats.v2(cg.get)) == {"cpu_ns", "memory_bytes", "kmem_bytes",
                                                       "blkio_bytes"}
                monitor.set_frozen(cg, False)
                with open(os.path.join(path, "cgroup.events")) as f:
                    assert "frozen 0" in f.read().splitlines()
        finally:
            fake.stop()
        told = [monitor.STATES[n] for n in os.read(told_r, 16)]
        assert told == ["FREEZING", "FROZEN", "THAWED", "RUNNING"]  # as liblxc tells it
    finally:
        os.close(dirfd)
        os.close(told_r)
        os.close(told_w)
        worker.kill()
        worker.wait()
        remove_cgroup(path)


# -- who counts as a container's monitor ---------------------------------------------------------

@pytest.mark.parametrize(("argv", "exe", "lxcpath", "verdict"), [
    ([b"[lxc monitor] /l c1"], "/usr/bin/python3.11", "/l", True),   # python3-lxc's start()
    ([b"[lxc monitor] /l c1"], "/usr/bin/python3.11", "/m", False),  # another lxcpath's
    ([b"[lxc monitor] /l c10"], "/usr/bin/python3.11", "/l", False),
    ([b"/usr/bin/lxc-start", b"-F", b"-n", b"c1"], monitor.LXC_START,
     monitor.DEFAULT_LXCPATH, True),                                    # lxc@c1.service
    ([b"lxc-start", b"--name=c1", b"--foreground"], monitor.LXC_START,
     monitor.DEFAULT_LXCPATH, True),
    ([b"lxc-start", b"-nc1", b"-F", b"-P", b"/l"], monitor.LXC_START, "/l", True),
    ([b"lxc-start", b"-n", b"c1", b"-F"], monitor.LXC_START, "/l", False),  # default path
    ([b"lxc-start", b"-n", b"c1"], monitor.LXC_START, monitor.DEFAULT_LXCPATH, False),  # -d
    ([b"lxc-start", b"-F", b"-n", b"c1"], "/tmp/lxc-start", monitor.DEFAULT_LXCPATH, False),
    ([b"/usr/bin/lxc-start", b"-F", b"-n", b"c2"], monitor.LXC_START,
     monitor.DEFAULT_LXCPATH, False),
])
def test_a_monitor_is_known_by_its_title_or_as_lxc_start_in_the_foreground(
        argv: list[bytes], exe: str, lxcpath: str, verdict: bool) -> None:
    assert monitor.is_monitor_of(b"\0".join(argv) + b"\0", exe, lxcpath, "c1") is verdict


def test_the_default_lxcpath_is_liblxcs() -> None:
    import lxc  # the test compares with python3-lxc's own value
    assert monitor.DEFAULT_LXCPATH == lxc.default_config_path


# -- names too long for sun_path are hashed as liblxc hashes them ------------------------------

def test_a_long_lxcpath_is_hashed_as_liblxc_does(world: World) -> None:
    lxcpath = os.path.join(world.base, "l" * 60, "x" * 40)
    os.makedirs(lxcpath)
    name = new_name()
    assert len(f"{lxcpath}/{name}/command") >= monitor.SUN_PATH - 2
    assert monitor.socket_name(lxcpath, name).startswith(b"\0lxc/")
    script = ("import lxc, sys\n"
              "c = lxc.Container(sys.argv[1], sys.argv[2])\n"
              "c.load_config(sys.argv[3])\n"
              "ok = c.create('busybox') and c.start(close_fds=True) and c.wait('RUNNING', 10)\n"
              "sys.exit(0 if ok else 1)\n")
    # In a child: liblxc's start() would move pytest into the container's cgroups.
    subprocess.run([PYTHON, "-c", script, name, lxcpath, os.path.join(world.base, "default.conf")],
                   check=True, capture_output=True, timeout=60)
    try:
        assert monitor.state(lxcpath, name) == "RUNNING"
        assert monitor.init_pid(lxcpath, name) > 1
        assert _bind_as_nobody(monitor.socket_name(lxcpath, name)) == errno.EADDRINUSE
    finally:
        stop = ("import lxc, sys\n"
                "c = lxc.Container(sys.argv[1], sys.argv[2])\n"
                "c.stop(); c.wait('STOPPED', 10); c.destroy()\n")
        subprocess.run([PYTHON, "-c", stop, name, lxcpath], check=False, timeout=60)
