"""Resource use of a running container from its cgroup, on cgroup v1 and on cgroup v2.

Pure parsing over a getter (liblxc's get_cgroup_item), so both layouts are unit-tested with real
file contents. A value the kernel does not offer counts as 0, as lxc-info printed it.
"""
from __future__ import annotations

from collections.abc import Callable

# liblxc's getter: raises KeyError for an item the cgroup lacks, ValueError when it cannot be
# read (seen right after start and while a container stops), and may return False.
Getter = Callable[[str], object]


def _read(get: Getter, item: str) -> str:
    try:
        value = get(item)
    except (KeyError, ValueError):
        return ""
    return value if isinstance(value, str) else ""


def _int(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat) as a dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def v1(get: Getter) -> dict[str, int]:
    blkio = 0
    for line in _read(get, "blkio.throttle.io_service_bytes").splitlines():
        # The last line is "Total N": the sum over devices and directions.
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Total" and parts[1].isdigit():
            blkio = int(parts[1])
    return {
        "cpu_ns": _int(_read(get, "cpuacct.usage")),
        "memory_bytes": _int(_read(get, "memory.usage_in_bytes")),
        "kmem_bytes": _int(_read(get, "memory.kmem.usage_in_bytes")),
        "blkio_bytes": blkio,
    }


def v2(get: Getter) -> dict[str, int]:
    stat = _keyed(_read(get, "memory.stat"))
    # "kernel" exists from Linux 5.18; before it, its main parts.
    kmem = stat.get("kernel", stat.get("kernel_stack", 0) + stat.get("slab", 0)
                    + stat.get("pagetables", 0) + stat.get("percpu", 0) + stat.get("sock", 0))
    blkio = 0
    for line in _read(get, "io.stat").splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key in ("rbytes", "wbytes") and value.isdigit():
                blkio += int(value)
    return {
        "cpu_ns": _keyed(_read(get, "cpu.stat")).get("usage_usec", 0) * 1000,
        "memory_bytes": _int(_read(get, "memory.current")),
        "kmem_bytes": kmem,
        "blkio_bytes": blkio,
    }
