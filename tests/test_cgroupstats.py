"""cgroup v1 (this build host) and v2 (a stock Debian 12 host) give the same info fields.

The v2 files are verbatim shapes of Linux 6.1's memory.stat, cpu.stat and io.stat; the v1
blkio file is as this host's kernel writes it.
"""
from __future__ import annotations

import os

from helperd import cgroupstats

DATA = os.path.join(os.path.dirname(__file__), "data")


def _data(name: str) -> str:
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def getter(items: dict[str, str]) -> cgroupstats.Getter:
    def get(item: str) -> str:
        if item not in items:
            raise KeyError("Invalid cgroup entry")
        return items[item].rstrip("\n")  # as python3-lxc returns it
    return get


def test_v2_reads_cpu_memory_kmem_and_io() -> None:
    stats = cgroupstats.v2(getter({
        "memory.current": "4710400\n", "memory.stat": _data("cgroup-v2-memory.stat"),
        "cpu.stat": _data("cgroup-v2-cpu.stat"), "io.stat": _data("cgroup-v2-io.stat")}))
    assert stats == {"cpu_ns": 672514000, "memory_bytes": 4710400, "kmem_bytes": 753664,
                     "blkio_bytes": 7868416 + 163840 + 1024}


def test_v2_without_the_kernel_key_sums_its_parts() -> None:
    stat = "\n".join(line for line in _data("cgroup-v2-memory.stat").splitlines()
                     if not line.startswith("kernel "))
    stats = cgroupstats.v2(getter({"memory.stat": stat}))
    assert stats["kmem_bytes"] == 49152 + 505688 + 159744 + 11520 + 0


def test_v1_reads_cpuacct_memory_kmem_and_blkio_total() -> None:
    stats = cgroupstats.v1(getter({
        "cpuacct.usage": "670123456", "memory.usage_in_bytes": "2118123",
        "memory.kmem.usage_in_bytes": "0",
        "blkio.throttle.io_service_bytes": _data("cgroup-v1-blkio.throttle.io_service_bytes")}))
    assert stats == {"cpu_ns": 670123456, "memory_bytes": 2118123, "kmem_bytes": 0,
                     "blkio_bytes": 8032256}


def test_missing_or_unreadable_items_count_as_zero() -> None:
    def failing(item: str) -> str:
        raise ValueError("Unable to read config value")  # python3-lxc, mid-stop
    zero = {"cpu_ns": 0, "memory_bytes": 0, "kmem_bytes": 0, "blkio_bytes": 0}
    assert cgroupstats.v1(failing) == zero
    assert cgroupstats.v2(getter({})) == zero
