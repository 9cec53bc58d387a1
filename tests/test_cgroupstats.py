"""cgroup v1 (this build host) and v2 (a stock Debian 12 host) give the same info fields.

The v2 files are verbatim shapes of Linux 6.1's memory.stat, cpu.stat and io.stat; the v1
blkio file is as this host's kernel writes it.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- properties: whatever a cgroup file holds --------------------------------------------------
# The helper reads these files from a container's cgroup: contents the kernel writes, but
# through a path a monitor names and a getter that may fail in any of liblxc's ways. Whatever
# comes back, the info reply must be four integers msgpack can carry (0 <= n < 2**64) and the
# parse must not raise: a bad file is a 0, never a 500 for the client.

V1_ITEMS = ("cpuacct.usage", "memory.usage_in_bytes", "memory.kmem.usage_in_bytes",
            "blkio.throttle.io_service_bytes")
V2_ITEMS = ("memory.current", "memory.stat", "cpu.stat", "io.stat")
U64 = st.integers(min_value=0, max_value=2**64 - 1)
# Text near the real shapes: digits of every kind (Unicode digits pass str.isdigit() but not
# int()), signs, huge numbers, separators, keys that matter.
ATOMS = st.sampled_from(["Total", "kernel", "kernel_stack", "slab", "usage_usec", "rbytes=",
                         "wbytes=", "8:0", " ", "\n", "\t", "=", "-", "+", "²", "٣", "𝟗",
                         "0x10", "1e9", "\x00", "9" * 30, "9" * 5000])
TEXT = st.one_of(st.text(max_size=200),
                 st.lists(st.one_of(ATOMS, U64.map(str)), max_size=40).map("".join))
OUTCOME = st.one_of(TEXT, st.sampled_from([KeyError("x"), ValueError("x"), False, None, b"1"]))


def _scripted(answers: dict[str, object]) -> cgroupstats.Getter:
    def get(item: str) -> object:
        answer = answers.get(item, KeyError(item))
        if isinstance(answer, Exception):
            raise answer
        return answer
    return get


def _well_formed(stats: dict[str, int]) -> None:
    assert set(stats) == {"cpu_ns", "memory_bytes", "kmem_bytes", "blkio_bytes"}
    for value in stats.values():
        assert type(value) is int and 0 <= value < 2**64


@pytest.mark.security
@settings(max_examples=1000, deadline=None)
@given(st.fixed_dictionaries({item: OUTCOME for item in V1_ITEMS}))
def test_v1_gives_four_u64_whatever_the_files_hold(answers: dict[str, object]) -> None:
    _well_formed(cgroupstats.v1(_scripted(answers)))


@pytest.mark.security
@settings(max_examples=1000, deadline=None)
@given(st.fixed_dictionaries({item: OUTCOME for item in V2_ITEMS}))
def test_v2_gives_four_u64_whatever_the_files_hold(answers: dict[str, object]) -> None:
    _well_formed(cgroupstats.v2(_scripted(answers)))


@pytest.mark.security
@settings(max_examples=500, deadline=None)
@given(U64, U64, st.lists(st.tuples(U64, U64), max_size=6))
def test_v2_reads_what_the_kernel_writes(usage: int, memory: int,
                                         devices: list[tuple[int, int]]) -> None:
    io = "\n".join(f"8:{i} rbytes={r} wbytes={w} rios=1 wios=2 dbytes=0 dios=0"
                   for i, (r, w) in enumerate(devices))
    stats = cgroupstats.v2(_scripted({"memory.current": f"{memory}\n",
                                      "cpu.stat": f"usage_usec {usage}\nuser_usec 1\n",
                                      "io.stat": io}))
    # Sums and the usec -> ns scaling stay within u64: a counter that would overflow is capped.
    assert stats["memory_bytes"] == memory
    assert stats["cpu_ns"] == min(usage * 1000, 2**64 - 1)
    assert stats["blkio_bytes"] == min(sum(r + w for r, w in devices), 2**64 - 1)
