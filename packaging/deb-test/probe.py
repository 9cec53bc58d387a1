"""In-container probe for the package test: gathers facts in the booted test root, decides nothing.

Copied into the test root and run there by run.py through lxc-attach (python3-lxc), with only
the standard library. Every subcommand prints one JSON document on stdout. A token is read from
a file named on the command line, never passed as an argument, so it shows up in no process list.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence


def http(method: str, url: str, body: str | None, token_file: str | None) -> dict[str, object]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the probe only talks to the loopback API, not {url}")
    data = None if body is None else body.encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (checked)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token_file:
        with open(token_file) as f:
            req.add_header("Private-Token", f.read().strip())
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (checked)
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    except OSError as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
    try:
        parsed: object = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")[:500]
    return {"status": status, "body": parsed, "content_type": ctype,
            "seconds": round(time.monotonic() - started, 3)}


def wait_http(url: str, token_file: str, deadline: float) -> dict[str, object]:
    """Poll until the API answers 200 (or the deadline passes); report how long it took."""
    started = time.monotonic()
    while True:
        result = http("GET", url, None, token_file)
        if result["status"] == 200 or time.monotonic() - started > deadline:
            result["waited"] = round(time.monotonic() - started, 2)
            return result
        time.sleep(0.2)


def stat_paths(paths: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError as exc:
            out[path] = {"error": exc.strerror}
            continue
        out[path] = {"user": _name(pwd.getpwuid, st.st_uid),
                     "group": _name(grp.getgrgid, st.st_gid),
                     "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                     "type": ("socket" if stat.S_ISSOCK(st.st_mode) else
                              "dir" if stat.S_ISDIR(st.st_mode) else
                              "file" if stat.S_ISREG(st.st_mode) else "other")}
    return out


def _name(lookup: Callable[[int], Sequence[object]], ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


def proc(pid: int) -> dict[str, object]:
    """What a process inherited: ids, capabilities bounding set, no_new_privs, seccomp, cgroups."""
    fields: dict[str, object] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Name", "Uid", "Gid", "PPid", "CapBnd", "CapEff", "NoNewPrivs", "Seccomp",
                       "Seccomp_filters"):
                fields[key] = value.strip()
    with open(f"/proc/{pid}/cgroup") as f:
        fields["cgroup"] = f.read().strip().splitlines()
    fields["mntns"] = os.readlink(f"/proc/{pid}/ns/mnt")
    fields["cmdline"] = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
    return fields


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "http":
        method, url = args[0], args[1]
        body = args[2] if len(args) > 2 and args[2] != "-" else None
        token_file = args[3] if len(args) > 3 else None
        result: object = http(method, url, body, token_file)
    elif cmd == "wait-http":
        result = wait_http(args[0], args[1], float(args[2]))
    elif cmd == "stat":
        result = stat_paths(args)
    elif cmd == "proc":
        result = proc(int(args[0]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
