"""Slow clients against a live frontend: 2,000 connections dribbling headers must not stop a
normal client from getting an answer in under a second, and none of them is held for long.

The attack runs in a process of its own (`python3 -m tests.test_network_slowloris ...`), so
the latency measured here is the frontend's, not this process's event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from frontend import guard
from tests.conftest import PYTHON, ROOT, World
from tests.live import Live, live_world, make_token, start_frontend, stop_frontend

pytestmark = [pytest.mark.security, pytest.mark.lxc]
ATTACKERS = 2000
MAX_LATENCY = 1.0


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with live_world() as w:
        yield w


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


# -- the attacker (runs in its own process) -------------------------------------------------

async def _dribbler(port: int, opened: list[float], closed: list[float], until: float,
                    gate: asyncio.Semaphore, tried: list[int]) -> None:
    async with gate:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            reader = None
        tried.append(1)
        if len(tried) == ATTACKERS:  # the flood of connects is over: say so, once
            print(json.dumps({"ramped": True}), flush=True)
    if reader is None:
        return
    start = time.monotonic()
    opened.append(start)
    writer.write(b"GET /api/v1/containers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    try:
        while time.monotonic() < until:
            writer.write(b"a")  # one byte of a header that never ends, every second
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                    break
            except TimeoutError:
                continue
        else:
            writer.close()
            return
    except OSError:
        pass  # reset by the server: closed as well
    closed.append(time.monotonic() - start)
    writer.close()


async def _attack(port: int, count: int, seconds: float) -> dict[str, object]:
    opened: list[float] = []
    closed: list[float] = []
    until = time.monotonic() + seconds
    gate = asyncio.Semaphore(200)  # connect in waves, as the kernel's accept queue allows
    tried: list[int] = []
    await asyncio.gather(*(_dribbler(port, opened, closed, until, gate, tried)
                           for _ in range(count)))
    return {"opened": len(opened), "closed": sorted(closed),
            "open_span": (max(opened) - min(opened)) if opened else 0.0}


def attack_main(argv: list[str]) -> None:
    port, count, seconds = int(argv[0]), int(argv[1]), float(argv[2])
    raise_nofile(count + 256)
    print(json.dumps(asyncio.run(_attack(port, count, seconds))), flush=True)


# -- the measurements -------------------------------------------------------------------------

@contextmanager
def attack(live: Live, seconds: float) -> Iterator[Callable[[], dict[str, Any]]]:
    """Run the attacker; return once all its connects are done (a normal client measured
    during the connect flood itself would measure the flood, not the dribbling). Yields a
    function that waits for the attacker's result."""
    process = subprocess.Popen([PYTHON, "-m", "tests.test_network_slowloris", str(live.port),
                                str(ATTACKERS), str(seconds)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the attacker did not finish connecting"
        json.loads(process.stdout.readline())

        def result() -> dict[str, Any]:
            out, _ = process.communicate(timeout=60)
            outcome: dict[str, Any] = json.loads(out)
            return outcome
        yield result
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def open_sockets(pid: int) -> int:
    fd_dir = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            count += os.readlink(os.path.join(fd_dir, fd)).startswith("socket:")
        except OSError:
            continue
    return count


def normal_requests(live: Live, seconds: float, watch_pid: int | None = None,
                    ) -> tuple[list[float], int]:
    """GET the list every 0.2 s on a fresh connection; return the latencies and the most
    sockets the frontend held meanwhile."""
    latencies: list[float] = []
    most = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        request = urllib.request.Request(f"{live.url}/api/v1/containers",
                                         headers={"private-token": live.read})
        start = time.monotonic()
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            json.loads(response.read())
        latencies.append(time.monotonic() - start)
        if watch_pid is not None:
            most = max(most, open_sockets(watch_pid))
        time.sleep(0.2)
    return latencies, most


def figures(name: str, latencies: list[float], result: dict[str, object], **extra: object) -> str:
    line = (f"{name}: {len(latencies)} normal requests under {result['opened']} dribbling "
            f"connections: median {statistics.median(latencies) * 1000:.1f} ms, max "
            f"{max(latencies) * 1000:.1f} ms; " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    print("\n" + line)
    return line


def test_dribbling_headers_do_not_slow_a_normal_client_and_are_cut_off(world: World) -> None:
    raise_nofile(ATTACKERS + 512)
    live = start_frontend(world, "header_timeout = 5", read=make_token(world, "read"))
    try:
        with attack(live, seconds=12) as outcome:
            latencies, _ = normal_requests(live, seconds=9)
            result = outcome()
        assert live.process.poll() is None, live.log_text()[-2000:]
    finally:
        stop_frontend(live)
    closed: list[float] = result["closed"]
    line = figures("deadline", latencies, result,
                   closed=len(closed), longest_held=f"{max(closed):.1f} s")
    assert result["opened"] == ATTACKERS, line
    assert max(latencies) < MAX_LATENCY, line
    # Every dribbler was cut off by the 5 s deadline (plus the sweep's tick), dribbling or not.
    assert len(closed) == ATTACKERS and max(closed) < 5 + 1.5, line


def test_past_the_connection_cap_the_oldest_waiting_connection_makes_room(world: World) -> None:
    raise_nofile(ATTACKERS + 512)
    cap = 256
    live = start_frontend(world, f"header_timeout = 60\nmax_connections = {cap}",
                          read=make_token(world, "read"))
    try:
        with attack(live, seconds=10) as outcome:
            latencies, most = normal_requests(live, seconds=7, watch_pid=live.process.pid)
            result = outcome()
        assert live.process.poll() is None, live.log_text()[-2000:]
    finally:
        stop_frontend(live)
    line = figures("cap", latencies, result, cap=cap, most_sockets_held=most,
                   evicted=len(result["closed"]))
    assert result["opened"] == ATTACKERS, line
    assert max(latencies) < MAX_LATENCY, line
    # The deadline (60 s) never fired: every close was an eviction, and the frontend never
    # held more than the cap, one accept burst not yet seen by the guard, and its own sockets.
    assert len(result["closed"]) >= ATTACKERS - cap, line
    assert most <= cap + guard.FD_RESERVE, line


if __name__ == "__main__":
    attack_main(sys.argv[1:])
