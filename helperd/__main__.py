"""Run the root helper: `python3 -m helperd --config /etc/lwp/lwp.toml`."""
from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import signal
import sys

from helperd import audit, config
from helperd.audit.forward import Forwarder
from helperd.containers import Containers
from helperd.server import Helper
from helperd.startup import Listener, cap_malloc_arenas, claim_socket_path, listening_socket
from helperd.tokenstore import TokenStore
from protocol.config import DEFAULT_CONFIG, ConfigError

log = logging.getLogger("lwp.helperd")
# How long a stop waits for requests under way (a create may take minutes; systemd's own stop
# timeout is 90 s, so stay under it and let recovery settle whatever is still running).
SHUTDOWN_GRACE = 60.0


async def serve(cfg: config.HelperConfig) -> None:
    gid = grp.getgrnam(cfg.socket_group).gr_gid
    claim_socket_path(cfg, gid)  # before anything else: refuses to start beside a live helper
    tokens = TokenStore(cfg.state_dir, gid, cfg.token_min_length)
    forward = Forwarder() if cfg.audit_syslog else None
    writer, in_flight = audit.open_trail(
        cfg.audit_dir, cfg.audit_key_file, cfg.audit_rotate_bytes, cfg.audit_group,
        forward if forward is not None and forward.active else None,
        cfg.audit_window, cfg.audit_window_keys)
    cap_malloc_arenas()  # before the helper's read pool makes its threads
    helper = Helper(cfg, Containers(cfg), tokens, writer)
    # Before the socket exists: nothing new may start until the last run's loose ends are tied.
    if in_flight:
        await helper.recover(in_flight)
    helper.workers.fill()  # before the socket exists, so no worker ever holds a copy of it
    listener: Listener | None = None
    try:
        listener = listening_socket(cfg, gid)
        await _serve_until_stopped(cfg, helper, listener)
    finally:
        if listener is not None:
            listener.remove()  # else the next start meets a socket nobody answers on
        helper.workers.close()
        await writer.close()


async def _serve_until_stopped(cfg: config.HelperConfig, helper: Helper,
                               listener: Listener) -> None:
    server = await asyncio.start_unix_server(helper.handle, sock=listener.sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("helper serving on %s (lxcpath %s)", cfg.socket, cfg.lxcpath)
    async with server:
        await stop.wait()
        server.close()  # no new connections; requests under way may finish
        log.info("helper stopping: waiting up to %g s for requests under way", SHUTDOWN_GRACE)
        if not await helper.drain(SHUTDOWN_GRACE):
            log.warning("requests still under way at shutdown: the next start records them "
                        "as interrupted")


def main() -> int:
    parser = argparse.ArgumentParser(prog="lwp-helperd", description=__doc__)
    parser.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(name)s %(levelname)s %(message)s")
    if os.geteuid() != 0:
        print("lwp-helperd must run as root", file=sys.stderr)
        return 1
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(cfg))
    except ConfigError as exc:  # found at start: a directory or socket the helper refuses
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (audit.AuditError, OSError) as exc:
        print(f"the audit trail cannot be opened: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
