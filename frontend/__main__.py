"""Run the frontend: `python3 -m frontend --config /etc/lwp/lwp.toml` (as the service user).

It serves on the socket systemd passes (lwp-frontend.socket: fd 3, LISTEN_PID/LISTEN_FDS) when
there is one, and binds `[frontend] listen`/`port` itself otherwise (see frontend.serve)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from frontend import config, serve
from protocol.config import DEFAULT_CONFIG, ConfigError


def main() -> int:
    parser = argparse.ArgumentParser(prog="lwp-frontend", description=__doc__)
    parser.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    try:
        cfg = config.load(args.config)
        if os.geteuid() == 0:
            logging.getLogger("lwp.frontend").warning(
                "the frontend is running as root; run it as the unprivileged service user")
        serve.run(cfg)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
