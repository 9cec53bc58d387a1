"""The frontend's settings: the [frontend] section plus the shared keys of lwp.toml."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from protocol import config

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FrontendConfig:
    socket: str
    state_dir: str
    listen: str
    port: int
    max_body: int
    # TLS: both files or neither. Without them the frontend speaks plain HTTP, which it does
    # on a non-loopback address only when allow_plain_http_on_network says so.
    tls_cert: str = ""
    tls_key: str = ""
    allow_plain_http_on_network: bool = False
    # Peers whose X-Forwarded-For is believed (addresses or networks); nobody else's is.
    trusted_proxies: tuple[Network, ...] = ()
    # Seconds a connection has to deliver a whole request (head and body) after it opened
    # or after its previous response; also the TLS handshake deadline.
    header_timeout: float = 10.0
    # Open connections at most; past it the oldest one still waiting for a request goes.
    max_connections: int = 4096
    # Failed authentications per client address: a burst, then this many per minute.
    auth_failures_burst: int = 10
    auth_failures_per_minute: float = 6.0
    # Client addresses the failure limiter remembers at most (its memory bound).
    auth_limit_clients: int = 10000
    # Authentication-failure log lines per minute at most; the rest are only counted.
    auth_log_per_minute: int = 60
    # Requests per verified token id: a burst, then this many a second (the helper limits
    # the same way on its own side).
    token_requests_burst: int = 10_000
    token_requests_per_second: float = 5000.0
    # The shared [tokens] min_length (the helper enforces it; the OpenAPI document shows it).
    token_min_length: int = config.DEFAULT_TOKEN_MIN_LENGTH
    # Where browsers see the panel (a reverse proxy's path prefix): the session cookie's Path.
    base_path: str = "/"
    # Public origins (scheme://host[:port]) a page may come from besides the one each request
    # names in its Host header: the proxy's, when it terminates TLS or rewrites Host.
    origins: tuple[str, ...] = ()


def load(path: str | None) -> FrontendConfig:
    top = config.load(path)
    sec = top.section("frontend")
    d = FrontendConfig  # its field defaults are the documented ones
    cfg = FrontendConfig(
        socket=top.get("socket", str, config.DEFAULT_SOCKET),
        state_dir=top.get("state_dir", str, config.DEFAULT_STATE_DIR),
        listen=sec.get("listen", str, "127.0.0.1"),
        port=sec.get("port", int, 5000),
        max_body=sec.get("max_body", int, 64 * 1024),
        tls_cert=sec.get("tls_cert", str, d.tls_cert),
        tls_key=sec.get("tls_key", str, d.tls_key),
        allow_plain_http_on_network=sec.get("allow_plain_http_on_network", bool,
                                            d.allow_plain_http_on_network),
        trusted_proxies=_networks(sec.strings("trusted_proxies", [])),
        header_timeout=sec.get("header_timeout", float, d.header_timeout),
        max_connections=sec.get("max_connections", int, d.max_connections),
        auth_failures_burst=sec.get("auth_failures_burst", int, d.auth_failures_burst),
        auth_failures_per_minute=sec.get("auth_failures_per_minute", float,
                                         d.auth_failures_per_minute),
        auth_limit_clients=sec.get("auth_limit_clients", int, d.auth_limit_clients),
        auth_log_per_minute=sec.get("auth_log_per_minute", int, d.auth_log_per_minute),
        token_requests_burst=sec.get("token_requests_burst", int, d.token_requests_burst),
        token_requests_per_second=sec.get("token_requests_per_second", float,
                                          d.token_requests_per_second),
        token_min_length=top.section("tokens").get("min_length", int, d.token_min_length),
        base_path=sec.get("base_path", str, d.base_path),
        origins=tuple(origin.lower() for origin in sec.strings("origins", [])),
    )
    if not 0 < cfg.port < 65536:
        raise config.ConfigError("frontend.port: must be 1-65535")
    if not 0 < cfg.max_body <= 1024 * 1024:
        raise config.ConfigError("frontend.max_body: must be 1 byte to 1 MiB")
    _check_limits(cfg)
    if not BASE_PATH_RE.fullmatch(cfg.base_path):
        raise config.ConfigError("frontend.base_path: must be / or /<segments>/ (letters, "
                                 "digits, - _ . only)")
    for origin in cfg.origins:
        if not ORIGIN_RE.fullmatch(origin):
            raise config.ConfigError(f"frontend.origins: {origin!r} is not scheme://host[:port]")
    return cfg


# A cookie Path and an Origin, as a header may carry them: nothing that could split one.
BASE_PATH_RE = re.compile(r"/([A-Za-z0-9._-]+/)*")
ORIGIN_RE = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")


# key -> (lowest, highest) allowed value: a typo must not disable a defence.
LIMITS: dict[str, tuple[float, float]] = {
    "header_timeout": (0.5, 300),
    "max_connections": (16, 1_000_000),
    "auth_failures_burst": (1, 1_000_000),
    "auth_failures_per_minute": (0.01, 1_000_000),
    "auth_limit_clients": (16, 10_000_000),
    "auth_log_per_minute": (1, 100_000),
    "token_requests_burst": (1, 1_000_000),
    "token_requests_per_second": (0.01, 1_000_000),
}


def _check_limits(cfg: FrontendConfig) -> None:
    for key, (low, high) in LIMITS.items():
        if not low <= getattr(cfg, key) <= high:
            raise config.ConfigError(f"frontend.{key}: must be {low:g} to {high:g}")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise config.ConfigError("frontend.tls_cert and frontend.tls_key: give both or neither")


def _networks(values: list[str]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as exc:
        raise config.ConfigError(f"frontend.trusted_proxies: {exc}") from None
