"""Listening: where (loopback unless said otherwise), how (TLS 1.2+), and behind the guard.

Plain HTTP on a non-loopback address is refused unless the configuration allows it by name, judged
on the address really listened on (a socket systemd passed must be the configured one); every
connection goes through frontend.guard, and a TLS handshake has the same deadline.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
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


def check_exposure(cfg: FrontendConfig, host: str | None = None) -> None:
    """Refuse plain HTTP beyond loopback unless allowed explicitly, and then say so loudly.

    `host` is the address really listened on when it is known (a socket systemd passed)."""
    where = cfg.listen if host is None else host
    if cfg.tls_cert or (is_loopback(cfg.listen) and is_loopback(where)):
        return
    if not cfg.allow_plain_http_on_network:
        raise ConfigError(
            f"frontend.listen = {cfg.listen!r}, listening on {where!r}: not a loopback address: "
            "tokens would cross the network in clear. Configure tls_cert and tls_key, or put a "
            "TLS reverse proxy in front and set allow_plain_http_on_network = true")
    log.warning("serving plain HTTP on %s: tokens cross the network in clear unless a TLS "
                "reverse proxy is in front (allow_plain_http_on_network = true)", where)


# What systemd's socket activation (sd_listen_fds(3)) puts in the environment of the service.
LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
SD_LISTEN_FDS_START = 3


def configured_addresses(cfg: FrontendConfig) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `[frontend] listen` names: itself if a literal, else what it resolves to."""
    try:
        return {ipaddress.ip_address(cfg.listen)}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(cfg.listen, cfg.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"frontend.listen = {cfg.listen!r} does not resolve: {exc}") from None
    return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}


def check_passed(sock: socket.socket, cfg: FrontendConfig) -> str:
    """A passed socket must be a listening TCP socket on `[frontend] listen` and `port`.

    One source of truth: were a drop-in to move the socket elsewhere, the configuration (which
    the exposure check and the operator read) would no longer say where tokens arrive."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM \
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ConfigError("the socket systemd passed is not a listening TCP socket "
                          "(lwp-frontend.socket needs one ListenStream=ADDRESS:PORT)")
    host, port = sock.getsockname()[:2]
    address = ipaddress.ip_address(str(host).split("%")[0])
    if port != cfg.port or address not in configured_addresses(cfg):
        raise ConfigError(
            f"systemd passed a socket on {host} port {port} but [frontend] says listen = "
            f"{cfg.listen!r}, port = {cfg.port}: make lwp-frontend.socket's ListenStream= and "
            "/etc/lwp/lwp.toml agree")
    return str(address)


def passed_socket() -> socket.socket | None:
    """The socket systemd passed (socket activation), else None; the variables are consumed."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None  # not for this process (e.g. inherited from a parent that was activated)
    count = os.environ.get("LISTEN_FDS", "")
    for name in LISTEN_ENV:  # children must not take the socket for theirs
        os.environ.pop(name, None)
    if count != "1":
        raise ConfigError(f"systemd passed {count or 'no'} sockets; lwp-frontend.socket must "
                          "have exactly one ListenStream=")
    try:
        os.set_inheritable(SD_LISTEN_FDS_START, False)
        return socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise ConfigError(f"the socket systemd passed (fd {SD_LISTEN_FDS_START}) is not usable: "
                          f"{exc.strerror}") from None


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
    """Listen until `stop` is set, then close every connection and the app.

    On the socket systemd passed if there is one (it holds the port while the frontend is not
    running, so no other local user can take it), else on one bound here."""
    sock = passed_socket()
    try:
        check_exposure(cfg, None if sock is None else check_passed(sock, cfg))
    except ConfigError:
        if sock is not None:
            sock.close()  # only this process's copy: systemd keeps the port
        raise
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

    handshake = cfg.header_timeout if ctx else None
    if sock is None:
        listener = await loop.create_server(
            connection, cfg.listen, cfg.port, ssl=ctx, backlog=ACCEPT_BURST,
            reuse_address=True, ssl_handshake_timeout=handshake)
    else:
        listener = await loop.create_server(connection, sock=sock, ssl=ctx, backlog=ACCEPT_BURST,
                                            ssl_handshake_timeout=handshake)
    log.info("listening on %s port %d (%s%s), at most %d connections, %g s per request",
             cfg.listen, cfg.port, "TLS" if ctx else "plain HTTP",
             ", on the passed socket" if sock is not None else "", cap, cfg.header_timeout)
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
