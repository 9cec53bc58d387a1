"""Unprivileged by default (issue #13): new containers are id-mapped into the configured range,
root in them is an unmapped uid on the host; privileged ones only where configured, for admins.
"""
from __future__ import annotations

import os
import time
from typing import Any

import pytest

from helperd import config, idmap
from protocol import ops
from protocol.config import ConfigError
from protocol.errors import LwpError
from tests.conftest import World, configure, destroy_world, make_container, make_world, new_name

pytestmark = pytest.mark.lxc


def _range(world: World) -> idmap.IdMap:
    return config.load(world.config).idmap


def _idmap_lines(world: World, name: str) -> list[str]:
    with open(os.path.join(world.lxcpath, name, "config")) as f:
        return [line.split("=", 1)[1].strip() for line in f
                if line.split("=", 1)[0].strip() == "lxc.idmap"]


def _owner(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _host_ids(pid: int) -> tuple[list[int], list[int]]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return [int(v) for v in fields["Uid"].split()], [int(v) for v in fields["Gid"].split()]


async def test_a_new_container_is_id_mapped_and_its_rootfs_owned_by_the_ranges_start(
        api: Any, admin: dict[str, str], world: World) -> None:
    mapping = _range(world)
    began = time.monotonic()
    name = await make_container(api, admin)
    print(f"\nunprivileged busybox create {time.monotonic() - began:.2f} s")
    assert _idmap_lines(world, name) == mapping.lines()
    rootfs = os.path.join(world.lxcpath, name, "rootfs")
    assert _owner(rootfs) == (mapping.uid.start, mapping.gid.start)
    assert _owner(os.path.join(rootfs, "bin", "busybox")) == (mapping.uid.start,
                                                              mapping.gid.start)
    info = await (await api.get(f"/api/v1/containers/{name}", headers=admin)).json()
    assert info["privileged"] is False


async def test_an_unprivileged_container_starts_and_its_init_is_the_ranges_start_on_the_host(
        api: Any, admin: dict[str, str], world: World) -> None:
    mapping = _range(world)
    name = await make_container(api, admin)
    began = time.monotonic()
    r = await api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
    assert r.status == 200, await r.text()
    print(f"\nunprivileged busybox start {time.monotonic() - began:.2f} s")
    info = await (await api.get(f"/api/v1/containers/{name}", headers=admin)).json()
    assert info["state"] == "RUNNING" and info["privileged"] is False
    uids, gids = _host_ids(int(info["pid"]))
    assert uids == [mapping.uid.start] * 4 and gids == [mapping.gid.start] * 4
    r = await api.delete(f"/api/v1/containers/{name}?force=true", headers=admin)
    assert r.status == 200, await r.text()


@pytest.mark.security
async def test_privileged_on_create_is_400_by_default_and_nothing_is_made(
        api: Any, admin: dict[str, str], world: World) -> None:
    name = new_name()
    r = await api.put("/api/v1/containers", json={"name": name, "template": "busybox",
                                                  "privileged": True}, headers=admin)
    assert r.status == 400
    body = await r.json()
    assert "allow_privileged" in body["error"], body
    assert name not in world.container_dirs()


@pytest.mark.security
def test_the_helper_itself_refuses_privileged_by_default(world: World) -> None:
    """A frontend sending the raw request gets the same refusal: the helper decides."""
    name = new_name()
    with pytest.raises(LwpError) as refused:
        world.call(ops.CreateContainer(name, "busybox", privileged=True))
    assert refused.value.code == "invalid-request" and "allow_privileged" in str(refused.value)
    assert name not in world.container_dirs()


@pytest.mark.parametrize("body", [{"privileged": "yes"}, {"privileged": 1},
                                  {"privileged": [True]}])
async def test_privileged_must_be_a_boolean(api: Any, admin: dict[str, str],
                                            body: dict[str, Any]) -> None:
    r = await api.put("/api/v1/containers", json={"name": new_name(), "template": "busybox",
                                                  **body}, headers=admin)
    assert r.status == 400
    assert (await r.json())["error"].startswith("privileged"), await r.text()


async def test_privileged_with_a_clone_is_400_the_clone_keeps_its_sources_map(
        api: Any, admin: dict[str, str]) -> None:
    r = await api.put("/api/v1/containers", json={"name": new_name(), "clone": "t-whatever",
                                                  "privileged": True}, headers=admin)
    assert r.status == 400
    assert "source's id map" in (await r.json())["error"]


async def test_a_clone_keeps_its_sources_mapping_and_hostname_ownership(
        api: Any, admin: dict[str, str], world: World) -> None:
    mapping = _range(world)
    source = await make_container(api, admin)
    hostname = os.path.join(world.lxcpath, source, "rootfs", "etc", "hostname")
    with open(hostname, "w") as f:  # busybox makes none: one owned by the mapped root
        f.write(source + "\n")
    os.chown(hostname, mapping.uid.start, mapping.gid.start)
    clone = new_name()
    r = await api.put("/api/v1/containers", json={"name": clone, "clone": source},
                      headers=admin)
    assert r.status == 200, await r.text()
    assert _idmap_lines(world, clone) == mapping.lines()
    rootfs = os.path.join(world.lxcpath, clone, "rootfs")
    assert _owner(rootfs) == (mapping.uid.start, mapping.gid.start)
    copied = os.path.join(rootfs, "etc", "hostname")
    with open(copied) as f:
        assert f.read() == clone + "\n"
    assert _owner(copied) == (mapping.uid.start, mapping.gid.start)
    info = await (await api.get(f"/api/v1/containers/{clone}", headers=admin)).json()
    assert info["privileged"] is False
    r = await api.post(f"/api/v1/containers/{clone}", json={"action": "start"}, headers=admin)
    assert r.status == 200, await r.text()
    info = await (await api.get(f"/api/v1/containers/{clone}", headers=admin)).json()
    assert _host_ids(int(info["pid"]))[0][0] == mapping.uid.start




@pytest.mark.security
def test_privileged_is_made_for_an_admin_where_configured_and_its_clone_stays_so(
        privileged_world: World) -> None:
    w = privileged_world
    admin = w.call(ops.CreateToken(None, "admin", "admin"))["token"]
    operate = w.call(ops.CreateToken(None, "operate", "operate"))["token"]
    name = new_name()
    with pytest.raises(LwpError) as refused:
        w.call(ops.CreateContainer(name, "busybox", privileged=True), token=operate)
    assert refused.value.code == "forbidden"
    assert w.call(ops.CreateContainer(name, "busybox", privileged=True), token=admin) == {}
    assert _idmap_lines(w, name) == []
    assert _owner(os.path.join(w.lxcpath, name, "rootfs")) == (0, 0)
    assert w.call(ops.ContainerInfo(name), token=admin)["privileged"] is True
    clone = new_name()
    assert w.call(ops.CloneContainer(clone, name), token=admin) == {}
    assert _idmap_lines(w, clone) == []
    assert w.call(ops.ContainerInfo(clone), token=admin)["privileged"] is True
    # Without asking, the same host still makes unprivileged ones.
    plain = new_name()
    assert w.call(ops.CreateContainer(plain, "busybox"), token=admin) == {}
    assert _idmap_lines(w, plain) == _range(w).lines()


@pytest.mark.security
def test_an_admin_token_limited_to_containers_cannot_make_a_privileged_one(
        privileged_world: World) -> None:
    w = privileged_world
    limited = w.call(ops.CreateToken(None, "web admin", "admin", containers=("web-*",)))
    name = "web-" + new_name()
    with pytest.raises(LwpError) as refused:
        w.call(ops.CreateContainer(name, "busybox", privileged=True), token=limited["token"])
    assert refused.value.code == "forbidden"
    assert name not in w.container_dirs()
    # Inside its patterns an unprivileged create is still its to make.
    assert w.call(ops.CreateContainer(name, "busybox"), token=limited["token"]) == {}


def test_a_template_that_refuses_user_namespaces_is_400_naming_privileged(
        world: World) -> None:
    name = new_name()
    with pytest.raises(LwpError) as refused:
        world.call(ops.CreateContainer(name, "debian", None, ("--release=bookworm",)))
    assert refused.value.code == "invalid-request" and "privileged" in str(refused.value)
    assert name not in world.container_dirs()


# -- the range: configured, root's from /etc/subuid and /etc/subgid, or the default --------------

def _file(tmp_path: Any, text: str) -> str:
    path = os.path.join(tmp_path, "subuid")
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_roots_first_range_is_taken_from_a_subordinate_id_file(tmp_path: Any) -> None:
    path = _file(tmp_path, "# comment\n\nalice:165536:65536\nroot:231072:65536\n"
                           "root:400000:65536\n")
    assert idmap.roots_range(path) == idmap.IdRange(231072, 65536)
    assert idmap.roots_range(_file(tmp_path, "alice:165536:65536\n")) is None
    assert idmap.roots_range(os.path.join(tmp_path, "absent")) is None


@pytest.mark.security
@pytest.mark.parametrize("text", [
    "root:100000\n", "root:100000:65536:1\n", "root:1e5:65536\n", "root: 100000:65536\n",
    "root:100000:-1\n", ":100000:65536\n", "root:0:65536\n",  # root in the container is root
    "root:1000:65536\n",  # over the host's users
    "root:4294960000:65536\n",  # past the last id
    "root:100000:0\n", "root:１00000:65536\n",  # a non-ASCII digit
])
def test_a_malformed_or_unsafe_subordinate_id_line_is_refused(tmp_path: Any,
                                                               text: str) -> None:
    with pytest.raises(ConfigError):
        idmap.roots_range(_file(tmp_path, text))


def test_another_users_unusable_range_is_not_roots_business(tmp_path: Any) -> None:
    assert idmap.roots_range(_file(tmp_path, "bob:1000:10\nroot:100000:65536\n")) \
        == idmap.IdRange(100000, 65536)


@pytest.mark.security
@pytest.mark.parametrize("value", ["0 65536", "100000", "100000  65536", "1000 65536",
                                   "100000 0", "x 65536", "100000 65536 1"])
def test_a_configured_range_is_checked_as_strictly(value: str) -> None:
    with pytest.raises(ConfigError):
        idmap.parse_setting(value)


def test_a_configured_range_wins_and_maps_both_kinds(tmp_path: Any) -> None:
    w = make_world()
    try:
        configure(w, idmap="300000 65536")
        mapping = config.load(w.config).idmap
        assert mapping.lines() == ["u 0 300000 65536", "g 0 300000 65536"]
        assert mapping.source == "helperd.idmap"
        assert config.load(w.config).allow_privileged is False
    finally:
        destroy_world(w)


def test_an_lxcpath_others_cannot_search_is_a_problem_the_doctor_names(
        fresh_world: World) -> None:
    """Proven on the real thing: such a container does not start, and the doctor says why."""
    from helperd import doctor
    w = fresh_world
    os.chmod(w.lxcpath, 0o700)
    found = {f["check"]: f for f in doctor.report(config.load(w.config))}
    assert found["lxcpath"]["status"] == "problem" and w.lxcpath in found["lxcpath"]["fix"]
    w.start_helper()
    name = new_name()
    assert w.call(ops.CreateContainer(name, "busybox")) == {}
    with pytest.raises(LwpError) as failed:
        w.call(ops.StartContainer(name))
    assert failed.value.code == "operation-failed"
    os.chmod(w.lxcpath, 0o755)
    found = {f["check"]: f for f in doctor.report(config.load(w.config))}
    assert found["lxcpath"]["status"] == "ok"
    assert w.call(ops.StartContainer(name)) == {}


def test_the_doctor_reports_the_range_in_use_against_the_subordinate_id_files(
        fresh_world: World) -> None:
    from helperd import doctor
    configure(fresh_world, idmap="300000 65536", allow_privileged=True)
    found = {f["check"]: f for f in doctor.report(config.load(fresh_world.config))}
    for path in ("/etc/subuid", "/etc/subgid"):
        assert "300000-365535 (from helperd.idmap)" in found[path]["detail"]
    assert found["privileged containers"]["status"] == "warning"


@pytest.mark.parametrize(("ranges", "status"), [
    ([("root", idmap.IdRange(100000, 65536))], "ok"),
    ([("root", idmap.IdRange(200000, 65536))], "warning"),  # root has another range
    ([], "warning"),  # not recorded: usermod would hand it to the next user added
    ([("root", idmap.IdRange(100000, 65536)), ("alice", idmap.IdRange(165000, 65536))],
     "problem"),  # alice's user namespaces would share ids with the containers
])
def test_the_range_in_use_is_checked_against_roots_and_everyone_elses(
        ranges: list[tuple[str, idmap.IdRange | None]], status: str) -> None:
    from helperd import doctor
    finding = doctor._id_finding("/etc/subuid", idmap.IdRange(100000, 65536), "x", ranges)
    assert finding.status == status, finding
    assert status == "ok" or "100000-165535" in finding.fix
