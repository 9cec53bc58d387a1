"""Attacks from inside a container's rootfs on what the root helper writes there (clone).

The container's own root controls every name in its rootfs: a link planted at /etc/hostname
must not make the helper, or liblxc acting for it, write a host file.
"""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helperd import rootfs
from protocol import ops
from protocol.errors import LwpError
from tests.conftest import World, new_name

pytestmark = [pytest.mark.lxc, pytest.mark.security]

VICTIM_TEXT = b"root-only host file, must stay as it is\n"


@pytest.fixture
def victim() -> Iterator[str]:
    """A root-only host file outside every rootfs, as the token store or audit key is."""
    with tempfile.TemporaryDirectory(prefix="lwp-victim-") as d:
        path = os.path.join(d, "secret")
        with open(path, "wb") as f:
            f.write(VICTIM_TEXT)
        os.chmod(path, 0o600)
        yield path


def _stopped_busybox(world: World) -> tuple[str, str]:
    name = new_name()
    world.call(ops.CreateContainer(name, "busybox"))
    return name, os.path.join(world.lxcpath, name, "rootfs")


def _plant_hostname_link(root: str, target: str) -> None:
    """What `ln -sf TARGET /etc/hostname`, run as root inside the container, leaves behind."""
    hostname = os.path.join(root, "etc", "hostname")
    if os.path.lexists(hostname):
        os.unlink(hostname)
    os.symlink(target, hostname)


def _hostname_of(world: World, name: str) -> bytes:
    with open(os.path.join(world.lxcpath, name, "rootfs", "etc", "hostname"), "rb") as f:
        return f.read()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _uts_name(world: World, name: str) -> list[str]:
    with open(os.path.join(world.lxcpath, name, "config")) as f:
        return [line.split("=", 1)[1].strip() for line in f
                if line.split("=", 1)[0].strip() == "lxc.uts.name"]


def test_clone_does_not_write_through_a_hostname_link_to_a_host_file(
        world: World, victim: str) -> None:
    source, root = _stopped_busybox(world)
    _plant_hostname_link(root, victim)
    clone = new_name()
    world.call(ops.CloneContainer(clone, source))
    with open(victim, "rb") as f:
        assert f.read() == VICTIM_TEXT, "the clone wrote a host file through the rootfs link"
    assert _uts_name(world, clone) == [clone]
    # The link resolved inside the clone's rootfs, where its target does not exist.
    assert os.path.islink(os.path.join(world.lxcpath, clone, "rootfs", "etc", "hostname"))


def test_clone_does_not_write_through_a_relative_link_climbing_out(
        world: World, victim: str) -> None:
    source, root = _stopped_busybox(world)
    _plant_hostname_link(root, "../" * 40 + victim.lstrip("/"))
    world.call(ops.CloneContainer(new_name(), source))
    with open(victim, "rb") as f:
        assert f.read() == VICTIM_TEXT


def test_clone_sets_the_new_name_in_a_regular_hostname_file(world: World) -> None:
    source, root = _stopped_busybox(world)
    with open(os.path.join(root, "etc", "hostname"), "wb") as f:
        f.write(source.encode() + b"\n")
    clone = new_name()
    world.call(ops.CloneContainer(clone, source))
    assert _hostname_of(world, clone) == clone.encode() + b"\n"
    assert _hostname_of(world, source) == source.encode() + b"\n"
    assert _uts_name(world, clone) == [clone]


def test_clone_refuses_a_hostname_fifo_and_leaves_nothing(world: World) -> None:
    source, root = _stopped_busybox(world)
    hostname = os.path.join(root, "etc", "hostname")
    if os.path.lexists(hostname):
        os.unlink(hostname)
    os.mkfifo(hostname)  # an open for writing would block the worker until its deadline
    clone = new_name()
    with pytest.raises(LwpError, match="not a regular file"):
        world.call(ops.CloneContainer(clone, source))
    assert clone not in world.container_dirs()


# -- rewrite_regular_file against hostile trees, without liblxc -------------------------------

LINK_TARGETS = st.sampled_from([
    "/outside/secret", "../outside/secret", "../../../../outside/secret", "/etc/hostname",
    "hostname", "/etc", "..", "/", "/proc/self/root/outside/secret", "/dev/null", "loop",
    "/etc/real",
])
NODES = st.sampled_from(["file", "link", "fifo", "dir", "missing"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(etc=st.sampled_from(["dir", "link", "missing"]), node=NODES, target=LINK_TARGETS,
       etc_target=LINK_TARGETS)
def test_rewrite_never_leaves_the_root_whatever_the_tree(etc: str, node: str, target: str,
                                                         etc_target: str) -> None:
    with tempfile.TemporaryDirectory() as base:
        outside = os.path.join(base, "outside")
        os.makedirs(outside)
        secret = os.path.join(outside, "secret")
        with open(secret, "wb") as f:
            f.write(VICTIM_TEXT)
        root = os.path.join(base, "root")
        os.makedirs(root)
        etc_dir = os.path.join(root, "etc")
        if etc == "dir":
            os.makedirs(etc_dir)
        elif etc == "link":
            os.symlink(etc_target, etc_dir)
        with open(os.path.join(root, "real"), "wb") as f:
            f.write(b"x")
        if etc == "dir":
            path = os.path.join(etc_dir, "hostname")
            if node == "file":
                with open(path, "wb") as f:
                    f.write(b"old\n")
            elif node == "link":
                os.symlink(target, path)
            elif node == "fifo":
                os.mkfifo(path)
            elif node == "dir":
                os.makedirs(path)
        before = {p: os.lstat(p).st_mtime_ns for p in (outside, secret)}
        try:
            wrote = rootfs.rewrite_regular_file(root, "/etc/hostname", b"new\n")
        except (rootfs.RootfsError, OSError):
            wrote = False
        with open(secret, "rb") as f:
            assert f.read() == VICTIM_TEXT
        assert {p: os.lstat(p).st_mtime_ns for p in before} == before
        if wrote:  # then what it wrote is a regular file inside the root
            found = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names
                     if stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode)]
            assert any(_read(p) == b"new\n" for p in found)
