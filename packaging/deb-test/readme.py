"""`make readme-test`: the README's two commands and its curl walk-through, as written, on a
fresh booted Debian 12 (systemd as PID 1) that has lxcbr0 as a real host does.

Reuses the package test (run.py): its cached debootstrap of bookworm is copied to this test's
own lxcpath (/var/tmp/lwp-readme-test), given a drop-in that lets lxc-net.service run inside
LXC, a copy of this checkout at /root/lxc-web-panel, and one network link: a veth on a bridge
the test makes on the host (lwprdm0, no route beyond it, no NAT), where a forward HTTP proxy of
the test's own lets through exactly the Debian archive hosts of the host's apt sources (http)
and tunnels (CONNECT) to pypi.org:443 and files.pythonhosted.org:443 only (the .venv tools;
pip verifies them with the host's CA bundle). Inside:
the README's prerequisites (make, curl), `make run`, every command of the README's `### curl`
block with only `$T` substituted (each must answer 200), a SIGTERM that must leave nothing of
make run behind, a second `make run` that must print the same token, and `make test` run as
root at a console would (nested LXC: the guest is unconfined, nesting.conf, cgroups writable).
Each step is timed, and make test's parts. Container, lxcpath, proxy and bridge are removed
afterwards, on failure too (make test's log stays in /var/tmp). Run as root.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as debtest  # noqa: E402 — the package test's root, boot and report
from run import Failed, Inside, R, log, step  # noqa: E402

TOP = debtest.TOP
NAME = "lwp-readme-test"
RUN = Path("/var/tmp/lwp-readme-test")  # this test's own lxcpath, removed afterwards
BRIDGE = "lwprdm0"
HOST_ADDR, GUEST_ADDR, PREFIX = "10.213.77.1", "10.213.77.2", 24
PROXY_PORT = 3142
PROXY_URL = f"http://{HOST_ADDR}:{PROXY_PORT}/"
# The only tunnels (CONNECT) the proxy opens: PyPI, for what `make test` puts in .venv (ruff,
# the pinned schemathesis). The index and the files it links to; nothing else over https.
# PyPI for the .venv tools; the npm registry for the browser tests' axe-core (one tarball).
TUNNELS = frozenset({("pypi.org", 443), ("files.pythonhosted.org", 443),
                     ("registry.npmjs.org", 443)})
# The host's CA bundle: it is what this machine's https egress is verified against (an
# intercepting proxy's CA among them, where there is one); pip in the guest is given a copy.
HOST_CA = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
GUEST_CA = "/etc/ssl/lwp-readme-test-ca.crt"
CHECKOUT = "/root/lxc-web-panel"
# What the README assumes a fresh Debian 12 has: make (to type `make run`) and curl (it says so).
PREREQUISITES = ["make", "curl"]
API_PORT = 5000
# root's environment at a console (login(1) sets these), without a terminal.
# And https_proxy and the CA bundle, as a host behind an intercepting proxy has them
# (/etc/environment) for HTTPS clients such as the browser tests' fetch of axe-core; loopback is
# never proxied.
ROOT_LOGIN = [f"PATH={debtest.PATH}", "HOME=/root", "USER=root", "LOGNAME=root",
              "SHELL=/bin/bash", "LANG=C.UTF-8", f"https_proxy={PROXY_URL}",
              "no_proxy=127.0.0.1,localhost,::1", f"SSL_CERT_FILE={GUEST_CA}"]
# make test's whole output: outside the test's lxcpath, so that it outlives the cleanup.
MAKE_TEST_LOG = RUN.parent / "lwp-readme-test-make-test.log"
README_COMMANDS = ["make run", "make test"]  # the README's commands table, in its order
# What `make test` echoes as each of its parts begins (make prints each command it runs).
MAKE_TEST_PARTS = (("apt-get update", "test-deps"), ("bin/ruff check", "lint"),
                   ('-m pytest -m "not security"', "unit"),
                   ('bin/pip install -q "schemathesis', "security"))
MAKE_TEST_WAIT = 3600  # the whole suite, nested, on a busy 2-core machine: generous
PYTEST_RESULT = re.compile(r"^=+ .*\b(passed|failed|error|errors)\b.* in [0-9.]+s")
TOKEN_LINE = re.compile(r"^admin token: (\S+)$", re.M)
MAKE_RUN_PARTS = ("run_service.py", "helperd", "frontend")  # a process of make run, by argv
LXC_NET_DROPIN = """# readme-test: Debian skips lxc-net in LXC; this guest stands for a real host.
[Unit]
ConditionVirtualization=
"""
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

sys.path.insert(0, str(TOP))
from tests.test_readme import readme_block  # noqa: E402 — the same parser test_readme.py uses

R.title = "readme-test"


# -- the archive proxy (a child process: `readme.py --proxy ADDR PORT HOST...`) ---------------

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"}


class ArchiveProxy(BaseHTTPRequestHandler):
    """GET/HEAD of http://<allowed host>[:80]/... and CONNECT to TUNNELS only; everything else
    is refused unopened."""
    protocol_version = "HTTP/1.1"
    allowed: frozenset[str] = frozenset()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.forward()

    def do_HEAD(self) -> None:  # noqa: N802
        self.forward()

    def do_CONNECT(self) -> None:  # noqa: N802
        host, sep, port = self.path.rpartition(":")
        if not sep or not port.isdigit() or (host, int(port)) not in TUNNELS:
            self.refuse(f"CONNECT only to {sorted(f'{h}:{p}' for h, p in TUNNELS)}")
            return
        try:
            upstream = socket.create_connection((host, int(port)), timeout=60)
        except OSError as exc:
            self.log_message("FAILED CONNECT %s: %s", self.path, exc)
            self.send_error(502, f"cannot reach {self.path}")
            return
        with upstream:
            self.send_response_only(200, "Connection established")
            self.end_headers()
            self.log_message("ok CONNECT %s 200", self.path)
            relay(self.connection, upstream)
        self.close_connection = True

    def refuse(self, why: str) -> None:
        self.log_message("REFUSED %s %s: %s", self.command, self.path, why)
        self.send_error(403, why)

    def forward(self) -> None:
        url = urlsplit(self.path)
        if url.scheme != "http" or url.hostname not in self.allowed or url.username \
                or (url.port or 80) != 80 or "content-length" in self.headers:
            self.refuse("not an archive host of this machine's apt sources")
            return
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, 80, timeout=60)
        try:
            upstream.request(self.command, path, headers=headers)
            answer = upstream.getresponse()
            self.send_response_only(answer.status, answer.reason)
            has_body = self.command != "HEAD" and answer.status not in (204, 304) \
                and answer.status >= 200
            unknown_length = has_body and answer.length is None
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP and \
                        not (unknown_length and key.lower() == "content-length"):
                    self.send_header(key, value)
            if unknown_length:  # unknown length: delimit by closing
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            while has_body and (chunk := answer.read(65536)):
                self.wfile.write(chunk)
            self.log_message("ok %s %s %d", self.command, self.path, answer.status)
        finally:
            upstream.close()


def relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until one side closes (a CONNECT tunnel: TLS end to end)."""
    peers = {client: upstream, upstream: client}
    for sock in peers:
        sock.settimeout(None)
    with selectors.DefaultSelector() as sel:
        for sock in peers:
            sel.register(sock, selectors.EVENT_READ)
        while events := sel.select(timeout=300):  # idle for 5 minutes: give up the tunnel
            for key, _ in events:
                source = key.fileobj
                assert isinstance(source, socket.socket)
                try:
                    data = source.recv(65536)
                    if data:
                        peers[source].sendall(data)
                        continue
                except OSError:
                    pass  # a reset is an end like any other
                return


