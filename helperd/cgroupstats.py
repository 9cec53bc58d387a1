"""Resource use of a running container from its cgroup, on cgroup v1 and on cgroup v2.

Pure parsing over a getter, so both layouts are unit-tested with real file contents. A value the
kernel does not offer, or that is no ASCII u64, counts as 0, as lxc-info printed it; sums are
capped at 2**64 - 1: every field fits msgpack's integers.
"""
from __future__ import annotations

import re
from collections.abc import Callable

U64_MAX = 2**64 - 1
# A kernel counter: ASCII digits only (str.isdigit() also takes "²", which int() refuses), and
# at most 20 of them (int() refuses more than 4,300, and anything past u64 is not the kernel's).
NUMBER_RE = re.compile(r"[0-9]{1,20}")

# The getter (monitor.Cgroups.get, as liblxc's get_cgroup_item was): raises KeyError for an
# item the cgroup lacks, ValueError when it cannot be read (seen right after start and while a
# container stops), and may return False.
Getter = Callable[[str], object]


def _read(get: Getter, item: str) -> str:
    try:
        value = get(item)
    except (KeyError, ValueError):
        return ""
    return value if isinstance(value, str) else ""


def _int(text: str) -> int:
    text = text.strip()
    value = int(text) if NUMBER_RE.fullmatch(text) else 0
    return value if value <= U64_MAX else 0


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat) as a dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if NUMBER_RE.fullmatch(value.strip()):
            out[key] = _int(value)
    return out


def v1(get: Getter) -> dict[str, int]:
    blkio = 0
    for line in _read(get, "blkio.throttle.io_service_bytes").splitlines():
        # The last line is "Total N": the sum over devices and directions.
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Total":
            blkio = _int(parts[1])
    return {
        "cpu_ns": _int(_read(get, "cpuacct.usage")),
        "memory_bytes": _int(_read(get, "memory.usage_in_bytes")),
        "kmem_bytes": _int(_read(get, "memory.kmem.usage_in_bytes")),
        "blkio_bytes": blkio,
    }


def v2(get: Getter) -> dict[str, int]:
    stat = _keyed(_read(get, "memory.stat"))
    # "kernel" exists from Linux 5.18; before it, its main parts.
    kmem = stat.get("kernel", min(U64_MAX, stat.get("kernel_stack", 0) + stat.get("slab", 0)
                                  + stat.get("pagetables", 0) + stat.get("percpu", 0)
                                  + stat.get("sock", 0)))
    blkio = 0
    for line in _read(get, "io.stat").splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key in ("rbytes", "wbytes"):
                blkio = min(U64_MAX, blkio + _int(value))
    return {
        "cpu_ns": min(U64_MAX, _keyed(_read(get, "cpu.stat")).get("usage_usec", 0) * 1000),
        "memory_bytes": _int(_read(get, "memory.current")),
        "kmem_bytes": kmem,
        "blkio_bytes": blkio,
    }
