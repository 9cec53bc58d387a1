"""How helper results look to clients: the seed's strings, sizes printed by lxc-info's rule."""
from __future__ import annotations

from typing import Any


def size(v: int) -> str:
    """A byte count as lxc-info printed it (truncated two-digit fractions, strict thresholds)."""
    if v > 1 << 30:
        return f"{v >> 30}.{(v % (1 << 30)) // 10737419:02d} GiB"
    if v > 1 << 20:
        x = v + 5243
        return f"{x >> 20}.{((x % (1 << 20)) * 100) >> 20:02d} MiB"
    if v > 1 << 10:
        x = v + 5
        return f"{x >> 10}.{((x % (1 << 10)) * 100) >> 10:02d} KiB"
    return f"{v} bytes"


def container_info(info: dict[str, Any]) -> dict[str, Any]:
    if info["state"] == "STOPPED":
        return {"name": info["name"], "state": info["state"], "pid": 0,
                "privileged": info["privileged"]}
    return {
        "name": info["name"],
        "state": info["state"],
        "pid": str(info["pid"]),
        "ip": info["ip"],
        "link": info["link"],
        "cpu_use": f"{info['cpu_ns'] / 1e9:.2f} seconds",
        "memory_use": size(info["memory_bytes"]),
        "kmem_use": size(info["kmem_bytes"]),
        "blkio_use": size(info["blkio_bytes"]),
        "rx_bytes": size(info["rx_bytes"]),
        "tx_bytes": size(info["tx_bytes"]),
        "total_bytes": size(info["rx_bytes"] + info["tx_bytes"]),
        "privileged": info["privileged"],
    }
