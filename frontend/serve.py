"""Listening: where (loopback unless said otherwise), how (TLS 1.2+), and behind the guard.

Plain HTTP on a non-loopback address is refused unless the configuration allows it by name;
every connection goes through frontend.guard, and a TLS handshake has the same deadline.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import ssl
from collections.abc import Callable

from aiohttp import web
from aiohttp.log import access_logger

from frontend.accesslog import AccessLogger
from frontend.app import make_app
from frontend.config import FrontendConfig
from frontend.guard import ACCEPT_BURST, ConnectionGuard, GuardedHandler, raise_fd_limit
from protocol.config import ConfigError

log = logging.getLogger("lwp.frontend")
# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3's suites are all of that kind and are
# configured by OpenSSL itself). Mozilla's "intermediate" profile, without the DHE suites.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything, so it counts as the network


def check_exposure(cfg: FrontendConfig) -> None:
    """Refuse plain HTTP beyond loopback unless allowed explicitly, and then say so loudly."""
    if cfg.tls_cert or is_loopback(cfg.listen):
        return
    if not cfg.allow_plain_http_on_network:
        raise ConfigError(
            f"frontend.listen = {cfg.listen!r} is not a loopback address: tokens would cross "
            "the network in clear. Configure tls_cert and tls_key, or put a TLS reverse proxy "
            "in front and set allow_plain_http_on_network = true")
    log.warning("serving plain HTTP on %s: tokens cross the network in clear unless a TLS "
                "reverse proxy is in front (allow_plain_http_on_network = true)", cfg.listen)


def tls_context(cfg: FrontendConfig) -> ssl.SSLContext | None:
    if not cfg.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # No compression (CRIME), no renegotiation (a cheap CPU drain for a client), and a fresh
    # key share per handshake.
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                    | ssl.OP_SINGLE_ECDH_USE | ssl.OP_CIPHER_SERVER_PREFERENCE)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"frontend.tls_cert/tls_key: {exc}") from None
    return ctx


def route_methods(app: web.Application) -> Callable[[str], list[str]]:
    """The methods the app serves on a path (for the Allow header of a refused method)."""
    def methods(path: str) -> list[str]:
        found: set[str] = set()
        for resource in app.router.resources():
            info = resource.get_info()
            pattern = info.get("pattern")
            if info.get("path") == path or (pattern is not None and pattern.fullmatch(path)):
                found.update(route.method for route in resource)
        return sorted(found)
    return methods


async def serve(cfg: FrontendConfig, stop: asyncio.Event) -> None:
    """Listen until `stop` is set, then close every connection and the app."""
    check_exposure(cfg)
    ctx = tls_context(cfg)
    loop = asyncio.get_running_loop()
    cap = raise_fd_limit(cfg.max_connections)
    app = make_app(cfg)
    guard = ConnectionGuard(cfg.header_timeout, cap, loop, route_methods(app))
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    server: web.Server = runner.server
    server.request_factory = guard.request_factory(server.request_factory)

    def connection() -> GuardedHandler:
        return GuardedHandler(server, guard, loop=loop, access_log_class=AccessLogger,
                              access_log=access_logger, keepalive_timeout=cfg.header_timeout)

    listener = await loop.create_server(
        connection, cfg.listen, cfg.port, ssl=ctx, backlog=ACCEPT_BURST, reuse_address=True,
        ssl_handshake_timeout=cfg.header_timeout if ctx else None)
    log.info("listening on %s port %d (%s), at most %d connections, %g s per request",
             cfg.listen, cfg.port, "TLS" if ctx else "plain HTTP", cap, cfg.header_timeout)
    try:
        await stop.wait()
    finally:
        listener.close()
        await listener.wait_closed()
        await runner.cleanup()


def run(cfg: FrontendConfig) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    asyncio.run(main())
