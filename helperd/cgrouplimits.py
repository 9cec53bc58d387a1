"""Limits and autostart as cgroup files and config keys: ONE table, per cgroup version.

Pure translation (no liblxc, no I/O): containers.py writes what this says to the cgroup its root
monitor names and to liblxc's config API. A value is the API's (bytes, a cpuset, a weight).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocol import rules
from protocol.errors import LwpError

V1, V2 = "v1", "v2"
# What a v1 memory file reads when it has no limit: PAGE_COUNTER_MAX pages (rounded); anything
# this large is no limit.
V1_UNLIMITED = 1 << 62
# cgroup v1's cpu.shares for cgroup v2's cpu.weight, as systemd converts them: the default
# weight 100 is the default 1024 shares; v1 refuses shares below 2.
SHARES_PER_WEIGHT = 1024 / 100
V1_SHARES_MIN = 2

Value = int | str | None


def _size_out(version: str, value: Value) -> str:
    if value is None:
        return "-1" if version == V1 else "max"
    return str(value)


def _size_in(version: str, text: str) -> Value:
    text = text.strip()
    if text in ("max", "-1", ""):
        return None
    try:
        number = int(text) if text.isdigit() else rules.size(text, "size")
    except LwpError:
        return text  # written by hand in a form the API does not use: shown as it is
    return None if number >= V1_UNLIMITED else number


def weight_to_shares(weight: int) -> int:
    return max(V1_SHARES_MIN, int(weight * SHARES_PER_WEIGHT))


def shares_to_weight(shares: int) -> int:
    return min(rules.CPU_WEIGHT_MAX, max(rules.CPU_WEIGHT_MIN, round(shares / SHARES_PER_WEIGHT)))


def _weight_out(version: str, value: Value) -> str:
    weight = 100 if value is None else int(value)  # no setting: the kernel's default
    return str(weight_to_shares(weight) if version == V1 else weight)


def _weight_in(version: str, text: str) -> Value:
    text = text.strip()
    if not text.isdigit():
        return text or None
    return shares_to_weight(int(text)) if version == V1 else int(text)


def _cpus_out(version: str, value: Value, host_cpus: str = "") -> str:
    # No setting: every CPU (v1 needs them named; an empty v2 cpuset.cpus inherits them all).
    if value is None:
        return host_cpus if version == V1 else ""
    return str(value)


def _cpus_in(version: str, text: str) -> Value:
    return text.strip() or None


@dataclass(frozen=True)
class Limit:
    """One setting: its cgroup file per version and how its value is written and read."""

    v1: str
    v2: str
    out: Callable[[str, Value], str]  # (version, value or None: no limit) -> file contents
    into: Callable[[str, str], Value]  # (version, file or config contents) -> value

    def item(self, version: str) -> str:
        return self.v1 if version == V1 else self.v2


# The one translation table (issue #13): API setting -> cgroup v1 and v2 files.
LIMITS: dict[str, Limit] = {
    "memory_limit": Limit("memory.limit_in_bytes", "memory.max", _size_out, _size_in),
    # v1's memsw is memory + swap together, v2's swap.max swap alone: each kernel's own meaning.
    "memory_swap_limit": Limit("memory.memsw.limit_in_bytes", "memory.swap.max", _size_out,
                               _size_in),
    "cpus": Limit("cpuset.cpus", "cpuset.cpus", _cpus_out, _cpus_in),
    "cpu_weight": Limit("cpu.shares", "cpu.weight", _weight_out, _weight_in),
}
# Autostart lives in the config only (lxc-autostart and lxc.service read it at boot).
AUTOSTART: dict[str, str] = {
    "autostart": "lxc.start.auto",
    "autostart_delay": "lxc.start.delay",
    "autostart_order": "lxc.start.order",
}


def config_key(setting: str, version: str) -> str:
    """The liblxc config key of a limit on a host of `version`."""
    limit = LIMITS[setting]
    return f"lxc.cgroup.{limit.v1}" if version == V1 else f"lxc.cgroup2.{limit.v2}"


def config_keys(setting: str) -> tuple[str, ...]:
    """Every key a setting may be written under: both versions' for a limit (a config moved
    between hosts keeps neither a stale nor a duplicate line)."""
    if setting in AUTOSTART:
        return (AUTOSTART[setting],)
    return (config_key(setting, V1), config_key(setting, V2))


def cgroup_value(setting: str, version: str, value: Value, host_cpus: str = "") -> str:
    """What to write to the cgroup file for `value` (None: the setting removed)."""
    if setting == "cpus":
        return _cpus_out(version, value, host_cpus)
    return LIMITS[setting].out(version, value)


def config_value(setting: str, version: str, value: int | str | bool) -> str:
    """A setting's value as its config line holds it (on a host of `version`)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if setting in AUTOSTART:
        return str(value)
    return cgroup_value(setting, version, value)


def autostart_value(setting: str, text: str) -> int | bool | str | None:
    """A config's lxc.start.* value as the API shows it."""
    text = text.strip()
    if not text:
        return None
    try:
        number = int(text)
    except ValueError:
        return text
    return number != 0 if setting == "autostart" else number
