"""A failed liblxc call says why: its own error lines reach the client, the trail and the log."""
from __future__ import annotations

import os

import pytest

from protocol import ops
from protocol.errors import LwpError
from tests.conftest import World, new_name

pytestmark = pytest.mark.lxc


def _config_lines(world: World, name: str) -> list[str]:
    with open(os.path.join(world.lxcpath, name, "config")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_a_start_liblxc_refuses_names_the_cause_in_the_error_trail_and_log(world: World) -> None:
    name = new_name()
    world.call(ops.CreateContainer(name, "busybox"))
    config = os.path.join(world.lxcpath, name, "config")
    lines = [line for line in _config_lines(world, name) if not line.startswith("lxc.net.")]
    with open(config, "w") as f:  # the new user's case: a bridge that is not there
        f.write("\n".join(lines + ["lxc.net.0.type = veth", "lxc.net.0.link = lwpnobr0"]) + "\n")
    with pytest.raises(LwpError) as failed:
        world.call(ops.StartContainer(name))
    assert failed.value.code == "operation-failed"
    assert 'to bridge "lwpnobr0", bridge interface doesn\'t exist' in failed.value.message
    records = world.call(ops.QueryAudit(container=name, op="start_container"))["records"]
    assert 'bridge "lwpnobr0"' in records[-1]["error"]
    with open(world.log) as f:
        assert any('bridge "lwpnobr0"' in line for line in f)


def test_creates_and_clones_keep_no_log_settings_in_their_config(world: World) -> None:
    name, clone = new_name(), new_name()
    world.call(ops.CreateContainer(name, "busybox"))
    world.call(ops.CloneContainer(clone, name))
    for each in (name, clone):
        assert not [line for line in _config_lines(world, each) if line.startswith("lxc.log.")]
