"""Limits and autostart (issue #13 section 3): the v1/v2 translation as pure functions, and
GET/PATCH .../config on real containers, live in the cgroup and persisted through liblxc."""
from __future__ import annotations

import os
from typing import Any

import pytest

from helperd import cgrouplimits
from helperd.cgrouplimits import V1, V2
from protocol import ops, rules
from protocol.errors import LwpError
from tests.conftest import Tokens, World, make_container, trail

MIB = 1 << 20
V1_HOST = os.path.isdir("/sys/fs/cgroup/memory")
# Whether this kernel accounts swap per cgroup (v1 memsw; a Debian kernel does by default).
HAS_MEMSW = os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")


# -- pure: the one translation table --------------------------------------------------------

def test_translation_table_names_the_v1_and_v2_files() -> None:
    assert {s: (lim.item(V1), lim.item(V2)) for s, lim in cgrouplimits.LIMITS.items()} == {
        "memory_limit": ("memory.limit_in_bytes", "memory.max"),
        "memory_swap_limit": ("memory.memsw.limit_in_bytes", "memory.swap.max"),
        "cpu_weight": ("cpu.shares", "cpu.weight"),
        "cpus": ("cpuset.cpus", "cpuset.cpus")}
    assert cgrouplimits.config_key("memory_limit", V1) == "lxc.cgroup.memory.limit_in_bytes"
    assert cgrouplimits.config_key("memory_limit", V2) == "lxc.cgroup2.memory.max"
    assert cgrouplimits.config_keys("autostart") == ("lxc.start.auto",)


def test_v1_translation_writes_and_reads_back() -> None:
    assert cgrouplimits.cgroup_value("memory_limit", V1, 512 * MIB) == str(512 * MIB)
    assert cgrouplimits.cgroup_value("memory_limit", V1, None) == "-1"
    assert cgrouplimits.cgroup_value("cpu_weight", V1, 100) == "1024"
    assert cgrouplimits.cgroup_value("cpus", V1, None, "0-1") == "0-1"
    limit = cgrouplimits.LIMITS["memory_limit"]
    assert limit.into(V1, "9223372036854771712\n") is None  # v1's "no limit"
    assert limit.into(V1, "536870912\n") == 512 * MIB
    assert limit.into(V1, "512M") == 512 * MIB  # a config line written by hand
    assert cgrouplimits.LIMITS["cpu_weight"].into(V1, "2048\n") == 200


def test_v2_translation_writes_and_reads_back() -> None:
    assert cgrouplimits.cgroup_value("memory_swap_limit", V2, 2 * MIB) == str(2 * MIB)
    assert cgrouplimits.cgroup_value("memory_swap_limit", V2, None) == "max"
    assert cgrouplimits.cgroup_value("cpu_weight", V2, 250) == "250"
    assert cgrouplimits.cgroup_value("cpu_weight", V2, None) == "100"
    assert cgrouplimits.cgroup_value("cpus", V2, None, "0-1") == ""
    assert cgrouplimits.LIMITS["memory_limit"].into(V2, "max\n") is None
    assert cgrouplimits.LIMITS["cpus"].into(V2, "\n") is None


def test_every_cpu_weight_survives_the_v1_shares_round_trip() -> None:
    for weight in range(rules.CPU_WEIGHT_MIN, rules.CPU_WEIGHT_MAX + 1):
        shares = cgrouplimits.weight_to_shares(weight)
        assert shares >= cgrouplimits.V1_SHARES_MIN
        assert cgrouplimits.shares_to_weight(shares) == weight


@pytest.mark.parametrize("text,size", [("1M", MIB), ("2G", 2 << 30), (MIB, MIB),
                                       ("1T", 1 << 40), ("999999999999M", 999999999999 * MIB)])
def test_size_rule_takes_bytes_and_binary_units(text: Any, size: int) -> None:
    assert rules.size(text, "memory_limit") == size


@pytest.mark.parametrize("field,value", [
    ("memory_limit", "512MB"), ("memory_limit", "-1"), ("memory_limit", 1024),
    ("memory_limit", "1048576"), ("memory_limit", "1024K"), ("memory_limit", "1000000000G"),
    ("memory_limit", "0M"), ("memory_limit", 2**61), ("memory_swap_limit", "1.5G"),
    ("cpus", "1-0"), ("cpus", "a"), ("cpus", "0,,1"), ("cpus", "5000"), ("cpus", ""),
    ("cpu_weight", 0), ("cpu_weight", 10001), ("autostart_delay", -1),
    ("autostart_order", 10**6)])
