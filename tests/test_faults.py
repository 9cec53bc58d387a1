"""Faults with real processes: the helper killed with SIGKILL under load, and a liblxc call
that hangs past its deadline. Real frontend on 127.0.0.1, real containers, worlds of their own.

Under a kill every client gets 503 JSON within 5 s, never a 500 or a hang, and service resumes
within 5 s of the helper's restart; a hung create is ended as a 504 `timeout`, leaves nothing in
the lxcpath, and other containers answer promptly meanwhile.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from frontend.app import make_app
from helperd import config
from protocol import ops
from protocol.config import ConfigError
from protocol.errors import LwpError
from tests.conftest import World, new_name, write_config
from tests.live import live_world

CLIENTS = 4
LIMIT = 5.0  # seconds: to a 503 after the kill, and to service after the restart
CREATE_DEADLINE = 2.0  # the helper's deadline for a create here; the slow template takes 3 s


@dataclass
class Sample:
    client: int
    what: str
    sent: float
    answered: float
    status: int
    code: str | None
    error: str | None
    json: bool


@pytest.fixture
def fault_world() -> Iterator[World]:
    with live_world() as world:
        yield world


@pytest.fixture
async def frontend(fault_world: World) -> AsyncIterator[str]:
    """The real frontend app on a real TCP port of 127.0.0.1."""
    runner = web.AppRunner(make_app(fault_world.frontend))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def served(world: World) -> None:
    """Wait until a (re)started helper answers: its socket file may be the last one's."""
    deadline = time.monotonic() + 10
    while True:
        try:
            world.call(ops.ListContainers())
            return
        except (OSError, LwpError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def admin_token(world: World) -> dict[str, str]:
    return {"private-token": world.call(ops.CreateToken(None, "faults", "admin"))["token"]}


async def send(http: aiohttp.ClientSession, base: str, headers: dict[str, str], client: int,
               what: str) -> Sample:
    method, path, body = _REQUESTS[what.split(" ")[0]]
    name = what.split(" ")[1] if " " in what else ""
    sent = time.monotonic()
    async with http.request(method, base + path.format(name=name), json=body,
                            headers=headers) as r:
        is_json = r.content_type == "application/json"
        payload: Any = await r.json() if is_json else await r.text()
    error = payload if is_json and isinstance(payload, dict) else {}
    return Sample(client, what, sent, time.monotonic(), r.status, error.get("code"),
                  error.get("error"), is_json)


_REQUESTS: dict[str, tuple[str, str, Any]] = {
    "list": ("GET", "/api/v1/containers", None),
    "info": ("GET", "/api/v1/containers/{name}", None),
    "start": ("POST", "/api/v1/containers/{name}", {"action": "start"}),
    "stop": ("POST", "/api/v1/containers/{name}", {"action": "stop"}),
}


# -- SIGKILL under load ------------------------------------------------------------------------

@pytest.mark.security
@pytest.mark.lxc
async def test_helper_killed_under_load_gives_503_then_service_resumes(
        fault_world: World, frontend: str) -> None:
    world = fault_world
    headers = admin_token(world)
    names = [new_name() for _ in range(CLIENTS)]
    for name in names:
        world.call(ops.CreateContainer(name, "busybox"))
    samples: list[Sample] = []
    done = asyncio.Event()

    async def client(i: int, name: str, http: aiohttp.ClientSession) -> None:
        while not done.is_set():
            for what in ("list", f"info {name}", f"start {name}", f"info {name}",
                         f"stop {name}"):
                samples.append(await send(http, frontend, headers, i, what))

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        clients = [asyncio.create_task(client(i, n, http)) for i, n in enumerate(names)]
        await asyncio.sleep(3)  # normal load first
        assert world.process is not None
        os.kill(world.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(3)  # down
        await asyncio.to_thread(world.process.wait, 10)
        restarted = time.monotonic()
        await asyncio.to_thread(world.start_helper)
        await asyncio.sleep(LIMIT + 1)  # back
        done.set()
        await asyncio.gather(*clients)

    assert all(s.json for s in samples), "every answer is JSON"
    assert not [s for s in samples if s.status >= 500 and s.status != 503], "never a 500"
    slowest = max(s.answered - s.sent for s in samples)
    assert slowest < LIMIT, f"a request hung for {slowest:.1f} s"
    to_503, to_service = [], []
    for i in range(CLIENTS):
        mine = [s for s in samples if s.client == i]
        assert any(s.status == 200 for s in mine if s.answered < killed), "load before the kill"
        # Everything answered while the helper was down is a 503 helper-unavailable.
        down = [s for s in mine if killed < s.answered and s.sent < restarted]
        first_503 = next((s for s in down if s.status == 503), None)
        assert first_503 is not None, f"client {i} never saw a 503 while the helper was down"
        assert all((s.status, s.code) == (503, "helper-unavailable") for s in down
                   if s.sent > first_503.sent), [(s.what, s.status, s.error) for s in down]
        to_503.append(first_503.answered - killed)
        # Once the restarted helper answers, it keeps answering.
        after = [s for s in mine if s.sent >= restarted]
        first_ok = next((s for s in after if s.status == 200), None)
        assert first_ok is not None, f"client {i}: no service after the restart"
        assert all(s.status in (200, 409) for s in after if s.sent > first_ok.sent), \
            [(s.what, s.status, s.error) for s in after]
        to_service.append(first_ok.answered - restarted)
    print(f"\n{len(samples)} requests from {CLIENTS} clients; first 503 after the kill: "
          f"{max(to_503) * 1000:.0f} ms at worst (per client "
          f"{', '.join(f'{t * 1000:.0f}' for t in to_503)} ms); service back after the "
          f"restart: {max(to_service) * 1000:.0f} ms at worst (per client "
          f"{', '.join(f'{t * 1000:.0f}' for t in to_service)} ms); slowest answer "
          f"{slowest * 1000:.0f} ms")
    assert max(to_503) < LIMIT and max(to_service) < LIMIT


# -- a liblxc call that hangs past its deadline -----------------------------------------------

@pytest.mark.security
@pytest.mark.lxc
async def test_hung_create_is_ended_as_a_timeout_and_leaves_nothing(
        fault_world: World, frontend: str) -> None:
    world = fault_world
    headers = admin_token(world)
    running, stopped, hung = new_name(), new_name(), new_name()
    world.call(ops.CreateContainer(running, "busybox"))
    world.call(ops.StartContainer(running))
    world.call(ops.CreateContainer(stopped, "busybox"))
    # Only then the short deadline, so that a loaded machine cannot fail the setup's creates.
    world.stop_helper()
    write_config(world.base, f"[helperd.op_timeouts]\ncreate_container = {CREATE_DEADLINE}")
    world.start_helper()
    served(world)
    before = world.container_dirs()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async def create() -> tuple[int, Any, float]:
            sent = time.monotonic()
            async with http.put(f"{frontend}/api/v1/containers", headers=headers,
                                json={"name": hung, "template": "slow"}) as r:
                return r.status, await r.json(), time.monotonic() - sent

        creating = asyncio.create_task(create())
        await asyncio.sleep(0.3)  # the template is running (and will for 3 s)
        others = []
        # (Not freeze: liblxc's freeze polls with sleep(1), so it takes a second anyway.)
        for what in ("list", f"info {running}", f"start {stopped}", f"info {stopped}",
                     f"info {running}", "list"):
            assert not creating.done()
            others.append(await send(http, frontend, headers, 0, what))
        status, body, took = await creating

    assert (status, body["code"]) == (504, "timeout"), body
    assert CREATE_DEADLINE <= took < CREATE_DEADLINE + 2, took
    for s in others:
        assert s.status == 200 and s.answered - s.sent < 1.0, (s.what, s.status, s.error)
    # Killed in the middle of its template: nothing of it is left, in the lxcpath or running.
    assert world.container_dirs() == before
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _mentions(pid, hung)]
    world.call(ops.CreateContainer(hung, "recorder"))  # the name is free again
    print(f"\nhung create answered 504 timeout after {took * 1000:.0f} ms (deadline "
          f"{CREATE_DEADLINE:g} s); meanwhile {len(others)} requests on other containers, "
          f"slowest {max(s.answered - s.sent for s in others) * 1000:.0f} ms")


def _mentions(pid: str, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return name.encode() in f.read()
    except OSError:
        return False


# -- the deadline override is checked like every other setting -------------------------------

@pytest.mark.parametrize("table, error", [
    ("create_container = 2.5", None),
    ("create = 2", "no such operation"),
    ("create_container = 0", "more than 0"),
    ("list_containers = 30", "less than 30"),
    ('start_container = "soon"', "must be float"),
])
def test_op_timeouts_name_real_ops_with_deadlines_under_the_frontends_wait(
        tmp_path: Any, table: str, error: str | None) -> None:
    path = write_config(str(tmp_path), f"[helperd.op_timeouts]\n{table}")
    if error is None:
        assert config.load(path).op_timeouts == {"create_container": 2.5}
    else:
        with pytest.raises(ConfigError, match=error):
            config.load(path)
