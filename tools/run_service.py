#!/usr/bin/python3
"""`make run`: start the helper (root) and the frontend (as user lwp) from this checkout.

Uses packaging/lwp.toml (the shipped configuration) unless LWP_CONFIG names another file,
creates the service user if missing, prints a fresh admin token once, and stops both daemons
on Ctrl-C. For a real installation use the Debian package instead.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
CONFIG = os.environ.get("LWP_CONFIG", os.path.join(ROOT, "packaging", "lwp.toml"))
sys.path.insert(0, ROOT)

from protocol.config import SERVICE_USER  # noqa: E402


def main() -> int:
    if os.geteuid() != 0:
        print("run this as root (the helper must be root)", file=sys.stderr)
        return 1
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["adduser", "--system", "--group", "--no-create-home",
                        "--home", "/nonexistent", SERVICE_USER], check=True)
    from helperd import config
    cfg = config.load(CONFIG)
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"}
    helper = subprocess.Popen([PY, "-m", "helperd", "--config", CONFIG], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(cfg.socket):
            if helper.poll() is not None or time.monotonic() > deadline:
                print("the helper did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        token = subprocess.run(
            [PY, "-m", "helperd.admin", "--config", CONFIG, "token", "add", "--scope", "admin",
             "--description", "make run"], cwd=ROOT, env=env, check=True,
            stdout=subprocess.PIPE, text=True).stdout.strip()
        print(f"\nadmin token (shown once): {token}\n"
              f"try: curl -H 'private-token: {token}' http://127.0.0.1:5000/api/v1/containers\n",
              flush=True)
        frontend = subprocess.Popen(
            ["runuser", "-u", SERVICE_USER, "-g", SERVICE_USER, "--", PY, "-m", "frontend",
             "--config", CONFIG], cwd=ROOT, env=env)
        try:
            return frontend.wait()
        except KeyboardInterrupt:
            frontend.terminate()
            frontend.wait()
            return 0
    finally:
        helper.terminate()
        helper.wait()


if __name__ == "__main__":
    sys.exit(main())