def test_bad_values_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(LwpError) as err:
        ops.SetContainerConfig("web", **{field: value})
    assert err.value.code == "invalid-request" and err.value.message.startswith(field)


def test_wire_decoder_refuses_a_bool_for_a_number_and_a_number_for_cpus() -> None:
    for args in ({"name": "web", "cpu_weight": True}, {"name": "web", "cpus": 3},
                 {"name": "web", "unset": ["color"]}, {"name": "web"},
                 {"name": "web", "cpus": "0", "unset": ["cpus"]}):
        with pytest.raises(LwpError) as err:
            ops.decode_args("set_container_config", args)
        assert err.value.code == "invalid-request"


# -- real containers, through the HTTP chain -------------------------------------------------

CONFIG = "/api/v1/containers/{}/config"


def _cgroup_file(pid: int, item: str) -> str:
    """Read a limit straight from the kernel: the init's own v1 cgroup of that controller."""
    controller = item.partition(".")[0]
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                with open(f"/sys/fs/cgroup/{controllers}{path}/{item}") as g:
                    return g.read().strip()
    raise KeyError(item)


async def _pid(api: Any, headers: dict[str, str], name: str) -> int:
    r = await api.get(f"/api/v1/containers/{name}", headers=headers)
    return int((await r.json())["pid"])


async def _patch(api: Any, headers: dict[str, str], name: str, body: dict[str, Any]) -> Any:
    return await api.patch(CONFIG.format(name), json=body, headers=headers)


async def _get(api: Any, headers: dict[str, str], name: str) -> dict[str, Any]:
    r = await api.get(CONFIG.format(name), headers=headers)
    assert r.status == 200, await r.text()
    result: dict[str, Any] = await r.json()
    return result


@pytest.mark.lxc
async def test_duplicate_keys_keep_every_line_through_a_patch(api: Any, admin: dict[str, str],
                                                              world: World) -> None:
    name = await make_container(api, admin)
    path = os.path.join(world.lxcpath, name, "config")
    with open(path, "a") as f:  # what an admin (or lxc-create -t download) writes
        f.write("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"
                "lxc.mount.entry = tmpfs tmp tmpfs defaults,optional 0 0\n")
    with open(path) as f:
        before = [line for line in f.read().splitlines()
                  if line.startswith(("lxc.mount.entry", "lxc.idmap"))]
    assert len(before) >= 4
    r = await _patch(api, admin, name, {"memory_limit": "64M", "autostart": True})
    assert r.status == 200, await r.text()
    with open(path) as f:
        after = f.read().splitlines()
    assert [line for line in after if line.startswith(("lxc.mount.entry", "lxc.idmap"))] \
        == before
    assert "lxc.start.auto = 1" in after
    assert sum(line.startswith("lxc.cgroup") for line in after) == 1


@pytest.mark.lxc
@pytest.mark.skipif(not V1_HOST, reason="the live checks read cgroup v1 files (this host)")
async def test_limited_container_starts_and_limits_hold_after_patch_and_restart(
        api: Any, admin: dict[str, str]) -> None:
    name = await make_container(api, admin)
    body: dict[str, Any] = {"memory_limit": "64M", "cpu_weight": 200, "cpus": "0"}
    if HAS_MEMSW:  # this kernel has memsw: the swap limit is proven too
        body["memory_swap_limit"] = "128M"
    assert (await _patch(api, admin, name, body)).status == 200
    config = await _get(api, admin, name)
    assert config["source"] == "config" and config["memory_limit"] == 64 * MIB
    r = await api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
    assert r.status == 200, await r.text()  # a memory (and swap) limit does not stop a start
    pid = await _pid(api, admin, name)
    assert _cgroup_file(pid, "memory.limit_in_bytes") == str(64 * MIB)
    assert _cgroup_file(pid, "cpu.shares") == "2048"
    assert _cgroup_file(pid, "cpuset.cpus") == "0"
    if HAS_MEMSW:
        assert _cgroup_file(pid, "memory.memsw.limit_in_bytes") == str(128 * MIB)
    # Live: raised while running (memsw first, then memory, as v1 requires).
    body = {"memory_limit": "200M", "cpus": "0-1"}
    if HAS_MEMSW:
        body["memory_swap_limit"] = "300M"
    assert (await _patch(api, admin, name, body)).status == 200
    assert _cgroup_file(pid, "memory.limit_in_bytes") == str(200 * MIB)
    config = await _get(api, admin, name)
    assert config["source"] == "cgroup" and config["memory_limit"] == 200 * MIB
    assert config["cpu_weight"] == 200
    r = await api.post(f"/api/v1/containers/{name}", json={"action": "restart"}, headers=admin)
    assert r.status == 200, await r.text()
    pid = await _pid(api, admin, name)
    assert _cgroup_file(pid, "memory.limit_in_bytes") == str(200 * MIB)
    assert _cgroup_file(pid, "cpuset.cpus") == "0-1"
    if HAS_MEMSW:
        assert _cgroup_file(pid, "memory.memsw.limit_in_bytes") == str(300 * MIB)
    # null removes, live and in the config.
    remove: dict[str, Any] = {"memory_limit": None, "cpus": None}
    if HAS_MEMSW:
        remove["memory_swap_limit"] = None
    assert (await _patch(api, admin, name, remove)).status == 200
    assert int(_cgroup_file(pid, "memory.limit_in_bytes")) >= cgrouplimits.V1_UNLIMITED
    config = await _get(api, admin, name)
    assert config["memory_limit"] is None
    await api.post(f"/api/v1/containers/{name}", json={"action": "stop"}, headers=admin)
    config = await _get(api, admin, name)
    assert config["source"] == "config" and config["memory_limit"] is None
    assert config["cpus"] is None and config["cpu_weight"] == 200


