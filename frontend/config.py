"""The frontend's settings: the [frontend] section plus the shared keys of lwp.toml."""
from __future__ import annotations

from dataclasses import dataclass

from protocol import config


@dataclass(frozen=True)
class FrontendConfig:
    socket: str
    state_dir: str
    listen: str
    port: int
    max_body: int


def load(path: str | None) -> FrontendConfig:
    top = config.load(path)
    sec = top.section("frontend")
    cfg = FrontendConfig(
        socket=top.get("socket", str, config.DEFAULT_SOCKET),
        state_dir=top.get("state_dir", str, config.DEFAULT_STATE_DIR),
        listen=sec.get("listen", str, "127.0.0.1"),
        port=sec.get("port", int, 5000),
        max_body=sec.get("max_body", int, 64 * 1024),
    )
    if not 0 < cfg.port < 65536:
        raise config.ConfigError("frontend.port: must be 1-65535")
    if not 0 < cfg.max_body <= 1024 * 1024:
        raise config.ConfigError("frontend.max_body: must be 1 byte to 1 MiB")
    return cfg
