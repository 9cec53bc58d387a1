"""Sizes print as lxc-info printed them, so clients parsing the seed's strings keep working."""
from __future__ import annotations

import pytest

from frontend.present import container_info, size


@pytest.mark.parametrize("value,text", [
    (0, "0 bytes"), (1024, "1024 bytes"), (1025, "1.00 KiB"), (83026, "81.08 KiB"),
    (1 << 20, "1024.00 KiB"), ((1 << 20) + 1, "1.00 MiB"), (8032092, "7.66 MiB"),
    (2118123, "2.02 MiB"), (1 << 30, "1024.00 MiB"), ((1 << 30) + 1, "1.00 GiB"),
    (5 * (1 << 30) + 536870912, "5.49 GiB"),
])
def test_size_follows_lxc_infos_rule(value: int, text: str) -> None:
    assert size(value) == text


def test_running_info_has_the_seed_shape() -> None:
    info = container_info({"name": "base", "state": "RUNNING", "pid": 4548, "ip": "192.0.2.1",
                           "link": "lxcbr0", "cpu_ns": 670_000_000, "memory_bytes": 2118123,
                           "kmem_bytes": 0, "blkio_bytes": 8032092, "rx_bytes": 83026,
                           "tx_bytes": 0, "privileged": False})
    assert info == {"blkio_use": "7.66 MiB", "cpu_use": "0.67 seconds", "ip": "192.0.2.1",
                    "kmem_use": "0 bytes", "link": "lxcbr0", "memory_use": "2.02 MiB",
                    "name": "base", "pid": "4548", "rx_bytes": "81.08 KiB", "state": "RUNNING",
                    "total_bytes": "81.08 KiB", "tx_bytes": "0 bytes", "privileged": False}


def test_stopped_info_is_name_state_and_zero_pid() -> None:
    assert container_info({"name": "a", "state": "STOPPED", "pid": 0, "privileged": True}) == {
        "name": "a", "state": "STOPPED", "pid": 0, "privileged": True}