@pytest.mark.lxc
@pytest.mark.skipif(not V1_HOST, reason="the live checks read cgroup v1 files (this host)")
async def test_refused_live_change_changes_nothing_live_or_on_disk(
        api: Any, admin: dict[str, str], world: World) -> None:
    name = await make_container(api, admin)
    assert (await _patch(api, admin, name, {"memory_limit": "100M"})).status == 200
    await api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
    pid = await _pid(api, admin, name)
    path = os.path.join(world.lxcpath, name, "config")
    with open(path) as f:
        before = f.read()
    # The memory limit would be accepted alone; the CPUs this host lacks are not: neither is set.
    r = await _patch(api, admin, name, {"memory_limit": "150M", "cpus": "0-4000"})
    assert r.status == 409  # well-formed; refused by the container's present state
    assert (await r.json())["error"].startswith("cpus")
    assert _cgroup_file(pid, "memory.limit_in_bytes") == str(100 * MIB)
    with open(path) as f:
        assert f.read() == before
    await api.post(f"/api/v1/containers/{name}", json={"action": "stop"}, headers=admin)


@pytest.mark.lxc
async def test_autostart_shows_in_get_and_null_removes_it(api: Any, admin: dict[str, str],
                                                          world: World) -> None:
    name = await make_container(api, admin)
    body = {"autostart": True, "autostart_delay": 5, "autostart_order": -2}
    # 5.0 is JSON Schema's integer 5 too.
    assert (await _patch(api, admin, name, {**body, "autostart_delay": 5.0})).status == 200
    config = await _get(api, admin, name)
    assert {k: config[k] for k in body} == body
    assert (await _patch(api, admin, name, {"autostart": None,
                                            "autostart_delay": None})).status == 200
    config = await _get(api, admin, name)
    # What is in force: liblxc's defaults once the lines are gone.
    assert config["autostart"] is False and config["autostart_delay"] == 0
    assert config["autostart_order"] == -2
    with open(os.path.join(world.lxcpath, name, "config")) as f:
        text = f.read()
    assert "lxc.start.auto" not in text and "lxc.start.delay" not in text
    assert "lxc.start.order = -2" in text


@pytest.mark.lxc
@pytest.mark.parametrize("body,field", [
    ({"memory_limit": "lots"}, "memory_limit"), ({"cpu_weight": 0}, "cpu_weight"),
    ({"cpu_weight": 1.5}, "cpu_weight"), ({"autostart": "yes"}, "autostart"),
    ({"cpus": "0-"}, "cpus"), ({"autostart_order": True}, "autostart_order"),
    ({"colour": 1}, "'colour'"), ({}, "body")])
async def test_bad_values_are_400_naming_the_field(api: Any, admin: dict[str, str],
                                                   body: dict[str, Any], field: str) -> None:
    r = await _patch(api, admin, "nobody-here", body)
    assert r.status == 400
    assert (await r.json())["error"].startswith(field)


