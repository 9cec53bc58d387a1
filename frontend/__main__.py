"""Run the frontend: `python3 -m frontend --config /etc/lwp/lwp.toml` (as the service user)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from frontend import config
from frontend.accesslog import AccessLogger
from frontend.app import make_app
from protocol.config import DEFAULT_CONFIG, ConfigError


def main() -> int:
    parser = argparse.ArgumentParser(prog="lwp-frontend", description=__doc__)
    parser.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() == 0:
        logging.getLogger("lwp.frontend").warning(
            "the frontend is running as root; run it as the unprivileged service user")
    web.run_app(make_app(cfg), host=cfg.listen, port=cfg.port, access_log_class=AccessLogger,
                print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
