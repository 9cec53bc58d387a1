"""The direct side: python3-lxc called in a process of its own, timed around each liblxc call.

Run as `python3 -m bench.direct LXCPATH` by bench/run.py, which sends one JSON command a line
and reads one JSON reply a line on the process's original stdout; everything liblxc or a
template prints goes to stderr. Each operation makes the same liblxc calls the helper makes for
it (helperd/containers.py), so API/direct measures the chain and nothing else.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import lxc  # type: ignore[import]

from helperd.isolate import CgroupHome

CGROUP_V1 = ("cpuacct.usage", "memory.usage_in_bytes", "memory.kmem.usage_in_bytes",
             "blkio.throttle.io_service_bytes")
CGROUP_V2 = ("memory.stat", "io.stat", "cpu.stat", "memory.current")
RUNNING = ("RUNNING", "FROZEN")


class Failed(Exception):
    pass


def _check(ok: object, what: str) -> None:
    if not ok:
        raise Failed(what)


def _container(path: str, name: str, state: tuple[str, ...] | None = None) -> Any:
    c = lxc.Container(name, path)
    _check(c.defined, f"{name} does not exist")
    if state is not None:
        _check(c.state in state, f"{name} is {c.state}, not {'/'.join(state)}")
    return c


# -- the operations -----------------------------------------------------------------------

def list_states(path: str) -> object:
    names = lxc.list_containers(config_path=path, as_object=False)
    return [(name, lxc.Container(name, path).state.lower()) for name in sorted(names)]


def _item(getter: Callable[[str], Any], key: str) -> object:
    try:
        return getter(key)
    except (KeyError, ValueError):
        return ""


def info(path: str, name: str) -> object:
    c = _container(path, name)
    state = c.state
    if state == "STOPPED":
        return {"name": name, "state": state}
    items = CGROUP_V2 if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else CGROUP_V1
    stats = [_item(c.get_cgroup_item, key) for key in items]
    ips = c.get_ips()
    pair = _item(c.get_running_config_item, "lxc.net.0.veth.pair")
    if isinstance(pair, str) and pair:
        for direction in ("rx_bytes", "tx_bytes"):
            with open(f"/sys/class/net/{pair}/statistics/{direction}") as f:
                f.read()
    return {"state": state, "pid": c.init_pid, "ips": ips, "stats": stats,
            "link": _item(c.get_config_item, "lxc.net.0.link")}


def start(path: str, name: str) -> None:
    c = _container(path, name, ("STOPPED",))
    _check(c.start(close_fds=True) and c.wait("RUNNING", 10), f"cannot start {name}")


def stop(path: str, name: str) -> None:
    c = _container(path, name, RUNNING)
    _check(c.stop() and c.wait("STOPPED", 10), f"cannot stop {name}")


def freeze(path: str, name: str) -> None:
    _check(_container(path, name, ("RUNNING",)).freeze(), f"cannot freeze {name}")


def unfreeze(path: str, name: str) -> None:
    _check(_container(path, name, ("FROZEN",)).unfreeze(), f"cannot unfreeze {name}")


def clone(path: str, name: str, source: str) -> None:
    src = _container(path, source, ("STOPPED",))
    _check(not lxc.Container(name, path).defined, f"{name} exists")
    _check(src.clone(name, config_path=path, bdevtype="dir"), f"cannot clone {source}")


def create(path: str, name: str, template: str, config: str) -> None:
    c = lxc.Container(name, path)
    _check(not c.defined, f"{name} exists")
    c.clear_config()
    _check(c.load_config(config), f"cannot read {config}")
    _check(c.create(template, 0, [], bdevtype="dir"), f"template failed for {name}")


def destroy(path: str, name: str) -> None:
    _check(_container(path, name, ("STOPPED",)).destroy(), f"cannot destroy {name}")


OPS: dict[str, Callable[..., object]] = {
    "list": list_states, "info": info, "start": start, "stop": stop, "freeze": freeze,
    "unfreeze": unfreeze, "clone": clone, "create": create, "destroy": destroy,
}


# -- keeping this process out of the containers' cgroups ----------------------------------

class Home:
    """liblxc's start() moves its caller into the container's monitor cgroups for good; this
    long-lived process moves back after each start, untimed, as the helper's workers do."""

    def __init__(self) -> None:
        self.home = CgroupHome()
        self.moves = 0

    def restore(self) -> None:
        if self.home.at_home():
            return
        self.moves += 1
        if not self.home.restore():
            raise Failed("could not move the direct process back to its own cgroups")


# -- building and tearing down the world --------------------------------------------------

def build(path: str, names: list[str], template: str, config: str, home: Home) -> object:
    """The first name is made from the template; the others are its clones; odd ones run."""
    create(path, names[0], template, config)
    for name in names[1:]:
        clone(path, name, names[0])
    running = names[1::2]
    for name in running:
        start(path, name)
        home.restore()
    return {"running": running, "stopped": names[0::2]}


def cleanup(path: str) -> object:
    destroyed = 0
    for name in lxc.list_containers(config_path=path, as_object=False):
        c = lxc.Container(name, path)
        if c.state == "FROZEN":
            c.unfreeze()
        if c.running:
            c.stop()
            c.wait("STOPPED", 10)
        if c.destroy():
            destroyed += 1
    return {"destroyed": destroyed}


# -- measuring ----------------------------------------------------------------------------

def timed(op: str, path: str, args: dict[str, Any], reps: int, home: Home) -> object:
    fn = OPS[op]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(path, **args)
        times.append(time.perf_counter() - t0)
        home.restore()
    return {"t": times}


def loop(op: str, path: str, args: dict[str, Any], threads: int, seconds: float) -> object:
    """`threads` threads in this one process calling the op back to back for `seconds`."""
    fn = OPS[op]
    counts = [0] * threads
    errors: list[str] = []
    t0 = time.perf_counter()
    end = t0 + seconds

    def run(i: int) -> None:
        try:
            while time.perf_counter() < end:
                fn(path, **args)
                counts[i] += 1
        except Exception as exc:  # noqa: BLE001 — reported to the caller, which fails the run
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise Failed(errors[0])
    return {"count": sum(counts), "elapsed": time.perf_counter() - t0}


def main() -> int:
    path = sys.argv[1]
    # The same malloc arena cap as the helper (helperd/startup.py): the loop's threads would
    # otherwise grow this process, and liblxc's get_ips() forks its caller, so a bigger
    # process makes every info slower; the floor must not be handicapped.
    ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # liblxc and templates print; keep the reply channel clean
    home = Home()
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            kind = cmd.pop("cmd")
            if kind == "time":
                out = timed(cmd["op"], path, cmd["args"], cmd["reps"], home)
            elif kind == "loop":
                out = loop(cmd["op"], path, cmd["args"], cmd["threads"], cmd["seconds"])
            elif kind == "build":
                out = build(path, cmd["names"], cmd["template"], cmd["config"], home)
            elif kind == "cleanup":
                out = cleanup(path)
            elif kind == "moves":
                out = {"moves": home.moves}
            else:
                raise Failed(f"unknown command {kind!r}")
        except (Failed, KeyError, TypeError, OSError) as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