@pytest.mark.lxc
async def test_read_scope_can_get_but_not_patch(api: Any, tokens: Tokens, world: World,
                                                admin: dict[str, str]) -> None:
    name = await make_container(api, admin)
    read = {"private-token": tokens.read}
    assert (await _get(api, read, name))["autostart"] is False
    r = await _patch(api, read, name, {"autostart": True})
    assert r.status == 403
    with pytest.raises(LwpError) as err:  # the helper refuses it too, whatever the frontend
        world.call(ops.SetContainerConfig(name, autostart=True), tokens.read)
    assert err.value.code == "forbidden"
    assert (await _get(api, admin, name))["autostart"] is False


@pytest.mark.lxc
async def test_get_config_of_a_missing_container_is_404(api: Any, admin: dict[str, str]) -> None:
    r = await api.get(CONFIG.format("no-such-one"), headers=admin)
    assert r.status == 404


@pytest.mark.lxc
@pytest.mark.skipif(not V1_HOST, reason="the live checks read cgroup v1 files (this host)")
async def test_memory_limit_below_current_use_is_409_and_changes_nothing(
        api: Any, admin: dict[str, str], world: World) -> None:
    import lxc  # the harness fills the container's memory; product code never imports it here
    name = await make_container(api, admin)
    await api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
    pid = await _pid(api, admin, name)
    # 8 MiB in its tmpfs: shmem the kernel cannot reclaim (this host has no swap).
    c = lxc.Container(name, world.lxcpath)
    assert c.attach_wait(lxc.attach_run_command,
                         ["/bin/sh", "-c", "head -c 8388608 /dev/zero > /dev/shm/fill"]) == 0
    path = os.path.join(world.lxcpath, name, "config")
    with open(path) as f:
        before = f.read()
    limit = _cgroup_file(pid, "memory.limit_in_bytes")
    r = await _patch(api, admin, name, {"memory_limit": "2M", "autostart": True})
    assert r.status == 409, await r.text()
    assert (await r.json())["error"].startswith("memory_limit")
    assert _cgroup_file(pid, "memory.limit_in_bytes") == limit
    with open(path) as f:
        assert f.read() == before  # nor is the autostart given with it saved
    await api.post(f"/api/v1/containers/{name}", json={"action": "stop"}, headers=admin)


@pytest.mark.lxc
async def test_patch_is_audited_start_and_end_with_the_validated_args(
        api: Any, admin: dict[str, str], world: World) -> None:
    name = await make_container(api, admin)
    assert (await _patch(api, admin, name, {"memory_limit": "64M", "cpus": None})).status == 200
    records = [r for r in trail(world) if r.get("op") == "set_container_config"
               and (r.get("args") or {}).get("name") == name]
    assert [r["phase"] for r in records] == ["start", "end"]
    assert records[0]["args"]["memory_limit"] == 64 * MIB  # as validated: bytes
    assert records[0]["args"]["unset"] == ["cpus"]


MEMORY_MOUNT = "/sys/fs/cgroup/memory"


@pytest.mark.lxc
@pytest.mark.security
@pytest.mark.skipif(not V1_HOST, reason="the victim is a cgroup v1 memory cgroup (this host)")
def test_a_fake_monitor_cannot_aim_a_memory_limit_at_another_cgroup(
        world: World, tokens: Tokens) -> None:
    """A local user binds a stopped container's command socket and names a victim's cgroup.
    liblxc's set_cgroup_item believes it is running and asks it (v1: to set the limit; v2:
    for the fd it writes to as root); the helper writes only where a root monitor says."""
    from helperd import monitor
    from tests.test_attack_monitor import remove_cgroup, start_fake
    name = f"t-{os.urandom(5).hex()}"
    world.call(ops.CreateContainer(name, "busybox"))
    rel = f"/lwp-victim-{os.urandom(4).hex()}"
    os.mkdir(MEMORY_MOUNT + rel)
    try:
        fake = start_fake(monitor.socket_name(world.lxcpath, name), 1, rel)
        try:
            with pytest.raises(LwpError) as err:
                world.call(ops.SetContainerConfig(name, memory_limit=4 * MIB), tokens.operate)
        finally:
            fake.stop()
        with open(f"{MEMORY_MOUNT}{rel}/memory.limit_in_bytes") as f:
            assert int(f.read()) >= cgrouplimits.V1_UNLIMITED, "the victim's cgroup was limited"
        assert err.value.code == "invalid-state" and "refusing to act on it" in err.value.message
    finally:
        remove_cgroup(MEMORY_MOUNT + rel)
