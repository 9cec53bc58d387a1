"""The helper on real liblxc: its own cgroups, concurrency, serialisation, network fields."""
from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tests.conftest import World, make_container, new_name

pytestmark = pytest.mark.lxc


def _cgroups(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read()


async def test_starting_containers_leaves_the_helpers_cgroups_unchanged(
        api: Any, admin: dict[str, str], world: World) -> None:
    assert world.process is not None
    before = _cgroups(world.process.pid)
    for _ in range(2):
        name = await make_container(api, admin, start=True)
        r = await api.post(f"/api/v1/containers/{name}", json={"action": "restart"},
                           headers=admin)
        assert r.status == 200
    assert _cgroups(world.process.pid) == before
    assert "lxc.monitor" not in before and "lxc.payload" not in before


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids.update(int(k) for k in f.read().split())
    return kids


def _pgid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[2])


async def test_one_warm_worker_starts_containers_and_returns_to_the_helpers_cgroups(
        api: Any, admin: dict[str, str], world: World) -> None:
    assert world.process is not None
    helper = world.process.pid
    name = await make_container(api, admin)
    workers = _children(helper)
    assert workers, "the helper keeps spare workers"
    # (No freeze here: under a loaded machine liblxc's freeze can outlast the test world's
    # 5 s deadline, and a missed deadline rightly retires the worker.)
    for action in ("start", "restart", "stop", "start"):
        r = await api.post(f"/api/v1/containers/{name}", json={"action": action}, headers=admin)
        assert r.status == 200, await r.text()
    # The same workers did all of it (none was retired), each back in the helper's cgroups,
    # and the container's monitor is in no worker's process group (a timeout kills that).
    assert _children(helper) == workers
    assert all(_cgroups(w) == _cgroups(helper) for w in workers)
    monitors = _monitors(name)
    assert monitors and _pgid(monitors[0]) not in workers


def _monitors(name: str) -> list[int]:
    """The pids of the container's `[lxc monitor]` process (one while it runs)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue  # gone meanwhile
        if cmdline.startswith(b"[lxc monitor]") and name.encode() in cmdline:
            found.append(int(pid))
    return found


async def test_container_monitor_does_not_inherit_the_helpers_sockets(
        api: Any, admin: dict[str, str], world: World) -> None:
    assert world.process is not None

    def sockets(pid: int) -> set[str]:
        fds = f"/proc/{pid}/fd"
        links = set()
        for fd in os.listdir(fds):
            try:
                links.add(os.readlink(os.path.join(fds, fd)))
            except OSError:
                continue
        return {link for link in links if link.startswith("socket:")}

    name = await make_container(api, admin, start=True)
    monitors = _monitors(name)
    assert monitors, "the container's monitor process was not found"
    assert not sockets(monitors[0]) & sockets(world.process.pid)


async def test_a_slow_create_does_not_delay_list_info_or_start_of_others(
        api: Any, admin: dict[str, str]) -> None:
    other = await make_container(api, admin)
    slow = asyncio.ensure_future(api.put("/api/v1/containers", json={
        "name": new_name(), "template": "slow"}, headers=admin))  # the template sleeps 3 s
    await asyncio.sleep(0.3)
    assert not slow.done()
    for method, path, body in (("GET", "/api/v1/containers", None),
                               ("GET", f"/api/v1/containers/{other}", None),
                               ("POST", f"/api/v1/containers/{other}", {"action": "start"})):
        r = await api.request(method, path, json=body, headers=admin)
        assert r.status == 200, await r.text()
        assert not slow.done(), f"{method} {path} waited for the slow create"
    assert (await slow).status == 200


async def test_two_mutations_of_one_container_are_serialised(api: Any,
                                                             admin: dict[str, str]) -> None:
    name = await make_container(api, admin)
    replies = await asyncio.gather(*(
        api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
        for _ in range(4)))
    assert sorted(r.status for r in replies) == [200, 409, 409, 409]


async def test_concurrent_creates_of_one_name_make_one_container(api: Any, admin: dict[str, str],
                                                                 world: World) -> None:
    name = new_name()
    replies = await asyncio.gather(*(
        api.put("/api/v1/containers", json={"name": name, "template": "busybox"}, headers=admin)
        for _ in range(3)))
    assert sorted(r.status for r in replies) == [200, 409, 409]
    assert name in world.container_dirs()


async def test_network_fields_of_a_container_on_a_veth(api: Any, admin: dict[str, str],
                                                       world: World, bridge: str) -> None:
    name = await make_container(api, admin)
    config = os.path.join(world.lxcpath, name, "config")
    with open(config) as f:
        text = f.read().replace("lxc.net.0.type = empty\n", "")
    with open(config, "w") as f:
        f.write(text + f"lxc.net.0.type = veth\nlxc.net.0.link = {bridge}\n"
                "lxc.net.0.flags = up\nlxc.net.0.ipv4.address = 192.0.2.10/24\n")
    # busybox's rcS runs udhcpc, which would drop the static address and send DHCP requests.
    with open(os.path.join(world.lxcpath, name, "rootfs", "etc", "init.d", "rcS"), "w") as f:
        f.write("#!/bin/sh\n/bin/mount -a\n")
    r = await api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
    assert r.status == 200, await r.text()
    r = await api.get(f"/api/v1/containers/{name}", headers=admin)
    info = await r.json()
    assert info["link"] == bridge
    assert info["ip"] == "192.0.2.10"
    # The host side of the veth pair is the bridge's only port.
    ports = os.listdir(f"/sys/class/net/{bridge}/brif")
    assert len(ports) == 1
    from frontend.present import size

    def counter(direction: str) -> int:
        with open(f"/sys/class/net/{ports[0]}/statistics/{direction}") as f:
            return int(f.read())
    # Seen from the container: it receives what the host side transmits, and vice versa.
    # (The kernel may emit a router solicitation meanwhile, so compare within one read.)
    host_tx, host_rx = counter("tx_bytes"), counter("rx_bytes")
    r = await api.get(f"/api/v1/containers/{name}", headers=admin)
    info = await r.json()
    assert info["rx_bytes"] == size(host_tx) or counter("tx_bytes") != host_tx
    assert info["tx_bytes"] == size(host_rx) or counter("rx_bytes") != host_rx
    assert info["total_bytes"] in (size(host_tx + host_rx),
                                   size(counter("tx_bytes") + counter("rx_bytes")))


def test_sigterm_lets_a_create_under_way_finish() -> None:
    import signal
    import threading

    from protocol import ops
    from tests.conftest import destroy_world, make_world
    w = make_world()
    w.start_helper()
    try:
        assert w.process is not None
        name = new_name()
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(
            w.call(ops.CreateContainer(name, "slow"))))  # the template sleeps 3 s
        worker.start()
        deadline = 50
        while not os.path.exists(os.path.join(w.lxcpath, name)) and deadline:
            deadline -= 1
            threading.Event().wait(0.1)
        w.process.send_signal(signal.SIGTERM)
        worker.join(30)
        assert outcome == [{}]  # the reply came, after the template finished
        assert w.process.wait(30) == 0
        assert os.path.isfile(os.path.join(w.lxcpath, name, "config"))
    finally:
        destroy_world(w)
