"""Reading /etc/lwp/lwp.toml: typed getters that name the bad key, and the shared defaults.

Both daemons read the same file; each takes its own section plus the shared top-level keys
(`socket`, `state_dir`), so the two can never disagree about where the other lives.
"""
from __future__ import annotations

import os
import tomllib
from typing import Any, TypeVar, cast

DEFAULT_CONFIG = "/etc/lwp/lwp.toml"
DEFAULT_SOCKET = "/run/lwp/helperd.sock"
DEFAULT_STATE_DIR = "/var/lib/lwp"
DEFAULT_AUDIT_DIR = "/var/log/lwp"
SERVICE_USER = "lwp"
# [tokens] min_length when unset: the shortest client-chosen token either daemon accepts.
DEFAULT_TOKEN_MIN_LENGTH = 20

T = TypeVar("T")


class ConfigError(Exception):
    pass


class Section:
    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def get(self, key: str, kind: type[T], default: T) -> T:
        value = self.data.get(key, default)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{self.where}{key}: must be {kind.__name__}")
        return cast(T, value)

    def strings(self, key: str, default: list[str]) -> list[str]:
        value = self.data.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.where}{key}: must be a list of strings")
        return list(value)

    def section(self, key: str) -> Section:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where}{key}: must be a table")
        return Section(value, f"{self.where}{key}.")


def load(path: str | None) -> Section:
    """The file as a Section. Without a path: the default file if present, else all defaults;
    a path given explicitly must exist."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return Section({}, "")
        path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            return Section(tomllib.load(f), "")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
