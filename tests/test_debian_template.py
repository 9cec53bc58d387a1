"""The debian template for real: a bookworm container made by debootstrap from the configured
mirror, booted with systemd on a veth of the test's own bridge; and its option values, which
only the allow-list (protocol shapes, the host's configured choices) lets through.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from frontend.accesslog import AccessLogger
from frontend.app import make_app
from helperd import templates
from protocol import ops, rules
from tests.conftest import (
    RECORDER,
    World,
    destroy_world,
    make_world,
    new_name,
    write_config,
)
from tests.test_protocol import body_of, exchange, frame, request

pytestmark = pytest.mark.lxc

ADDRESS = "192.0.2.20"  # TEST-NET-1 on a bridge with no uplink: nothing leaves the host
# A cold create runs debootstrap against the mirror (minutes); the frontend waits 1795 s.
CREATE_WAIT = 1700
BOOT_WAIT = 180.0
# What `systemctl is-system-running` answers once boot has finished.
BOOTED = ("running", "degraded")


def _on_bridge(world: World, name: str, bridge: str) -> None:
    """Give the made container a veth on `bridge` with a static address set by liblxc, and
    no DHCP inside (lxc-debian's eth0 is `inet dhcp`: dhclient would wait on a bridge where
    no server answers, and boot would not finish)."""
    config = os.path.join(world.lxcpath, name, "config")
    with open(config) as f:
        text = f.read().replace("lxc.net.0.type = empty\n", "")
    with open(config, "w") as f:
        f.write(text + f"lxc.net.0.type = veth\nlxc.net.0.link = {bridge}\n"
                f"lxc.net.0.flags = up\nlxc.net.0.ipv4.address = {ADDRESS}/24\n")
    with open(os.path.join(world.lxcpath, name, "rootfs", "etc", "network", "interfaces"),
              "w") as f:
        f.write("auto lo\niface lo inet loopback\n")


def _inside(world: World, name: str, *argv: str) -> tuple[int, str]:
    """Run argv in the container through python3-lxc's attach (the test's check only)."""
    import lxc
    c = lxc.Container(name, world.lxcpath)
    with tempfile.TemporaryFile("w+") as out:
        code = c.attach_wait(lxc.attach_run_command, list(argv), stdout=out, stderr=out)
        out.seek(0)
        return code, out.read().strip()


def _comm(pid: int) -> str:
    deadline = time.monotonic() + BOOT_WAIT
    while True:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        if comm == "systemd" or time.monotonic() > deadline:
            return comm
        time.sleep(0.1)


def _system_state(world: World, name: str) -> str:
    deadline = time.monotonic() + BOOT_WAIT
    while True:
        _code, state = _inside(world, name, "systemctl", "is-system-running")
        if state in BOOTED or time.monotonic() > deadline:
            return state
        time.sleep(0.5)




@pytest.mark.timeout(CREATE_WAIT + 300)
async def test_a_bookworm_container_is_made_boots_systemd_on_a_veth_and_is_destroyed(
        privileged_world: World, aiohttp_client: Any, bridge: str) -> None:
    world = privileged_world
    server = TestServer(make_app(world.frontend))
    await server.start_server(access_log_class=AccessLogger)
    api = await aiohttp_client(server)
    admin = {"private-token": world.call(ops.CreateToken(None, "admin", "admin"))["token"]}
    name = new_name()
    began = time.monotonic()
    r = await api.put("/api/v1/containers", json={
        "name": name, "template": "debian", "xargs": ["--release=bookworm"],
        "privileged": True}, headers=admin, timeout=aiohttp.ClientTimeout(total=CREATE_WAIT))
    assert r.status == 200, await r.text()
    created = time.monotonic() - began
    rootfs = os.path.join(world.lxcpath, name, "rootfs")
    # The template wrote the mirror the helper passed into the container's apt sources.
    with open(os.path.join(rootfs, "etc", "apt", "sources.list")) as f:
        assert f"{templates.host_mirror('bookworm')} bookworm main" in f.read()
    _on_bridge(world, name, bridge)

    began = time.monotonic()
    r = await api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
    assert r.status == 200, await r.text()
    info = await (await api.get(f"/api/v1/containers/{name}", headers=admin)).json()
    # systemd is the container's PID 1: run as /sbin/init, it names itself soon after.
    assert _comm(info["pid"]) == "systemd"
    state = _system_state(world, name)
    booted = time.monotonic() - began
    assert state in BOOTED, state
    if state != "running":
        failed = _inside(world, name, "systemctl", "--failed", "--no-legend")[1]
        pytest.fail(f"systemd booted degraded; failed units: {failed}")
    info = await (await api.get(f"/api/v1/containers/{name}", headers=admin)).json()
    assert (info["state"], info["ip"], info["link"]) == ("RUNNING", ADDRESS, bridge)
    print(f"\ndebian create {created:.1f} s, start to systemd running {booted:.1f} s")

    r = await api.post(f"/api/v1/containers/{name}", json={"action": "stop"}, headers=admin)
    assert r.status == 200, await r.text()
    r = await api.delete(f"/api/v1/containers/{name}", headers=admin)
    assert r.status == 200, await r.text()
    assert name not in world.container_dirs()
    assert not os.listdir(f"/sys/class/net/{bridge}/brif")  # the veth went with it
    listing = await (await api.get("/api/v1/containers", headers=admin)).json()
    assert name not in str(listing)


# -- values outside the allow-list: 400, naming the option and what is allowed -------------

REFUSED = [
    # (xargs, words the error must contain)
    (["--release=sid"], ["--release", "bookworm"]),  # a codename, but not this host's
    (["--release=../../etc"], ["--release", "codename"]),
    (["--arch=arm64"], ["--arch", templates.host_arch()]),  # not the host's architecture
    (["--packages=curl,Bad_Name"], ["--packages", "Bad_Name"]),
    (["--packages=" + ",".join(f"p{i}" for i in range(rules.MAX_PACKAGES + 1))],
     ["--packages", f"at most {rules.MAX_PACKAGES}"]),
    (["--mirror=http://192.0.2.1/debian"], ["--mirror", "server"]),
    (["--mi=http://192.0.2.1/debian"], ["--mi", "server"]),  # getopt's prefix of --mirror
    (["--m", "http://192.0.2.1/debian"], ["--m", "server"]),
    (["--auth-key=/etc/shadow"], ["--auth-key", "--release"]),  # copies a host file in
    (["--keyring=/tmp/k.gpg"], ["--keyring", "--release"]),
    (["--security-mirror=http://192.0.2.1/x"], ["--security-mirror", "--release"]),
]


@pytest.mark.security
@pytest.mark.parametrize("xargs,named", REFUSED)
async def test_a_debian_value_outside_the_allow_list_is_400_and_nothing_is_made(
        api: Any, admin: dict[str, str], world: World, xargs: list[str],
        named: list[str]) -> None:
    before = world.container_dirs()
    name = new_name()
    r = await api.put("/api/v1/containers", json={
        "name": name, "template": "debian", "xargs": xargs}, headers=admin)
    assert r.status == 400, await r.text()
    message = await r.text()
    assert all(word in message for word in named), message
    assert world.container_dirs() == before


@pytest.mark.security
@pytest.mark.parametrize("xargs", [["--mi=http://192.0.2.1/debian"], ["--release=x/y"],
                                   ["--packages=a;b"], ["--auth-key=/etc/shadow"]])
def test_the_helper_itself_refuses_debian_values_outside_their_shapes(
        world: World, xargs: list[str]) -> None:
    # Straight to the socket, as a compromised frontend would send it.
    data = frame(body_of(request(op="create_container", args={
        "name": new_name(), "template": "debian", "xargs": xargs})))
    reply = exchange(world, data)
    assert b"invalid-request" in reply and b"xargs" in reply, reply


def _recording_debian(mirror: str) -> World:
    """A world configured with `mirror` whose lxc-debian only records its arguments."""
    w = make_world()
    # lxc-debian refuses user namespaces: the container is privileged, as asked below.
    write_config(w.base, helperd=f'debian_mirror = "{mirror}"\nallow_privileged = true')
    path = os.path.join(w.base, "templates", "lxc-debian")
    os.unlink(path)
    with open(path, "w") as f:
        f.write(RECORDER)
    os.chmod(path, 0o755)
    return w


@pytest.mark.security
def test_the_helper_passes_its_configured_mirror_last() -> None:
    mirror = "http://192.0.2.7:3142/debian"
    w = _recording_debian(mirror)
    w.start_helper()
    try:
        name = new_name()
        assert w.call(ops.CreateContainer(name, "debian", None, (
            "--release=bookworm", "--packages=curl,iproute2"), privileged=True)) == {}
        with open(os.path.join(w.lxcpath, name, "template-args")) as f:
            args = f.read().split()
        # After liblxc's own and the client's: templates keep the last value they are given.
        assert args[-3:] == ["--release=bookworm", "--packages=curl,iproute2",
                             f"--mirror={mirror}"]
        assert sum(a.startswith("--mirror") for a in args) == 1
    finally:
        destroy_world(w)


def _load(tmp_path: Any, helperd: str, tables: str = "") -> Any:
    from helperd import config
    path = os.path.join(str(tmp_path), "lwp.toml")
    with open(path, "w") as f:
        f.write(f'[helperd]\nsocket_group = "nogroup"\nallowed_users = []\n{helperd}\n{tables}\n')
    return config.load(path)


@pytest.mark.security
@pytest.mark.parametrize("tables,named", [
    ('[helperd.template_options]\ndebian = ["release", "mirror"]', "mirror"),
    ('[helperd.template_options]\ndebian = ["mirr"]', "mirr"),  # getopt's prefix of --mirror
    ('[helperd.template_options]\ndebian = ["auth-key"]', "auth-key"),  # reads a host file
    ('[helperd.template_values.debian]\nrelease = ["../sid"]', "../sid"),
    ('[helperd.template_values.debian]\nmirror = ["http://x"]', "mirror"),
    ('[helperd.template_values.busybox]\nrelease = ["x"]', "busybox"),
])
def test_a_configuration_cannot_open_the_debian_allow_list(tmp_path: Any, tables: str,
                                                          named: str) -> None:
    from helperd import config
    with pytest.raises(config.ConfigError) as caught:
        _load(tmp_path, "", tables)
    assert named in str(caught.value)


@pytest.mark.parametrize("mirror", ["file:///etc", "http://x/d ebian", "http://x/$(id)",
                                    "ftp://deb.debian.org/debian"])
def test_a_debian_mirror_that_is_not_a_plain_http_url_is_a_configuration_error(
        tmp_path: Any, mirror: str) -> None:
    from helperd import config
    with pytest.raises(config.ConfigError) as caught:
        _load(tmp_path, f'debian_mirror = "{mirror}"')
    assert "debian_mirror" in str(caught.value)


def test_debian_defaults_are_bookworm_the_hosts_arch_and_its_apt_mirror(tmp_path: Any) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.template_values["debian"] == {"release": frozenset({"bookworm"}),
                                             "arch": frozenset({templates.host_arch()})}
    assert cfg.helper_options["debian"] == (("mirror", templates.host_mirror("bookworm")),)
    assert set(dict(cfg.helper_options["debian"])) == rules.HELPER_OPTIONS["debian"]
