"""The helper's directories and its socket file at start and stop.

A symlink planted where the socket, state or audit directory should be, or such a directory
owned by someone else, stops the helper at start with a message naming the path, and nothing
it points to changes owner or mode. A helper removes the socket it made when it stops, replaces
one that nothing answers on, and never takes over one that a live helper serves.
"""
from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
import time

import pytest

from helperd import safedirs
from protocol import ops
from protocol.config import ConfigError
from tests.conftest import PYTHON, ROOT, World

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid


def owner_and_mode(path: str) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


# -- safedirs.ensure_dir ------------------------------------------------------------------------

def test_a_missing_directory_is_made_root_gid_with_the_mode(tmp_path: str) -> None:
    path = os.path.join(str(tmp_path), "a", "b")
    safedirs.ensure_dir(path, NOGROUP, 0o750)
    assert owner_and_mode(path) == (0, NOGROUP, 0o750)
    os.chmod(path, 0o777)  # an existing one of root's is put right
    safedirs.ensure_dir(path, NOGROUP, 0o750)
    assert owner_and_mode(path) == (0, NOGROUP, 0o750)


@pytest.mark.security
def test_a_symlink_is_refused_and_its_target_left_as_it_was(tmp_path: str) -> None:
    target = os.path.join(str(tmp_path), "elsewhere")
    os.mkdir(target)
    os.chown(target, NOBODY, NOGROUP)
    os.chmod(target, 0o700)
    link = os.path.join(str(tmp_path), "dir")
    os.symlink(target, link)
    with pytest.raises(ConfigError, match=f"{link}: is a symbolic link"):
        safedirs.ensure_dir(link, 0, 0o750)
    assert owner_and_mode(target) == (NOBODY, NOGROUP, 0o700)
    dangling = os.path.join(str(tmp_path), "dangling")
    os.symlink(os.path.join(str(tmp_path), "nowhere"), dangling)
    with pytest.raises(ConfigError, match="symbolic link"):
        safedirs.ensure_dir(dangling, 0, 0o750)
    assert not os.path.exists(os.path.join(str(tmp_path), "nowhere"))


@pytest.mark.security
def test_a_directory_root_does_not_own_is_refused(tmp_path: str) -> None:
    path = os.path.join(str(tmp_path), "theirs")
    os.mkdir(path, 0o700)
    os.chown(path, NOBODY, NOGROUP)
    with pytest.raises(ConfigError, match=f"{path}: owned by uid {NOBODY}, not root"):
        safedirs.ensure_dir(path, 0, 0o750)
    assert owner_and_mode(path) == (NOBODY, NOGROUP, 0o700)


def test_a_file_is_not_a_directory(tmp_path: str) -> None:
    path = os.path.join(str(tmp_path), "file")
    open(path, "w").close()
    with pytest.raises(ConfigError, match=f"{path}: is not a directory"):
        safedirs.ensure_dir(path, 0, 0o750)


# -- the helper at start ------------------------------------------------------------------------



def start_and_wait_for_exit(world: World, timeout: float = 30) -> tuple[int, str]:
    """Run the helper, which is expected to refuse to start: its exit code and output."""
    done = subprocess.run([PYTHON, "-m", "helperd", "--config", world.config], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


DIRECTORIES = {"socket": lambda w: os.path.dirname(w.socket),
               "state": lambda w: w.state_dir,
               "audit": lambda w: os.path.join(w.base, "audit")}


@pytest.mark.security
@pytest.mark.parametrize("which", DIRECTORIES)
def test_a_symlink_planted_for_a_directory_stops_the_helper(fresh_world: World,
                                                            which: str) -> None:
    path = DIRECTORIES[which](fresh_world)
    target = os.path.join(fresh_world.base, "someone-elses")
    os.mkdir(target)
    os.chown(target, NOBODY, NOGROUP)
    os.chmod(target, 0o700)
    os.symlink(target, path)
    code, output = start_and_wait_for_exit(fresh_world)
    assert code == 2, output
    assert f"{path}: is a symbolic link" in output
    assert owner_and_mode(target) == (NOBODY, NOGROUP, 0o700)
    assert os.listdir(target) == []


@pytest.mark.security
@pytest.mark.parametrize("which", DIRECTORIES)
def test_a_directory_owned_by_another_user_stops_the_helper(fresh_world: World,
                                                           which: str) -> None:
    path = DIRECTORIES[which](fresh_world)
    os.mkdir(path, 0o700)
    os.chown(path, NOBODY, NOGROUP)
    code, output = start_and_wait_for_exit(fresh_world)
    assert code == 2, output
    assert f"{path}: owned by uid {NOBODY}, not root" in output
    assert owner_and_mode(path) == (NOBODY, NOGROUP, 0o700)


# -- the socket file ----------------------------------------------------------------------------

def test_a_stopped_helper_leaves_no_socket_and_the_next_start_serves(fresh_world: World) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        fresh_world.start_helper()
        assert fresh_world.call(ops.ListContainers()) == []
        assert fresh_world.process is not None
        fresh_world.process.send_signal(sig)
        assert fresh_world.process.wait(30) == 0
        fresh_world.process = None
        assert not os.path.lexists(fresh_world.socket), f"socket left after {sig.name}"


def test_a_stale_socket_is_replaced_at_start(fresh_world: World) -> None:
    os.makedirs(os.path.dirname(fresh_world.socket), exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(fresh_world.socket)  # as a helper killed with SIGKILL leaves it
    process = subprocess.Popen([PYTHON, "-m", "helperd", "--config", fresh_world.config],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fresh_world.process = process
    # An answer at that path is the new socket's: the dead one cannot answer. (Not its inode:
    # the stale socket's freed inode number can come straight back for the new one.)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert fresh_world.call(ops.ListContainers()) == []
            break
        except (ConnectionRefusedError, FileNotFoundError):  # the stale one, or none yet
            assert process.poll() is None and time.monotonic() < deadline, "no new socket"
            time.sleep(0.05)


def test_a_live_helpers_socket_is_never_taken_over(fresh_world: World) -> None:
    fresh_world.start_helper()
    served = os.lstat(fresh_world.socket).st_ino
    code, output = start_and_wait_for_exit(fresh_world)
    assert code == 2, output
    assert "another helper is serving on this socket" in output
    assert os.lstat(fresh_world.socket).st_ino == served
    assert fresh_world.call(ops.ListContainers()) == []  # the first one still serves


def test_a_socket_that_systemd_passed_is_left_in_place(fresh_world: World) -> None:
    os.makedirs(os.path.dirname(fresh_world.socket), exist_ok=True)
    process = subprocess.Popen(
        ["systemd-socket-activate", "-l", fresh_world.socket, "--",
         PYTHON, "-m", "helperd", "--config", fresh_world.config],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fresh_world.process = process
    try:
        deadline = time.monotonic() + 10
        while True:  # systemd-socket-activate starts the helper on the first connection
            try:
                assert fresh_world.call(ops.ListContainers()) == []
                break
            except (ConnectionError, FileNotFoundError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)  # the helper took the activator's pid by exec
        assert process.wait(30) == 0
        fresh_world.process = None
        assert stat.S_ISSOCK(os.lstat(fresh_world.socket).st_mode)  # systemd's, not ours
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
