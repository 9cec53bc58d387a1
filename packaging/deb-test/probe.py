"""In-container probe for the package test: gathers facts in the booted test root, decides nothing.

Copied into the test root and run there by run.py through lxc-attach (python3-lxc), with only
the standard library. Every subcommand prints one JSON document on stdout. A token is read from
a file named on the command line, never passed as an argument, so it shows up in no process list.
"""
from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import socket
import stat
import subprocess
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


def port_holders(port: int) -> list[dict[str, object]]:
    """Processes holding a socket that listens on `port`: /proc/net/tcp{,6} inodes, /proc/*/fd."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    found: list[dict[str, object]] = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isascii() and p.isdigit()), key=int):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            if links & inodes:
                with open(f"/proc/{pid}/comm") as f:
                    found.append({"pid": int(pid), "comm": f.read().strip(),
                                  "uid": os.stat(f"/proc/{pid}").st_uid})
        except OSError:
            continue
    return found


# How a squatter might try to take a port: plain, with SO_REUSEADDR, with SO_REUSEPORT, and on
# the wildcard address (which covers loopback too).
BIND_ATTEMPTS = {"plain": ("127.0.0.1", ()), "reuseaddr": ("127.0.0.1", (socket.SO_REUSEADDR,)),
                 "reuseport": ("127.0.0.1", (socket.SO_REUSEPORT,)),
                 "wildcard+reuse": ("0.0.0.0",  # noqa: S104 (a squatter's try)
                                    (socket.SO_REUSEADDR, socket.SO_REUSEPORT))}


def bind_as(user: str, port: int) -> dict[str, str]:
    """Try every BIND_ATTEMPTS as `user` (a forked child that dropped to it): errno names."""
    entry = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            out = {}
            for name, (host, options) in BIND_ATTEMPTS.items():
                with socket.socket() as s:
                    for option in options:
                        s.setsockopt(socket.SOL_SOCKET, option, 1)
                    try:
                        s.bind((host, port))
                        s.listen(1)
                        out[name] = "bound"
                    except OSError as exc:
                        out[name] = errno.errorcode.get(exc.errno or 0, str(exc))
            os.write(write_end, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        text = f.read()
    os.waitpid(pid, 0)
    result: dict[str, str] = json.loads(text)
    return result


def restart_curl(times: int, unit: str, url: str, curl_config: str) -> list[dict[str, object]]:
    """`systemctl restart unit` then at once one curl (no retry, no sleep), `times` over."""
    rounds: list[dict[str, object]] = []
    for _ in range(times):
        started = time.monotonic()
        restart = subprocess.run(["systemctl", "restart", unit], capture_output=True, text=True)
        restarted = time.monotonic()
        curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                               "--max-time", "30", "-K", curl_config, url],
                              capture_output=True, text=True)
        rounds.append({"restart_rc": restart.returncode, "restart_s": round(restarted - started, 3),
                       "curl_rc": curl.returncode, "http": curl.stdout.strip(),
                       "curl_s": round(time.monotonic() - restarted, 3),
                       "error": (restart.stderr + curl.stderr).strip()[-300:]})
    return rounds


def panel_session(base: str, credentials_file: str, container: str) -> dict[str, object]:
    """What the panel's page does, with the standard library: load the page, sign in with the
    host account in `credentials_file` (JSON, never argv), stop and start `container` with the
    session cookie and the page's header, try a change without that header, sign out."""
    if not base.startswith("http://127.0.0.1:"):
        raise ValueError(f"the probe only talks to the loopback API, not {base}")
    origin = base.rstrip("/")
    out: dict[str, object] = {}

    def call(method: str, path: str, body: object = None, cookie: str = "",
             page_header: bool = True) -> tuple[int, object, str]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(origin + path, data=data, method=method)  # noqa: S310
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if cookie:
            req.add_header("Cookie", cookie)
        if page_header:
            req.add_header("X-LWP-Request", "1")
            req.add_header("Origin", origin)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (checked)
                status, raw, headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, raw, headers = exc.code, exc.read(), exc.headers
        try:
            parsed: object = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")[:200]
        return status, parsed, "; ".join(headers.get_all("Set-Cookie") or [])

    status, page, _ = call("GET", "/", page_header=False)
    out["page"] = {"status": status, "is_html": isinstance(page, str) and "<html" in page.lower()}
    with open(credentials_file) as f:
        credentials = json.load(f)
    status, body, set_cookie = call("POST", "/api/v1/session", credentials)
    out["sign_in"] = {"status": status, "body": body,
                      "httponly": "httponly" in set_cookie.lower(),
                      "samesite_strict": "samesite=strict" in set_cookie.lower()}
    cookie = set_cookie.split(";", 1)[0]
    for action in ("stop", "start"):
        status, body, _ = call("POST", f"/api/v1/containers/{container}", {"action": action},
                               cookie)
        out[action] = {"status": status, "body": body}
    status, body, _ = call("POST", f"/api/v1/containers/{container}", {"action": "stop"},
                           cookie, page_header=False)
    out["without_header"] = {"status": status, "body": body}
    status, body, _ = call("DELETE", "/api/v1/session", cookie=cookie)
    out["sign_out"] = {"status": status}
    status, body, _ = call("GET", "/api/v1/containers", cookie=cookie)
    out["after_sign_out"] = {"status": status}
    return out


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
    elif cmd == "port-holders":
        result = port_holders(int(args[0]))
    elif cmd == "bind-as":
        result = bind_as(args[0], int(args[1]))
    elif cmd == "panel-session":
        result = panel_session(args[0], args[1], args[2])
    elif cmd == "restart-curl":
        result = restart_curl(int(args[0]), args[1], args[2], args[3])
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
