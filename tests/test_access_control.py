"""Who may do what: anonymous clients, scopes, peers of the helper socket, hostile input."""
from __future__ import annotations

import os
import socket
import struct
from typing import Any

import pytest

from protocol import framing, ops
from protocol.errors import LwpError
from tests.conftest import Tokens, World, as_user, make_container, new_name

pytestmark = pytest.mark.lxc

PATHS = ["/api", "/api/", "/api/v1", "/api/v1/containers", "/api/v1/containers/",
         "/api/v1/containers/base", "/api/v1/containers/base/", "/api/v1/tokens",
         "/api/v1/tokens/abc", "/api/v1/nope", "/api/v2/containers", "/api/v1/audit",
         "/api/v1/containers/a/b/c"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
HOSTILE_NAMES = ["../x", "..", ".", "-n", "a;b", "a\nb", "a b", "é", "a/b", "x" * 65, "",
                 "--rootfs=/tmp"]


@pytest.mark.parametrize("method", METHODS)
async def test_every_api_path_and_method_is_401_without_a_token(api: Any, method: str) -> None:
    for path in PATHS:
        r = await api.request(method, path)
        assert r.status == 401, (method, path)
        if method != "HEAD":
            assert (await r.json())["code"] == "unauthorized"


async def test_read_token_cannot_act(api: Any, tokens: Tokens) -> None:
    admin = {"private-token": tokens.admin}
    name = await make_container(api, admin)
    r = await api.post(f"/api/v1/containers/{name}", json={"action": "start"},
                       headers={"private-token": tokens.read})
    assert r.status == 403
    r = await api.get(f"/api/v1/containers/{name}", headers={"private-token": tokens.read})
    assert (await r.json())["state"] == "STOPPED"


async def test_operate_token_cannot_create_clone_or_destroy(api: Any, tokens: Tokens,
                                                           world: World) -> None:
    operate = {"private-token": tokens.operate}
    name = await make_container(api, {"private-token": tokens.admin})
    before = world.container_dirs()
    for r in (await api.put("/api/v1/containers", json={"name": new_name(), "template": "busybox"},
                            headers=operate),
              await api.put("/api/v1/containers", json={"name": new_name(), "clone": name},
                            headers=operate),
              await api.delete(f"/api/v1/containers/{name}", headers=operate)):
        assert r.status == 403
    assert world.container_dirs() == before


def test_helper_rechecks_scope_whatever_the_frontend_did(world: World, tokens: Tokens) -> None:
    with pytest.raises(LwpError) as err:
        world.call(ops.CreateContainer(new_name(), "busybox"), token=tokens.operate)
    assert err.value.code == "forbidden"
    with pytest.raises(LwpError) as err:
        world.call(ops.CreateToken(None, "escalate", "admin"), token=tokens.operate)
    assert err.value.code == "forbidden"


def test_helper_refuses_requests_with_an_unknown_token(world: World) -> None:
    with pytest.raises(LwpError) as err:
        world.call(ops.ListContainers(), token="forged-token-0000000000")
    assert err.value.code == "unauthorized"


def _connect_as_nobody(path: str) -> bytes:
    """Connect to the helper as `nobody`; say how far it got and what it was sent."""
    def attempt() -> bytes:
        said = b""
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(path)
            said += b"connected;"
            s.sendall(framing.encode_frame(ops.encode_request(
                ops.Envelope("nobody-1", None, "local", ops.ListContainers()))))
            return said + b"reply:" + s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            return said + b"reset"
        except OSError as exc:
            return said + f"error:{exc.errno}".encode()
    return as_user("nobody", attempt)


def test_a_uid_that_is_not_allowed_is_refused_and_logged(world: World) -> None:
    # The test world's socket group is nogroup, so nobody reaches the socket: the refusal
    # must come from the helper's SO_PEERCRED check.
    # Hung up on without a reply: a clean EOF, or a reset since the request went unread.
    assert _connect_as_nobody(world.socket) in (b"connected;reply:", b"connected;reset")
    with open(world.log) as f:
        assert "refused connection from uid 65534" in f.read()


def test_socket_is_0660_in_a_0750_directory(world: World) -> None:
    assert os.stat(world.socket).st_mode & 0o777 == 0o660
    assert os.stat(os.path.dirname(world.socket)).st_mode & 0o777 == 0o750


def _tree(path: str) -> set[str]:
    return {os.path.join(d, n) for d, dirs, files in os.walk(path) for n in dirs + files}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_hostile_name_is_400_and_nothing_is_created(api: Any, admin: dict[str, str],
                                                          world: World, name: str) -> None:
    before = _tree(world.base)
    r = await api.put("/api/v1/containers", json={"name": name, "template": "busybox"},
                      headers=admin)
    assert r.status == 400 and (await r.json())["code"] == "invalid-request"
    r = await api.put("/api/v1/containers", json={"name": name, "clone": "base"}, headers=admin)
    assert r.status == 400
    after = {p for p in _tree(world.base) if not p.endswith(".log")}
    assert after == {p for p in before if not p.endswith(".log")}


@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if n and "/" not in n])
def test_helper_revalidates_names_itself(world: World, name: str) -> None:
    """A request that skipped the frontend's checks is refused by the helper's own."""
    frame = {"id": "raw-1", "op": "create_container", "token": None, "client": "test",
             "args": {"name": name, "template": "busybox", "store": None, "xargs": []}}
    with pytest.raises(LwpError) as err:
        ops.decode_request(frame)
    assert err.value.code == "invalid-request"
    s = socket.socket(socket.AF_UNIX)
    s.connect(world.socket)
    s.sendall(framing.encode_frame(frame))
    (length,) = struct.unpack(">I", s.recv(4))
    reply = framing.decode_untrusted_body(s.recv(length))
    s.close()
    assert reply["ok"] is False and reply["code"] == "invalid-request"
    assert not os.path.lexists(os.path.join(world.base, "x"))


@pytest.mark.parametrize("template", ["/usr/share/lxc/templates/lxc-busybox", "../busybox",
                                      "busybox/../busybox", "./busybox", "lxc-busybox", "BUSYBOX",
                                      "download"])
async def test_template_that_is_a_path_or_not_allowed_is_400(
        api: Any, admin: dict[str, str], world: World, template: str) -> None:
    before = world.container_dirs()
    r = await api.put("/api/v1/containers", json={"name": new_name(), "template": template},
                      headers=admin)
    assert r.status == 400, await r.text()
    assert world.container_dirs() == before


@pytest.mark.parametrize("xargs", ["--rootfs=/x", "--path=/tmp/x", "--name=other",
                                   "--mapped-uid=0", "-n x", "--flavor=-x", "--flavor",
                                   "plain", "--flavor='unterminated", ["--flavor=a\nb"],
                                   ["--flavor=a\x00b"], "--flavor=x " * 40,
                                   "--not-allowed=1"])
async def test_xargs_policy_refuses_with_400_and_creates_nothing(
        api: Any, admin: dict[str, str], world: World, xargs: Any) -> None:
    before = world.container_dirs()
    r = await api.put("/api/v1/containers", json={
        "name": new_name(), "template": "recorder", "xargs": xargs}, headers=admin)
    assert r.status == 400, await r.text()
    assert world.container_dirs() == before
