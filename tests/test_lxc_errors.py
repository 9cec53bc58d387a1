"""A failed liblxc call says why: its own error lines reach the client, the trail and the log."""
from __future__ import annotations

import os
import subprocess

import pytest

from helperd import lxclog
from protocol import ops
from protocol.errors import LwpError
from tests.conftest import World, new_name

pytestmark = pytest.mark.lxc


def _config_lines(world: World, name: str) -> list[str]:
    with open(os.path.join(world.lxcpath, name, "config")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def _break_bridge(world: World, name: str) -> None:
    """The new user's case: a veth on a bridge that is not there."""
    lines = [line for line in _config_lines(world, name) if not line.startswith("lxc.net.")]
    with open(os.path.join(world.lxcpath, name, "config"), "w") as f:
        f.write("\n".join(lines + ["lxc.net.0.type = veth", "lxc.net.0.link = lwpnobr0"]) + "\n")


def test_a_start_liblxc_refuses_names_the_cause_in_the_error_trail_and_log(world: World) -> None:
    name = new_name()
    world.call(ops.CreateContainer(name, "busybox"))
    _break_bridge(world, name)
    with pytest.raises(LwpError) as failed:
        world.call(ops.StartContainer(name))
    assert failed.value.code == "operation-failed"
    assert 'to bridge "lwpnobr0", bridge interface doesn\'t exist' in failed.value.message
    records = world.call(ops.QueryAudit(container=name, op="start_container"))["records"]
    assert 'bridge "lwpnobr0"' in records[-1]["error"]
    with open(world.log) as f:
        assert any('bridge "lwpnobr0"' in line for line in f)


def test_creates_and_clones_log_to_their_own_file_never_to_a_workers_output(
        world: World) -> None:
    name, clone = new_name(), new_name()
    world.call(ops.CreateContainer(name, "busybox"))
    world.call(ops.CloneContainer(clone, name))
    for each in (name, clone):
        logs = [line for line in _config_lines(world, each) if line.startswith("lxc.log.")]
        assert sorted(logs) == [f"lxc.log.file = {world.lxcpath}/{each}/lxc.log",
                                "lxc.log.level = ERROR"], logs


def test_the_log_lxc_start_writes_for_a_unit_started_container_names_the_cause(
        world: World) -> None:
    """lxc@NAME.service runs `lxc-start -F -n NAME`: its errors land in the container's own
    log, where the helper reads why a unit start failed (systemd itself runs in deb-test)."""
    name = new_name()
    world.call(ops.CreateContainer(name, "busybox"))
    _break_bridge(world, name)
    done = subprocess.run(["lxc-start", "-F", "-P", world.lxcpath, "-n", name],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    causes = lxclog.read_causes(lxclog.container_log(world.lxcpath, name))
    assert any('bridge "lwpnobr0", bridge interface doesn\'t exist' in c for c in causes), causes
