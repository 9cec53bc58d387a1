"""PATCH of a running container's memory limit: direct liblxc vs the whole chain, same run.

Direct: set_cgroup_item + set_config_item + save_config. Chain: HTTP PATCH .../config through
the frontend, the socket and the helper's worker. Medians of REPS each, alternating values.
Run as root with /usr/bin/python3 -m bench.config_patch (a temporary world of its own).
"""
from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import lxc  # type: ignore[import]
from aiohttp.test_utils import TestClient, TestServer

from frontend.app import make_app
from protocol import ops
from tests.conftest import destroy_world, make_world

REPS = 30
MIB = 1 << 20


def direct(path: str, name: str) -> list[float]:
    c = lxc.Container(name, path)
    times = []
    for i in range(REPS):
        value = str((100 + i % 2) * MIB)
        began = time.perf_counter()
        assert c.set_cgroup_item("memory.limit_in_bytes", value)
        c.clear_config_item("lxc.cgroup.memory.limit_in_bytes")
        assert c.set_config_item("lxc.cgroup.memory.limit_in_bytes", value)
        assert c.save_config()
        times.append(time.perf_counter() - began)
    return times


async def chain(world: Any, token: str, name: str) -> list[float]:
    client = TestClient(TestServer(make_app(world.frontend)))
    await client.start_server()
    times = []
    try:
        for i in range(REPS):
            began = time.perf_counter()
            r = await client.patch(f"/api/v1/containers/{name}/config",
                                   json={"memory_limit": (102 + i % 2) * MIB},
                                   headers={"private-token": token})
            assert r.status == 200, await r.text()
            times.append(time.perf_counter() - began)
    finally:
        await client.close()
    return times


def main() -> None:
    world = make_world()
    world.start_helper()
    try:
        token = world.call(ops.CreateToken(None, "bench", "operate"))["token"]
        name = "bench-cfg"
        world.call(ops.CreateContainer(name, "busybox"))
        world.call(ops.StartContainer(name))
        d = direct(world.lxcpath, name)
        h = asyncio.run(chain(world, token, name))
        d2 = direct(world.lxcpath, name)  # again after: the same conditions either side
        for label, t in (("direct", d + d2), ("chain", h)):
            print(f"{label}: median {statistics.median(t) * 1000:.2f} ms, "
                  f"p90 {sorted(t)[int(len(t) * 0.9)] * 1000:.2f} ms, n={len(t)}")
    finally:
        destroy_world(world)


if __name__ == "__main__":
    main()