def serve_proxy(addr: str, port: int, hosts: list[str]) -> None:
    ArchiveProxy.allowed = frozenset(hosts)
    server = ThreadingHTTPServer((addr, port), ArchiveProxy)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


def archive_hosts() -> list[str]:
    """The http hosts of this machine's own apt sources (deb822 URIs: and one-line deb)."""
    files = [APT_SOURCES[0]] if APT_SOURCES[0].exists() else []
    files += sorted(APT_SOURCES[1].glob("*.sources")) + sorted(APT_SOURCES[1].glob("*.list"))
    uris: list[str] = []
    for path in files:
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["URIs:"]:
                uris += words[1:]
            elif words[:1] == ["deb"]:
                uris += [w for w in words[1:] if "://" in w][:1]
    return sorted({h for u in uris if urlsplit(u).scheme == "http"
                   and (h := urlsplit(u).hostname)})


# -- host side: bridge, proxy, guest --------------------------------------------------------

def bridge_up() -> None:
    debtest.run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    Path(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6").write_text("1\n")
    debtest.run(["ip", "addr", "add", f"{HOST_ADDR}/{PREFIX}", "dev", BRIDGE])
    debtest.run(["ip", "link", "set", BRIDGE, "up"])


def bridge_down() -> None:
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        debtest.run(["ip", "link", "del", BRIDGE], check=False)


def proxy_start(hosts: list[str]) -> subprocess.Popen[bytes]:
    with open(RUN / "proxy.log", "ab") as out:
        proxy = subprocess.Popen([sys.executable, __file__, "--proxy", HOST_ADDR,
                                  str(PROXY_PORT), *hosts], stdout=out, stderr=out)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proxy.poll() is None:
        try:
            socket.create_connection((HOST_ADDR, PROXY_PORT), 1).close()
            return proxy
        except OSError:
            time.sleep(0.1)
    raise Failed(f"the archive proxy did not start: {(RUN / 'proxy.log').read_text()[-500:]}")


def proxy_stop(proxy: subprocess.Popen[bytes] | None) -> None:
    if proxy is not None and proxy.poll() is None:
        proxy.terminate()
        proxy.wait(10)
    log_file = RUN / "proxy.log"
    if log_file.exists():
        lines = log_file.read_text(errors="replace").splitlines()
        refused = [line for line in lines if "REFUSED" in line]
        log(f"archive proxy: {sum(' ok ' in line for line in lines)} requests passed, "
            f"{len(refused)} refused {refused[:5]}")


def copy_checkout(dest: Path) -> int:
    """The files git knows (git ls-files of HEAD's index), from the working tree."""
    names = debtest.run(["git", "-C", str(TOP), "ls-files", "-z"]).stdout.split("\0")
    copied = 0
    for name in filter(None, names):
        src = TOP / name
        if src.is_file() and not name.startswith((".venv/", "build/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
            copied += 1
    return copied


def prepare_guest(rootfs: Path) -> None:
    (rootfs / "etc/hostname").write_text(f"{NAME}\n")
    # What Debian's installer writes and debootstrap does not: without it `localhost` does not
    # resolve (the guest has no DNS) and the frontend's listen = "localhost" test cannot pass.
    (rootfs / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{NAME}\n\n"
                                      "::1\tlocalhost ip6-localhost ip6-loopback\n"
                                      "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
    (rootfs / "etc/apt/apt.conf.d/90lwp-readme-test-proxy").write_text(
        f'// readme-test: the archive through the test\'s proxy (the guest has no other route)\n'
        f'Acquire::http::Proxy "{PROXY_URL}";\n')
    # What a host behind a proxy configures for `make test`: pip (the .venv tools, from PyPI
    # through the proxy's tunnels) and root's wget (lxc-debian's debootstrap, for the debian
    # template test, from the archive). Files, not an environment: the tests' own loopback
    # HTTP clients must not be sent to a proxy.
    (rootfs / GUEST_CA.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HOST_CA, rootfs / GUEST_CA.lstrip("/"))
    (rootfs / "etc/pip.conf").write_text(
        f"# readme-test: PyPI through the test's proxy, verified with the host's CA bundle\n"
        f"[global]\nproxy = {PROXY_URL}\ncert = {GUEST_CA}\n")
    (rootfs / "root/.wgetrc").write_text(
        f"# readme-test: the archive through the test's proxy (debootstrap uses wget)\n"
        f"use_proxy = on\nhttp_proxy = {PROXY_URL}\n")
    dropin = rootfs / "etc/systemd/system/lxc-net.service.d"
    dropin.mkdir(parents=True)
    (dropin / "readme-test.conf").write_text(LXC_NET_DROPIN)
    (rootfs / "root").chmod(0o700)
    count = copy_checkout(rootfs / CHECKOUT.lstrip("/"))
    R.check(f"{count} files of this checkout copied to {CHECKOUT} (/root is 0700)",
            count > 0 and (rootfs / CHECKOUT.lstrip("/") / "Makefile").is_file())


def guest_net() -> str:
    # No gateway: the guest reaches the proxy on the bridge's subnet and nothing else.
    return "\n".join(("lxc.net.0.type = veth", f"lxc.net.0.link = {BRIDGE}",
                      "lxc.net.0.flags = up", "lxc.net.0.name = eth0",
                      f"lxc.net.0.ipv4.address = {GUEST_ADDR}/{PREFIX}"))


def guest_pids(ins: Inside) -> list[tuple[int, str]]:
    """(host pid, argv) of every process in the guest's pid namespace, read from the host."""
    ns = os.readlink(f"/proc/{ins.c.init_pid}/ns/pid")
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append((int(pid), argv.strip()))
    return found


def guest_listening(ins: Inside, port: int) -> bool:
    """Whether anything listens on `port` in the guest's network namespace."""
    for table in ("tcp", "tcp6"):
        rows = Path(f"/proc/{ins.c.init_pid}/net/{table}").read_text().splitlines()[1:]
        if any(r.split()[3] == "0A" and int(r.split()[1].rsplit(":", 1)[1], 16) == port
               for r in rows):
            return True
    return False


# -- inside the guest -------------------------------------------------------------------------

TOKEN_SHAPE = re.compile(r"lwp_[A-Za-z0-9_-]{16,}")  # any token an answer or a log carries


def redact(text: str, token: str = "") -> str:
    """No token in this test's output: the one make run printed, nor any an answer carries."""
    return TOKEN_SHAPE.sub("<token>", text.replace(token, "<token>") if token else text)


def make_run_start(ins: Inside, n: int, state: dict[str, Any]) -> str:
    """`make run` as root in the checkout, as a transient unit; returns the token it printed.

    KillMode=process: `systemctl stop` sends SIGTERM to make alone, as `kill` would, so what
    make run leaves behind is make run's doing, not systemd's."""
    unit = f"lwp-make-run-{n}"
    state["unit"] = unit
    out = f"/root/make-run-{n}.log"
    ins.out(["systemd-run", f"--unit={unit}", f"--working-directory={CHECKOUT}",
             "--setenv=HOME=/root", "-p", "KillMode=process", "-p", "TimeoutStopSec=60",
             "-p", f"StandardOutput=file:{out}", "-p", f"StandardError=file:{out}",
             "make", "run"])
    log_file = ins.rootfs / out.lstrip("/")
    started = time.monotonic()
    while time.monotonic() - started < 480:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        found = TOKEN_LINE.search(text)
        if found:
            took = time.monotonic() - started
            after = text[found.end():].lstrip("\n").splitlines()[:1]
            R.check(f"`make run` #{n} printed the admin token after {took:.1f} s", True,
                    after[0].strip() if after else "")
            for line in text.splitlines():
                if line.startswith("make run:"):
                    log(f"  make run said: {redact(line, found.group(1))}")
            return found.group(1)
        if ins.active(unit)[unit] not in ("active", "activating"):
            break
        time.sleep(0.5)
    text = log_file.read_text(errors="replace") if log_file.exists() else "(no output)"
    raise Failed(f"`make run` #{n} printed no admin token: {text.strip()[-2000:]}")


def make_run_stop(ins: Inside, state: dict[str, Any]) -> None:
    if "unit" not in state:
        raise Failed("make run is not running")
    unit = state.pop("unit")
    started = time.monotonic()
    rc, out, err = ins.run(["systemctl", "stop", unit], timeout=90)
    took = time.monotonic() - started
    R.check(f"systemctl stop {unit} (SIGTERM to make) returned ({took:.1f} s)", rc == 0,
            (out + err).strip())
    left = [(pid, argv) for pid, argv in guest_pids(ins)
            if any(part in argv for part in MAKE_RUN_PARTS)]
    R.check("no process of make run is left (helper, its workers, frontend, runner)", not left,
            left)
    R.check(f"port {API_PORT} is free again", not guest_listening(ins, API_PORT))
    copy = Path(f"/proc/{ins.c.init_pid}/root/run/lwp/make-run")
    R.check("the frontend's copy /run/lwp/make-run is removed", not copy.exists())
    for pid, _ in left:  # so that the next run starts clean even after a failure here
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it was on its way out


def curl(argv: list[str], ins: Inside) -> tuple[int, str, str]:
    rc, out, err = ins.run([*argv, "-sS", "-w", "\n%{http_code}"], timeout=150)
    body, _, status = out.rpartition("\n")
    return rc, status, (body + err).strip()


def step_guest(rootfs: Path, hosts: list[str], state: dict[str, Any]) -> Inside:
    base = debtest.base_root()
    RUN.mkdir(parents=True)
    RUN.chmod(0o700)
    (RUN / NAME).mkdir()
    debtest.run(["cp", "-a", "--reflink=auto", str(base), str(rootfs)])
    prepare_guest(rootfs)
    mirror = urlsplit(debtest.MIRROR).hostname
    R.must(f"the guest's mirror {mirror} is one of the host's archive hosts {hosts}",
           mirror in hosts)
    bridge_up()
    state["proxy"] = proxy_start(hosts)
    R.check(f"bridge {BRIDGE} {HOST_ADDR}/{PREFIX} and the archive proxy on {PROXY_URL} "
            f"(allows {', '.join(hosts)})", True)
    ins = Inside(debtest.boot(rootfs, NAME, RUN, debtest.container_config(
        rootfs, NAME, RUN, guest_net())), rootfs)
    debtest.wait_booted(ins)
    return ins


def step_prerequisites(ins: Inside) -> None:
    rc, out, err = ins.run(["apt-get", "update", "-q"], timeout=300)
    R.must("apt-get update in the guest (through the proxy)", rc == 0, (out + err)[-1500:])
    rc, out, err = ins.run(["apt-get", "install", "-y", "-q", *PREREQUISITES], timeout=300)
    R.must(f"apt-get install {' '.join(PREREQUISITES)} (make is not on a fresh Debian 12; the "
           "README names curl)", rc == 0, (out + err)[-1500:])
    rc, status, body = curl(["curl", "-x", PROXY_URL, "http://example.com/"], ins)
    R.check("the proxy refuses a host that is not the archive (403)", status == "403",
            f"curl exit {rc}, HTTP {status}")


def step_make_run(ins: Inside, state: dict[str, Any]) -> None:
    state["token"] = make_run_start(ins, 1, state)
    rc, out, err = ins.run(["ip", "-br", "link", "show", "lxcbr0"])
    R.check("lxc-net made lxcbr0 in the guest (lxc installed by make run, drop-in honoured)",
            rc == 0 and "lxcbr0" in out, (out + err).strip())
    R.check("lxc-net.service active", ins.active("lxc-net.service")["lxc-net.service"]
            == "active")


def step_walk_through(ins: Inside, state: dict[str, Any], commands: list[str]) -> None:
    token = state.get("token")
    if not token:
        raise Failed("no token from make run")
    for command in commands:
        argv = shlex.split(command, comments=True)
        if argv[0] != "curl":
            R.must(f"only the token is set outside curl: {command}", argv[0].startswith("T="))
            continue
        started = time.monotonic()
        rc, status, body = curl([arg.replace("$T", token) for arg in argv], ins)
        took = time.monotonic() - started
        R.must(f"{command.split('#')[0].strip()}  ->  {status} ({took:.2f} s)",
               rc == 0 and status == "200", f"curl exit {rc}: {redact(body, token)[:600]}")


def readme_commands() -> list[str]:
    """The README's commands table: `| what | command |` rows whose command is a make target."""
    text = (TOP / "README.md").read_text()
    return re.findall(r"^\|[^|\n]*\| `(make [a-z-]+)` \|$", text, re.M)


def make_test_parts(text: str) -> list[tuple[str, int]]:
    """(part, offset in the log) of each part of `make test` that has begun, in order."""
    found = [(part, text.find(marker)) for marker, part in MAKE_TEST_PARTS]
    return sorted(((part, at) for part, at in found if at >= 0), key=lambda p: p[1])


def shell_start(ins: Inside, argv: list[str], out: Path) -> int:
    """Start argv in the guest as root at a console would (a login's environment, no service:
    a unit's INVOCATION_ID would tell the tests' helper it runs under systemd); its pid."""
    import lxc
    with open(out, "wb") as sink:
        pid: int = ins.c.attach(lxc.attach_run_command, argv,
                                env_policy=lxc.LXC_ATTACH_CLEAR_ENV, extra_env_vars=ROOT_LOGIN,
                                stdout=sink, stderr=sink, initial_cwd=CHECKOUT)
    if pid <= 0:
        raise Failed(f"could not start {argv} in the guest")
    return pid


def step_make_test(ins: Inside, command: str) -> None:
    """The README's second command, as written, as root in the checkout; times its parts."""
    log_file = MAKE_TEST_LOG
    started = time.monotonic()
    pid = shell_start(ins, shlex.split(command), log_file)
    begun: dict[str, float] = {}
    status = None
    while status is None:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(wait_status)
        elif time.monotonic() - started > MAKE_TEST_WAIT:
            os.kill(pid, signal.SIGTERM)
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            log(f"  {command}: still running after {MAKE_TEST_WAIT} s: stopped")
        for part, _ in make_test_parts(log_file.read_text(errors="replace")):
            if part not in begun:
                begun[part] = time.monotonic() - started
                log(f"  {command}: {part} began at {begun[part]:.0f} s")
        if status is None:
            time.sleep(1)
    took = time.monotonic() - started
    text = log_file.read_text(errors="replace")
    ends = [*list(begun.values())[1:], took]
    times = ", ".join(f"{part} {end - at:.0f} s"
                      for (part, at), end in zip(begun.items(), ends, strict=True))
    for line in text.splitlines():
        if PYTEST_RESULT.match(line) or line.startswith(("FAILED ", "ERROR ", "SKIPPED ")):
            log(f"  {line}")
    R.check(f"{command} exits 0 ({took:.0f} s: {times})",
            status == 0 and list(begun) == [p for _, p in MAKE_TEST_PARTS],
            f"exit status {status} (whole log: {log_file}): {redact(text)[-3000:]}")


def step_second_run(ins: Inside, state: dict[str, Any], commands: list[str]) -> None:
    if "unit" in state:
        raise Failed("the first make run was not stopped")
    token = make_run_start(ins, 2, state)
    text = (ins.rootfs / "root/make-run-2.log").read_text()
    R.check("the second make run printed the same token, and says so",
            token == state.get("token") and "(the same as last time" in text,
            redact(redact(text, token), state.get("token", ""))[-400:])
    first = next(c for c in commands if c.startswith("curl"))
    rc, status, body = curl([a.replace("$T", token) for a in shlex.split(first, comments=True)],
                            ins)
    R.check(f"{first}  ->  {status}", rc == 0 and status == "200", redact(body, token)[:400])


# -- main -------------------------------------------------------------------------------------

def cleanup(proxy: subprocess.Popen[bytes] | None) -> None:
    proxy_stop(proxy)
    debtest.cleanup(name=NAME, lxcpath=RUN)
    bridge_down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the guest, bridge and proxy")
    parser.add_argument("--proxy", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        serve_proxy(args.proxy[0], int(args.proxy[1]), args.proxy[2:])
        return 0
    if os.geteuid() != 0:
        print("readme-test must run as root", file=sys.stderr)
        return 2
    debtest.ensure_host_deps()
    cleanup(None)  # an earlier run's leftovers: only this test's container, lxcpath and bridge
    commands = readme_block("### curl")
    table = readme_commands()
    if table != README_COMMANDS:
        print(f"readme-test: the README's commands are {table}, not {README_COMMANDS}: "
              "this test runs those two", file=sys.stderr)
        return 1
    hosts = archive_hosts()
    state: dict[str, Any] = {}
    rootfs = RUN / NAME / "rootfs"
    try:
        step("1 a fresh Debian 12 guest with systemd, lxc-net allowed, this checkout in /root")
        started = time.monotonic()
        try:
            ins = step_guest(rootfs, hosts, state)
        finally:
            R.timings[R.step] = time.monotonic() - started
        steps: list[tuple[str, Callable[[], None]]] = [
            ("2 the README's prerequisites: apt-get install make curl",
             partial(step_prerequisites, ins)),
            ("3 make run (first run on a fresh root)", partial(step_make_run, ins, state)),
            ("4 the README's curl walk-through, as written",
             partial(step_walk_through, ins, state, commands)),
            ("5 stop make run (SIGTERM): nothing left", partial(make_run_stop, ins, state)),
            ("6 make run again: the same token, the API answers",
             partial(step_second_run, ins, state, commands)),
            ("   stop it again: nothing left", partial(make_run_stop, ins, state)),
            ("7 make test (the README's second command; pip reaches PyPI through the proxy)",
             partial(step_make_test, ins, README_COMMANDS[1])),
        ]
        debtest.run_steps(steps, lambda text: redact(text, state.get("token", "")))
    except Failed as exc:
        R.check("aborted", False, redact(str(exc), state.get("token", "")))
    except Exception as exc:  # noqa: BLE001 — reported as a failure, with a traceback to read
        import traceback
        traceback.print_exc()
        R.check("harness error", False, f"{type(exc).__name__}: {exc}")
    finally:
        if args.keep:
            log(f"--keep: guest left running: lxc-attach -P {RUN} -n {NAME}; proxy pid "
                f"{state['proxy'].pid if 'proxy' in state else '-'}; bridge {BRIDGE}")
        else:
            if R.failed():
                debtest.show_guest_logs(RUN / NAME)
            cleanup(state.get("proxy"))
    print(R.summary())
    return 1 if R.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
