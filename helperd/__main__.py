"""Run the root helper: `python3 -m helperd --config /etc/lwp/lwp.toml`."""
from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import signal
import sys

from helperd import config
from helperd.containers import Containers
from helperd.server import Helper, listening_socket
from helperd.tokenstore import TokenStore
from protocol.config import DEFAULT_CONFIG, ConfigError

log = logging.getLogger("lwp.helperd")


async def serve(cfg: config.HelperConfig) -> None:
    gid = grp.getgrnam(cfg.socket_group).gr_gid
    helper = Helper(cfg, Containers(cfg),
                    TokenStore(cfg.state_dir, gid, cfg.token_min_length))
    sock = listening_socket(cfg, gid)
    server = await asyncio.start_unix_server(helper.handle, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("helper serving on %s (lxcpath %s)", cfg.socket, cfg.lxcpath)
    async with server:
        await stop.wait()
    log.info("helper stopping")


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
    asyncio.run(serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
