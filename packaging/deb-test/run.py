"""`make deb-test`: install the package on a real Debian 12 with systemd as PID 1, and check it.

Builds the package twice (the version in debian/changelog and a higher one), makes a bookworm
root with debootstrap (cached in /var/cache/lwp-deb-test/), installs the package there with apt
so its dependencies come from the archive, boots that root as an LXC system container in an
lxcpath of the test's own (/var/tmp/lwp-deb-test, no network: lxc.net.0.type = empty) and then,
inside it: 1 units, socket and users, the frontend's port held by systemd (pid 1) and not
bindable by another user; 2 the API with the postinst token; 3 a nested busybox
container made and started through the API, which must not inherit the helper's sandbox;
4 restarts of both services leave it running, and `systemctl restart lwp-frontend` then curl
answers 20 times out of 20; 5 an upgrade keeps tokens, config, audit trail and
the container; 6 a purge leaves no file of the package behind. Exits non-zero on any failure.

Run as root with /usr/bin/python3 (python3-lxc). Touches no container but its own.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/lwp-deb-test")
RUN = Path("/var/tmp/lwp-deb-test")  # the test's own lxcpath, removed afterwards
NAME = "lwp-deb-test"
SUITE = "bookworm"
MIRROR = os.environ.get("LWP_DEBTEST_MIRROR", "http://deb.debian.org/debian")
INCLUDE = "systemd,systemd-sysv,dbus"
HOST_DEPS = ["debootstrap", "lxc", "python3-lxc", "openssl"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
API = "http://127.0.0.1:5000/api/v1"
TOKEN_FILE = "/var/lib/lwp/initial-admin-token"  # noqa: S105 (a path)
PROBE = "/root/lwp-probe.py"
NESTED = "bb1"
EXPOSURE_LIMITS = {"lwp-frontend.service": 1.5, "lwp-helperd.service": 5.0}
# Paths under the test root that are not its persistent file system (or are the test's own).
SNAPSHOT_SKIP = ("proc", "sys", "dev", "run", "tmp")
CURL_CONFIG = "/root/curl-token.conf"  # curl -K: the token in a header, not in argv
TEST_OWN = ("/root/debs", "/root/lwp-probe.py", "/root/second-token", CURL_CONFIG)
PORT = 5000
RESTARTS = 20

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Failed(Exception):
    """A step cannot go on (its remaining checks would only repeat the failure)."""


class Report:
    def __init__(self, title: str = "deb-test") -> None:
        self.title = title  # readme.py reuses this report under its own name
        self.rows: list[tuple[str, str, bool, str]] = []
        self.step = ""
        self.timings: dict[str, float] = {}

    def check(self, name: str, ok: bool, detail: object = "") -> bool:
        text = detail if isinstance(detail, str) else json.dumps(detail, default=str)
        self.rows.append((self.step, name, bool(ok), text))
        shown = text if not ok or len(text) <= 300 else text[:140] + " ... " + text[-140:]
        log(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + shown if shown else ''}")
        return bool(ok)

    def must(self, name: str, ok: bool, detail: object = "") -> None:
        if not self.check(name, ok, detail):
            raise Failed(name)

    def failed(self) -> list[tuple[str, str, bool, str]]:
        return [r for r in self.rows if not r[2]]

    def summary(self) -> str:
        lines = ["", "=" * 78, f"{self.title} summary", "=" * 78]
        for step in dict.fromkeys(r[0] for r in self.rows):
            rows = [r for r in self.rows if r[0] == step]
            bad = [r for r in rows if not r[2]]
            took = self.timings.get(step)
            lines.append(f"{'PASS' if not bad else 'FAIL'}  {step}  ({len(rows) - len(bad)}/"
                         f"{len(rows)} checks{f', {took:.1f} s' if took is not None else ''})")
            for r in bad:
                lines.append(f"        failed: {r[1]}: {r[3][:300]}")
        passed = sum(1 for r in self.rows if r[2])
        lines.append(f"total {time.monotonic() - T0:.0f} s")
        lines.append(f"{self.title}: {passed} passed, {len(self.rows) - passed} failed")
        return "\n".join(lines)


R = Report()


# -- host side -------------------------------------------------------------------------------

def run(argv: list[str], check: bool = True, env: dict[str, str] | None = None,
        log_file: Path | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, text=True, capture_output=True, env=env, **kw)
    if log_file is not None:
        log_file.write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise Failed(f"{' '.join(argv[:6])} exited {proc.returncode}: {tail}")
    return proc


def clean_env() -> dict[str, str]:
    return {"PATH": PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def ensure_host_deps() -> None:
    missing = [p for p in HOST_DEPS
               if run(["dpkg-query", "-W", "-f=${Status}", p], check=False).stdout
               != "install ok installed"]
    if missing:
        log(f"installing host packages: {' '.join(missing)}")
        run(["apt-get", "update", "-qq"], env=clean_env())
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=clean_env())


def build(version: str | None) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "DEB_VERSION"}
    if version:
        env["DEB_VERSION"] = version
    proc = run([str(TOP / "packaging/deb/build-deb")], env=env)
    lintian = [line for line in proc.stderr.splitlines() if line[:3] in ("E: ", "W: ", "I: ")]
    deb = Path(proc.stdout.strip().splitlines()[-1])
    R.check(f"built {deb.name}, lintian clean at E/W ({len(lintian)} info tags)", deb.is_file(),
            "; ".join(lintian))
    return deb


def base_root() -> Path:
    """A debootstrapped bookworm, cached per ISO week, mirror and package list."""
    year, week, _ = datetime.date.today().isocalendar()
    key = hashlib.sha256(f"{SUITE} {MIRROR} minbase {INCLUDE}".encode()).hexdigest()[:10]
    base = CACHE / f"base-{SUITE}-{year}w{week:02d}-{key}"
    if (base / "complete").exists():
        log(f"debootstrap cache hit: {base}")
        return base / "rootfs"
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("base-*"):
        shutil.rmtree(old)
    log(f"debootstrap {SUITE} from {MIRROR} into {base} (cached afterwards)")
    base.mkdir()
    run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE,
         str(base / "rootfs"), MIRROR], env=clean_env(), log_file=base / "debootstrap.log")
    (base / "complete").touch()
    return base / "rootfs"


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    prefix = str(path).rstrip("/") + "/"
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def show_guest_logs(guest: Path) -> None:
    """The last lines of a failed guest's console and liblxc log, for the CI output."""
    for name in ("console.log", "lxc.log"):
        path = guest / name
        if path.exists():
            print(f"--- last lines of {name} ---")
            print("\n".join(path.read_text(errors="replace").splitlines()[-25:]))


def cleanup(keep_cache: bool = True, name: str = NAME, lxcpath: Path = RUN) -> None:
    """Remove this test's container and lxcpath (never anything outside lxcpath)."""
    import lxc
    if lxcpath.exists():
        c = lxc.Container(name, str(lxcpath))
        if c.defined and c.running:
            log(f"stopping test container {name}")
            c.stop()
            c.wait("STOPPED", 30)
        for point in mounts_under(lxcpath):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(lxcpath, ignore_errors=True)
    if not keep_cache:
        shutil.rmtree(CACHE, ignore_errors=True)


def snapshot(rootfs: Path) -> set[str]:
    """Every path of the test root's persistent file system, as seen from inside."""
    paths: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(rootfs):
        rel = "/" + os.path.relpath(dirpath, rootfs)
        if rel == "/.":
            rel = "/"
            dirnames[:] = [d for d in dirnames if d not in SNAPSHOT_SKIP]
        for name in dirnames + filenames:
            paths.add(os.path.join(rel, name))
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chroot_install(rootfs: Path, deb: Path, logs: Path) -> str:
    """apt-get install the package (and curl, for the test only) in the chroot."""
    debs = rootfs / "root/debs"
    debs.mkdir(parents=True, exist_ok=True)
    shutil.copy2(deb, debs / deb.name)
    shutil.copy2("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# deb-test: start no service in the chroot\nexit 101\n")
    policy.chmod(0o755)
    archives = CACHE / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    mounted = []
    try:
        for argv in (["mount", "-t", "proc", "proc", str(rootfs / "proc")],
                     ["mount", "--bind", str(archives), str(rootfs / "var/cache/apt/archives")]):
            run(argv)
            mounted.append(argv[-1])
        chroot = ["chroot", str(rootfs)]
        run([*chroot, "apt-get", "update", "-q"], env=clean_env())
        # --no-install-recommends, as the README offers it: the package's Depends must be
        # all it needs (busybox-static comes with them); curl is the test's own.
        proc = run([*chroot, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                    f"/root/debs/{deb.name}", "curl"], env=clean_env(),
                   log_file=logs / "chroot-install.log")
        # Only the archive cache is kept; lists are refreshed each run.
        run([*chroot, "apt-get", "clean"], env=clean_env(), check=False)
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", point], check=False)
        policy.unlink()
    return proc.stdout + proc.stderr


def configure_test_host(rootfs: Path) -> None:
    """The test root's own LXC setup: no bridge (it has no network), nested containers get none."""
    (rootfs / "etc/hostname").write_text(f"{NAME}\n")
    (rootfs / "etc/lxc/default.conf").write_text(
        "# deb-test: this test root has no network, so nested containers get none either;\n"
        "# and it cannot load AppArmor profiles (no CAP_MAC_ADMIN) on a host that has AppArmor\n"
        "lxc.net.0.type = empty\n"
        "lxc.apparmor.profile = unconfined\n")
    lxcnet = rootfs / "etc/default/lxc-net"
    lxcnet.write_text('USE_LXC_BRIDGE="false"\n')
    shutil.copy2(TOP / "packaging/deb-test/probe.py", rootfs / PROBE.lstrip("/"))


def container_config(rootfs: Path, name: str = NAME, lxcpath: Path = RUN,
                     net: str = "lxc.net.0.type = empty") -> str:
    return f"""# deb-test: a Debian 12 with systemd as PID 1 that can run nested LXC containers.
lxc.uts.name = {name}
lxc.rootfs.path = dir:{rootfs}
lxc.include = /usr/share/lxc/config/common.conf
lxc.include = /usr/share/lxc/config/nesting.conf
# Our own throwaway container: no LSM confinement (this host may not have AppArmor at all).
lxc.apparmor.profile = unconfined
# Mount the cgroup hierarchies as the host has them (":force"), writable, so the nested
# liblxc can make its containers' cgroups; without it systemd mounts cgroup v1 controllers
# itself and joins cpu,cpuacct, which a host that mounts them apart cannot give it.
lxc.mount.auto =
lxc.mount.auto = proc:rw sys:rw cgroup:rw:force
{net}
lxc.autodev = 1
lxc.tty.max = 1
lxc.pty.max = 64
lxc.log.file = {lxcpath / name / "lxc.log"}
lxc.log.level = ERROR
lxc.console.logfile = {lxcpath / name / "console.log"}
"""


def boot(rootfs: Path, name: str = NAME, lxcpath: Path = RUN, config: str = "") -> Any:
    import lxc
    (lxcpath / name / "config").write_text(config or container_config(rootfs))
    c = lxc.Container(name, str(lxcpath))
    # liblxc's start() moves its caller into the container's monitor cgroups for good: start
    # from a short-lived child so this process (and its make) stays where it was.
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if c.start() else 1)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    c = lxc.Container(name, str(lxcpath))
    R.must("test container started", os.waitstatus_to_exitcode(status) == 0 and
           c.wait("RUNNING", 30), c.state)
    return c


# -- inside the test container ---------------------------------------------------------------

class Inside:
    def __init__(self, c: Any, rootfs: Path) -> None:
        self.c = c
        self.rootfs = rootfs

    def run(self, argv: list[str], timeout: int = 300) -> tuple[int, str, str]:
        import lxc
        if timeout:
            argv = ["timeout", str(timeout), *argv]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            status = self.c.attach_wait(
                lxc.attach_run_command, argv, env_policy=lxc.LXC_ATTACH_CLEAR_ENV,
                extra_env_vars=[f"PATH={PATH}", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"],
                stdout=out, stderr=err, initial_cwd="/")
            out.seek(0)
            err.seek(0)
            return (os.waitstatus_to_exitcode(status), out.read().decode("utf-8", "replace"),
                    err.read().decode("utf-8", "replace"))

    def out(self, argv: list[str], timeout: int = 300) -> str:
        rc, out, err = self.run(argv, timeout)
        if rc != 0:
            raise Failed(f"{' '.join(argv)} exited {rc}: {(out + err).strip()[-1500:]}")
        return out

    def probe(self, *args: str) -> Any:
        return json.loads(self.out(["python3", PROBE, *args]))

    def http(self, method: str, path: str, body: object = None,
             token_file: str = TOKEN_FILE) -> dict[str, Any]:
        payload = "-" if body is None else json.dumps(body)
        result: dict[str, Any] = self.probe("http", method, f"{API}{path}", payload, token_file)
        return result

    def wait_api(self, token_file: str = TOKEN_FILE, deadline: float = 30) -> dict[str, Any]:
        result: dict[str, Any] = self.probe("wait-http", f"{API}/containers", token_file,
                                            str(deadline))
        return result

    def main_pid(self, unit: str) -> int:
        return int(self.out(["systemctl", "show", "-p", "MainPID", "--value", unit]).strip())

    def active(self, *units: str) -> dict[str, str]:
        _, out, _ = self.run(["systemctl", "is-active", *units])
        return dict(zip(units, out.split(), strict=False))

    def nested(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http("GET", f"/containers/{NESTED}")
        return result


# -- the steps -------------------------------------------------------------------------------

def step(title: str) -> None:
    R.step = title
    log(f"== {title}")


def wait_booted(ins: Inside) -> None:
    deadline = time.monotonic() + 120
    while True:  # until systemd answers at all, then until it has finished booting
        out = ins.run(["systemctl", "is-system-running", "--wait"], timeout=120)[1]
        if out.strip() not in ("", "offline", "unknown", "initializing", "starting") \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    failed_units = ins.run(["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"])[1]
    failed = " ".join(line.split()[0] for line in failed_units.splitlines() if line.strip())
    R.check("systemd booted (PID 1 of the test root)", out.strip() in ("running", "degraded"),
            f"{out.strip()}; failed units: {failed or 'none'}")


def run_steps(steps: list[tuple[str, Callable[[], None]]],
              shown: Callable[[str], str] = str) -> None:
    """Each step in turn, timed; one that fails is recorded (as `shown`) and the next runs."""
    for title, fn in steps:
        step(title)
        started = time.monotonic()
        try:
            fn()
        except Failed as exc:
            R.check("step aborted", False, shown(str(exc)))
        R.timings[R.step] = time.monotonic() - started


def step_units(ins: Inside) -> None:
    states = ins.active("lwp-helperd.socket", "lwp-frontend.socket", "lwp-frontend.service")
    R.check("lwp-helperd.socket, lwp-frontend.socket and lwp-frontend.service active",
            all(v == "active" for v in states.values()), states)
    expected = {
        "/run/lwp": ("dir", "root", "lwp", "0750"),
        "/run/lwp/helperd.sock": ("socket", "root", "lwp", "0660"),
        "/etc/lwp/lwp.toml": ("file", "root", "root", "0644"),
        "/var/lib/lwp": ("dir", "root", "lwp", "0750"),
        "/var/lib/lwp/token.key": ("file", "root", "lwp", "0640"),
        "/var/lib/lwp/tokens.sqlite3": ("file", "root", "lwp", "0640"),
        TOKEN_FILE: ("file", "root", "root", "0600"),
        "/var/log/lwp": ("dir", "root", "adm", "0750"),
    }
    seen = ins.probe("stat", *expected)
    for path, (kind, user, group, mode) in expected.items():
        got = seen[path]
        R.check(f"{path} is {kind} {user}:{group} {mode}",
                (got.get("type"), got.get("user"), got.get("group"), got.get("mode"))
                == (kind, user, group, mode), got)
    rc, out, err = ins.run(["lwp-admin", "doctor"])
    R.check("lwp-admin doctor finds no problem on the test root", rc == 0, (out + err)[-1500:])
    lwp_uid = ins.out(["id", "-u", "lwp"]).strip()
    front = ins.probe("proc", str(ins.main_pid("lwp-frontend.service")))
    R.check("frontend runs as user lwp (real, effective, saved, fs uid)",
            front["Uid"].split() == [lwp_uid] * 4, front["Uid"])
    R.check("frontend has no capabilities and no_new_privs",
            int(front["CapEff"], 16) == 0 and int(front["CapBnd"], 16) == 0
            and front["NoNewPrivs"] == "1", front)
    for unit, limit in EXPOSURE_LIMITS.items():
        rc, out, err = ins.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                                f"/lib/systemd/system/{unit}"])
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        score = float(found.group(1)) if found else None
        R.check(f"systemd-analyze security --offline=true {unit}: {score} (limit {limit})",
                score is not None and score <= limit, "" if found else (out + err)[-500:])
    in_site = [p for p in ("frontend", "helperd", "protocol")
               if (ins.rootfs / "usr/lib/python3/dist-packages" / p).exists()]
    R.check("modules only in the private /usr/lib/lxc-web-panel", not in_site and
            (ins.rootfs / "usr/lib/lxc-web-panel/helperd/__main__.py").exists(), in_site)


def step_port(ins: Inside) -> None:
    """systemd holds the frontend's port from boot; with the frontend stopped nobody can take it."""
    holders = ins.probe("port-holders", str(PORT))
    R.check(f"port {PORT} is held by systemd (pid 1) and the frontend",
            {h["pid"] for h in holders} == {1, ins.main_pid("lwp-frontend.service")}, holders)
    ins.out(["systemctl", "stop", "lwp-frontend.service"])
    R.check("lwp-frontend.service stopped, lwp-frontend.socket still listening",
            ins.active("lwp-frontend.service", "lwp-frontend.socket")
            == {"lwp-frontend.service": "inactive", "lwp-frontend.socket": "active"})
    holders = ins.probe("port-holders", str(PORT))
    R.check(f"with no frontend running, port {PORT} is held by pid 1 (systemd) only",
            [(h["pid"], h["uid"]) for h in holders] == [(1, 0)], holders)
    attempts = ins.probe("bind-as", "nobody", str(PORT))
    R.check(f"user nobody cannot bind port {PORT} (plain, SO_REUSEADDR, SO_REUSEPORT, 0.0.0.0)",
            set(attempts.values()) == {"EADDRINUSE"}, attempts)
    res = ins.wait_api()
    R.check("the first request starts the frontend (socket activation) and is answered",
            res["status"] == 200 and ins.active("lwp-frontend.service")["lwp-frontend.service"]
            == "active", res)


def step_list(ins: Inside) -> None:
    res = ins.wait_api()
    R.must("GET /api/v1/containers with the postinst token is 200", res["status"] == 200, res)
    R.check("the answer is a JSON list, application/json",
            isinstance(res["body"], list) and res["content_type"].startswith("application/json"),
            res)
    res = ins.http("GET", "/containers", token_file="")
    R.check("without a token: 401", res["status"] == 401, res)
    # The first token's record, written by postinst's lwp-first-token, heads the chain.
    rc, out, err = ins.run(["lwp-admin", "audit", "--op", "create_token", "--json"])
    made = [json.loads(line) for line in out.splitlines() if line.strip()] if rc == 0 else []
    R.check("the audit trail records the postinst token's creation by root",
            len(made) == 1 and made[0]["seq"] == 1 and made[0]["outcome"] == "ok"
            and made[0]["actor"]["description"] == "root (package postinst)"
            and made[0]["args"]["description"] == "initial admin token (created by the package)",
            out + err)
    got = ins.probe("stat", "/var/lib/lwp/audit.key")["/var/lib/lwp/audit.key"]
    R.check("/var/lib/lwp/audit.key is file root:root 0600",
            (got.get("type"), got.get("user"), got.get("group"), got.get("mode"))
            == ("file", "root", "root", "0600"), got)


# Capability bits (linux/capability.h) a container keeps but the helper's sandbox drops.
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def step_nested(ins: Inside, state: dict[str, Any]) -> None:
    res = ins.http("PUT", "/containers", {"name": NESTED, "template": "busybox"})
    R.must(f"PUT /api/v1/containers {NESTED} (busybox) is 200", res["status"] == 200, res)
    res = ins.http("POST", f"/containers/{NESTED}", {"action": "start"})
    R.must(f"POST start {NESTED} is 200", res["status"] == 200, res)
    info = ins.nested()
    R.must(f"GET {NESTED}: RUNNING with a pid", info["status"] == 200 and
           info["body"].get("state") == "RUNNING" and int(info["body"].get("pid", 0)) > 0, info)
    pid = int(info["body"]["pid"])
    state["pid"] = pid
    init = ins.probe("proc", str(pid))
    monitor = ins.probe("proc", init["PPid"])
    state["monitor"] = monitor
    helper_pid = ins.main_pid("lwp-helperd.service")
    helper = ins.probe("proc", str(helper_pid)) if helper_pid else {}
    log(f"  nested init: {init}")
    log(f"  its monitor: {monitor}")
    log(f"  the helper:  {helper}")
    bnd = int(init["CapBnd"], 16)
    R.check("container init did not inherit no_new_privs from the helper",
            init["NoNewPrivs"] == "0", init["NoNewPrivs"])
    R.check("container init keeps CAP_NET_ADMIN and CAP_NET_RAW (the helper's bounding set "
            "has neither)", bool(bnd >> CAP_NET_ADMIN & 1 and bnd >> CAP_NET_RAW & 1),
            init["CapBnd"])
    if helper and "Seccomp_filters" in init:
        R.check("container init carries fewer seccomp filters than the helper (not its filter)",
                int(init["Seccomp_filters"]) < int(helper["Seccomp_filters"]),
                {"init": init["Seccomp_filters"], "helper": helper["Seccomp_filters"]})
    R.check("container monitor is outside the helper's mount namespace",
            not helper or monitor["mntns"] != helper["mntns"],
            {"monitor": monitor["mntns"], "helper": helper.get("mntns")})
    R.check("container monitor and init are outside lwp-helperd.service's cgroup",
            not any("lwp-helperd" in line for line in monitor["cgroup"] + init["cgroup"]),
            {"monitor": monitor["cgroup"], "init": init["cgroup"]})
    for action, want in (("freeze", "FROZEN"), ("unfreeze", "RUNNING")):
        res = ins.http("POST", f"/containers/{NESTED}", {"action": action})
        info = ins.nested()
        R.check(f"POST {action} {NESTED} is 200 and it is {want} (cgroup write from the sandbox)",
                res["status"] == 200 and info["body"].get("state") == want,
                {"action": res, "info": info.get("body")})
    unit = next((line.rsplit("/", 1)[-1] for line in monitor["cgroup"]
                 if line.startswith(("0::", "1:name=systemd:")) or ":name=systemd:" in line), "?")
    log(f"  the monitor's systemd cgroup ends in: {unit}")


def step_restarts(ins: Inside, state: dict[str, Any]) -> None:
    for unit in ("lwp-helperd.service", "lwp-frontend.service"):
        before = ins.main_pid(unit)
        started = time.monotonic()
        rc, out, err = ins.run(["systemctl", "restart", unit])
        R.check(f"systemctl restart {unit}", rc == 0, (out + err).strip())
        res = ins.wait_api()
        took = time.monotonic() - started
        R.check(f"API answers again after restarting {unit} ({took:.1f} s)",
                res["status"] == 200 and took < 15, res)
        R.check(f"{unit} got a new main process", ins.main_pid(unit) not in (0, before))
        if "pid" in state:
            info = ins.nested()
            R.check(f"{NESTED} still RUNNING, same init pid, after restarting {unit}",
                    info["body"].get("state") == "RUNNING"
                    and int(info["body"].get("pid", 0)) == state["pid"], info)
    # A script that restarts the frontend and calls curl at once must get an answer, every time:
    # the socket stays open in systemd while the frontend restarts, so curl waits, not fails.
    token = (ins.rootfs / TOKEN_FILE.lstrip("/")).read_text().strip()
    conf = ins.rootfs / CURL_CONFIG.lstrip("/")
    conf.touch(mode=0o600)
    conf.write_text(f'header = "Private-Token: {token}"\n')
    started = time.monotonic()
    rounds = ins.probe("restart-curl", str(RESTARTS), "lwp-frontend.service",
                       f"{API}/containers", CURL_CONFIG)
    took = time.monotonic() - started
    good = [r for r in rounds if r["restart_rc"] == 0 and r["curl_rc"] == 0 and r["http"] == "200"]
    slowest = max((float(r["curl_s"]) for r in rounds), default=0.0)
    R.check(f"`systemctl restart lwp-frontend.service && curl` (no sleep, no retry) answered 200 "
            f"{len(good)}/{RESTARTS} times ({took:.1f} s in all, slowest curl {slowest:.2f} s)",
            len(good) == RESTARTS, [r for r in rounds if r not in good] or rounds[:2])
    # Socket activation: with the helper stopped, the next request starts it again.
    ins.out(["systemctl", "stop", "lwp-helperd.service"])
    res = ins.wait_api()
    R.check("a request after `systemctl stop lwp-helperd.service` is served (socket activation)",
            res["status"] == 200 and ins.active("lwp-helperd.service")["lwp-helperd.service"]
            == "active", res)
    if "pid" in state:
        info = ins.nested()
        R.check(f"{NESTED} still RUNNING after the helper was stopped",
                info["body"].get("state") == "RUNNING"
                and int(info["body"].get("pid", 0)) == state["pid"], info)


def audit_files(rootfs: Path) -> dict[str, bytes]:
    """The trail's log files (append-only; audit.head is rewritten, so it is not compared)."""
    base = rootfs / "var/log/lwp"
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*.log") if p.is_file()}


def step_upgrade(ins: Inside, deb2: Path, state: dict[str, Any]) -> None:
    rootfs = ins.rootfs
    conf = rootfs / "etc/lwp/lwp.toml"
    text = conf.read_text()
    edited = text.replace("stop_timeout = 30", "stop_timeout = 25  # edited by deb-test")
    R.must("lwp.toml edited (stop_timeout = 25)", edited != text)
    conf.write_text(edited)
    res = ins.http("POST", "/tokens", {"description": "deb-test second token"})
    R.must("POST /api/v1/tokens with the admin token is 200", res["status"] == 200 and
           isinstance(res["body"], dict) and "token" in res["body"], res.get("status"))
    second = rootfs / "root/second-token"
    second.write_text(res["body"]["token"] + "\n")
    second.chmod(0o600)
    state["tokens"] = [res["body"]["token"], (rootfs / TOKEN_FILE.lstrip("/")).read_text().strip()]
    tokens_before = json.loads(ins.out(["lwp-admin", "--json", "token", "list"]))
    key_before = sha256(rootfs / "var/lib/lwp/token.key")
    first_before = sha256(rootfs / TOKEN_FILE.lstrip("/"))
    audit_key_before = sha256(rootfs / "var/lib/lwp/audit.key")
    audit_before = audit_files(rootfs)
    R.check("audit trail has entries before the upgrade", bool(audit_before),
            sorted(audit_before))
    helper_before = ins.main_pid("lwp-helperd.service")
    shutil.copy2(deb2, rootfs / "root/debs" / deb2.name)
    rc, out, err = ins.run(["apt-get", "install", "-y", "-q", "-o",
                            "Dpkg::Options::=--force-confold", f"/root/debs/{deb2.name}"])
    (RUN / "upgrade.log").write_text(out + err)
    R.must(f"apt-get install {deb2.name} (upgrade, offline)", rc == 0, (out + err)[-1500:])
    state["upgrade_output"] = out + err
    version = ins.out(["dpkg-query", "-W", "-f=${Version}", "lxc-web-panel"]).strip()
    R.check("installed version is the rebuilt one", deb2.name.startswith(
        f"lxc-web-panel_{version}_"), version)
    states = ins.active("lwp-helperd.socket", "lwp-frontend.socket", "lwp-frontend.service")
    R.check("units active after the upgrade", all(v == "active" for v in states.values()), states)
    R.check("edited lwp.toml kept as edited", conf.read_text() == edited)
    R.check("token key unchanged", sha256(rootfs / "var/lib/lwp/token.key") == key_before)
    R.check("audit chain key unchanged",
            sha256(rootfs / "var/lib/lwp/audit.key") == audit_key_before)
    R.check("first-token file unchanged (no new token on upgrade)",
            sha256(rootfs / TOKEN_FILE.lstrip("/")) == first_before)
    res = ins.wait_api()
    R.check("postinst token still valid after the upgrade", res["status"] == 200, res)
    res = ins.wait_api(token_file="/root/second-token")  # noqa: S106 (a path)
    R.check("API-made token still valid after the upgrade", res["status"] == 200, res)
    tokens_after = json.loads(ins.out(["lwp-admin", "--json", "token", "list"]))
    R.check("token list unchanged (ids, scopes, descriptions)",
            [(t["id"], t["scope"], t["description"]) for t in tokens_after]
            == [(t["id"], t["scope"], t["description"]) for t in tokens_before], tokens_after)
    audit_after = audit_files(rootfs)
    R.check("audit trail kept (every file still there, its old content a prefix)",
            all(name in audit_after and audit_after[name].startswith(content)
                for name, content in audit_before.items()), sorted(audit_after))
    rc, out, err = ins.run(["lwp-admin", "audit", "verify"])
    R.check("lwp-admin audit verify: the chain is intact across the upgrade", rc == 0,
            (out + err).strip()[-400:])
    R.check("helper restarted into the new version", ins.main_pid("lwp-helperd.service")
            != helper_before)
    if "pid" in state:
        info = ins.nested()
        R.check(f"{NESTED} still RUNNING, same init pid, after the upgrade",
                info["body"].get("state") == "RUNNING"
                and int(info["body"].get("pid", 0)) == state["pid"], info)


def step_manage(ins: Inside, state: dict[str, Any]) -> None:
    """The upgraded helper still drives every kind of operation, from inside its sandbox."""
    if "pid" not in state:
        raise Failed(f"no running {NESTED} to manage (step 3 failed)")
    res = ins.http("POST", f"/containers/{NESTED}", {"action": "stop"})
    info = ins.nested()
    R.check(f"POST stop {NESTED}: 200, STOPPED", res["status"] == 200
            and info["body"].get("state") == "STOPPED", {"stop": res, "info": info.get("body")})
    unit = f"lxc@{NESTED}.service"
    _, out, _ = ins.run(["systemctl", "is-failed", unit])
    R.check(f"{unit} is not left failed by a stop through the API", out.strip() != "failed",
            out.strip())
    _, out, _ = ins.run(["systemctl", "--failed", "--plain", "--no-legend", "lxc@*"])
    R.check("no lxc@ unit failed (the host is not degraded by us)", not out.strip(), out)
    clone = f"{NESTED}-clone"
    res = ins.http("PUT", "/containers", {"name": clone, "clone": NESTED})
    R.check(f"PUT clone {NESTED} -> {clone}: 200 (liblxc clone + rsync in the sandbox)",
            res["status"] == 200, res)
    res = ins.http("DELETE", f"/containers/{clone}")
    R.check(f"DELETE {clone}: 200", res["status"] == 200, res)
    res = ins.http("POST", f"/containers/{NESTED}", {"action": "start"})
    info = ins.nested()
    R.check(f"POST start {NESTED} again: 200, RUNNING", res["status"] == 200
            and info["body"].get("state") == "RUNNING", {"start": res, "info": info.get("body")})
    if info["body"].get("state") == "RUNNING":
        state["pid"] = int(info["body"]["pid"])
    else:
        state.pop("pid", None)


PANEL_USER = "lwp-deb-test-operator"


def step_panel_sign_in(ins: Inside, state: dict[str, Any]) -> None:
    """A host user in lwp-operator signs in through PAM (/etc/pam.d/lwp) and drives a
    container with the page's own API calls: the session cookie and its header."""
    if "pid" not in state:
        raise Failed(f"no running {NESTED} to drive (step 3 failed)")
    rc, out, err = ins.run(["getent", "group", "lwp-admin", "lwp-operator", "lwp-viewer"])
    R.check("postinst made the groups lwp-admin, lwp-operator, lwp-viewer",
            rc == 0 and len(out.splitlines()) == 3, out + err)
    R.check("/etc/pam.d/lwp is installed", (ins.rootfs / "etc/pam.d/lwp").is_file())
    password = os.urandom(12).hex()
    hashed = run(["openssl", "passwd", "-6", "-stdin"], input=password).stdout.strip()
    rc, out, err = ins.run(["useradd", "--no-create-home", "--groups", "lwp-operator",
                            "--password", hashed, PANEL_USER])
    R.must(f"useradd {PANEL_USER} in lwp-operator", rc == 0, out + err)
    credentials = ins.rootfs / "root/panel-credentials.json"
    credentials.write_text(json.dumps({"username": PANEL_USER, "password": password}))
    credentials.chmod(0o600)
    try:
        got = ins.probe("panel-session", "http://127.0.0.1:5000/",
                        "/root/panel-credentials.json", NESTED)
    finally:
        credentials.unlink()
        ins.run(["userdel", PANEL_USER])  # the purge step checks the root is as it was
    R.check("GET / serves the panel's page", got["page"] == {"status": 200, "is_html": True}, got)
    R.must(f"POST /api/v1/session as {PANEL_USER} (PAM): 200, operate scope, an HttpOnly "
           "SameSite=Strict cookie", got["sign_in"]["status"] == 200
           and got["sign_in"]["body"].get("scope") == "operate"
           and got["sign_in"]["httponly"] and got["sign_in"]["samesite_strict"], got["sign_in"])
    R.check(f"stop and start {NESTED} with the session cookie: 200 each",
            got["stop"]["status"] == 200 and got["start"]["status"] == 200, got)
    R.check("a cookie change without X-LWP-Request is 403",
            got["without_header"]["status"] == 403, got["without_header"])
    R.check("sign-out revokes the session: the cookie then gets 401",
            got["sign_out"]["status"] == 200 and got["after_sign_out"]["status"] == 401, got)
    rc, out, err = ins.run(["lwp-admin", "audit", "--op", "start_container", "--json"])
    ends = [json.loads(line) for line in out.splitlines() if line.strip()] if rc == 0 else []
    R.check(f"the audit trail names {PANEL_USER} as the actor of the page's start",
            bool(ends) and ends[-1]["actor"]["description"] == PANEL_USER, ends[-1:] or out + err)
    info = ins.nested()
    if info["body"].get("state") == "RUNNING":
        state["pid"] = int(info["body"]["pid"])


def step_no_token_leak(ins: Inside, state: dict[str, Any], chroot_output: str) -> None:
    tokens = state.get("tokens") or [(ins.rootfs / TOKEN_FILE.lstrip("/")).read_text().strip()]
    journal = ins.run(["journalctl", "-o", "verbose", "--no-pager"])[1]  # every field
    texts = {"journal": journal, "install output": chroot_output,
             "upgrade output": state.get("upgrade_output", "")}
    for path in (ins.rootfs / "var/log").rglob("*"):
        if path.is_file() and not path.is_symlink():
            texts[f"/var/log/{path.relative_to(ins.rootfs / 'var/log')}"] = \
                path.read_bytes().decode("utf-8", "replace")
    leaks = sorted(where for where, text in texts.items() for t in tokens if t and t in text)
    R.check(f"no token in the journal, /var/log or apt's output ({len(texts)} places)",
            not leaks, leaks)
    R.check("postinst said where the first token is",
            f"the first admin API token is in {TOKEN_FILE}" in chroot_output)


def step_purge(ins: Inside, state: dict[str, Any], before: set[str], owned: list[str]) -> None:
    rc, out, err = ins.run(["apt-get", "purge", "-y", "-q", "lxc-web-panel"])
    (RUN / "purge.log").write_text(out + err)
    R.must("apt-get purge lxc-web-panel", rc == 0, (out + err)[-1500:])
    status = ins.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "lxc-web-panel"])[1].strip()
    R.check("package fully gone from dpkg (not 'rc')", status in ("", "un"), status)
    after = snapshot(ins.rootfs)
    shared_dirs = {p for p in owned if (ins.rootfs / p.lstrip("/")).is_dir()
                   and not p.startswith(("/usr/lib/lxc-web-panel", "/usr/libexec/lxc-web-panel",
                                         "/etc/lwp", "/usr/share/doc/lxc-web-panel"))}
    left = sorted(p for p in owned if p not in shared_dirs and os.path.lexists(
        ins.rootfs / p.lstrip("/")))
    R.check(f"none of the package's {len(owned)} paths left (but shared dirs)", not left, left)
    named = sorted(p for p in after if ("lwp" in p or "lxc-web-panel" in p)
                   and not p.startswith(TEST_OWN))
    R.check("no path named lwp / lxc-web-panel anywhere on the test root", not named, named)
    stats = ins.probe("stat", "/run/lwp", "/var/lib/lwp", "/var/log/lwp", "/etc/lwp")
    R.check("/run/lwp, /var/lib/lwp, /var/log/lwp, /etc/lwp removed",
            all("error" in v for v in stats.values()), stats)
    units = ins.run(["systemctl", "list-unit-files", "--no-legend", "lwp-*"])[1].strip()
    R.check("no lwp-* unit files known to systemd", not units, units)
    user = ins.run(["getent", "passwd", "lwp"])[1].strip()
    log(f"  kept by policy: system user {user!r}")
    new = sorted(p for p in after - before if not p.startswith(
        ("/var/lib/lxc/", "/var/log/journal", "/var/lib/systemd/", "/var/cache/", "/root/",
         "/var/lib/apt/", "/var/log/apt/", "/var/lib/dpkg/", "/var/tmp/")))
    log(f"  paths new since the chroot install (outside containers, journal, apt, dpkg): {new}")
    if "pid" in state:
        rc, out, _ = ins.run(["lxc-info", "-s", "-n", NESTED])
        R.check(f"{NESTED} still running after the purge (user data untouched)",
                "RUNNING" in out, out.strip())


def step_reinstall(ins: Inside, deb2: Path, state: dict[str, Any]) -> None:
    """A first install on the running system (after the purge): fresh key, fresh token."""
    rc, out, err = ins.run(["apt-get", "install", "-y", "-q", f"/root/debs/{deb2.name}"])
    (RUN / "reinstall.log").write_text(out + err)
    R.must(f"apt-get install {deb2.name} on the running system", rc == 0, (out + err)[-1500:])
    R.check("postinst said where the first token is",
            f"the first admin API token is in {TOKEN_FILE}" in out + err)
    states = ins.active("lwp-helperd.socket", "lwp-frontend.socket", "lwp-frontend.service")
    R.check("postinst started the units", all(v == "active" for v in states.values()), states)
    got = ins.probe("stat", TOKEN_FILE)[TOKEN_FILE]
    R.check(f"{TOKEN_FILE} is file root:root 0600", (got.get("type"), got.get("user"),
            got.get("group"), got.get("mode")) == ("file", "root", "root", "0600"), got)
    res = ins.wait_api()
    R.check("the new first token works", res["status"] == 200, res)
    token = (ins.rootfs / TOKEN_FILE.lstrip("/")).read_text().strip()
    R.check("the new first token is not an old one", token not in state.get("tokens", []))
    if len(state.get("tokens", [])) > 0:
        res = ins.wait_api(token_file="/root/second-token", deadline=0)  # noqa: S106 (a path)
        R.check("a token from before the purge is refused (401): keys and tokens were purged",
                res["status"] == 401, res)
    if token not in (out + err):
        state.setdefault("tokens", []).append(token)
    else:
        R.check("the new token is not in apt's output", False)
    # lwp-admin hands the first token over once and deletes its file; until then, it reminds.
    rc, out, err = ins.run(["lwp-admin", "token", "list"])
    R.check("lwp-admin token list reminds that the first-token file is still there",
            rc == 0 and "lwp-admin initial-token" in err, err.strip())
    rc, out, err = ins.run(["lwp-admin", "initial-token"])
    R.check("lwp-admin initial-token prints the first token alone and deletes its file",
            rc == 0 and out == token + "\n" and token not in err
            and not (ins.rootfs / TOKEN_FILE.lstrip("/")).exists(), err.strip())
    rc, out, err = ins.run(["lwp-admin", "token", "list"])
    R.check("no reminder once the file is gone", rc == 0 and "initial-token" not in err,
            err.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the test container running")
    parser.add_argument("--clean", action="store_true",
                        help="remove an earlier run's leftovers and the debootstrap cache, exit")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("deb-test must run as root", file=sys.stderr)
        return 2
    ensure_host_deps()
    if args.clean:
        cleanup(keep_cache=False)
        return 0
    cleanup()
    state: dict[str, Any] = {}
    try:
        step("0 build and install in a debootstrapped bookworm")
        started = time.monotonic()
        deb1 = build(None)
        v1 = run(["dpkg-deb", "-f", str(deb1), "Version"]).stdout.strip()
        deb2 = build(f"{v1}+debtest1")
        base = base_root()
        rootfs = RUN / NAME / "rootfs"
        RUN.mkdir(parents=True)
        RUN.chmod(0o700)
        (RUN / NAME).mkdir()
        log(f"copying the base root to {rootfs}")
        run(["cp", "-a", "--reflink=auto", str(base), str(rootfs)])
        log(f"apt-get install ./{deb1.name} in the chroot (dependencies from the archive)")
        chroot_output = chroot_install(rootfs, deb1, RUN)
        R.check("apt-get install in the chroot", True)
        owned = run(["chroot", str(rootfs), "dpkg-query", "-L", "lxc-web-panel"]).stdout.split()
        configure_test_host(rootfs)
        before = snapshot(rootfs)
        R.timings[R.step] = time.monotonic() - started

        step("   boot the test root with systemd")
        started = time.monotonic()
        ins = Inside(boot(rootfs), rootfs)
        wait_booted(ins)
        R.timings[R.step] = time.monotonic() - started
        steps: list[tuple[str, Callable[[], None]]] = [
            ("1 units, socket, users", partial(step_units, ins)),
            ("   the frontend's port is systemd's", partial(step_port, ins)),
            ("2 list containers with the postinst token", partial(step_list, ins)),
            ("3 nested busybox container through the API", partial(step_nested, ins, state)),
            ("   sign in to the panel through PAM and act as the page does",
             partial(step_panel_sign_in, ins, state)),
            ("4 restart helper and frontend", partial(step_restarts, ins, state)),
            ("5 upgrade to a rebuilt higher version", partial(step_upgrade, ins, deb2, state)),
            ("   stop, clone, destroy, start with the upgraded helper",
             partial(step_manage, ins, state)),
            ("   no token in any log", partial(step_no_token_leak, ins, state, chroot_output)),
            ("6 purge", partial(step_purge, ins, state, before, owned)),
            ("   first install on the running system, after the purge",
             partial(step_reinstall, ins, deb2, state)),
            ("   purge again", partial(step_purge, ins, state, before, owned)),
        ]
        run_steps(steps)
    except Failed as exc:
        R.check("aborted", False, str(exc))
    except Exception as exc:  # noqa: BLE001 — reported as a failure, with a traceback to read
        import traceback
        traceback.print_exc()
        R.check("harness error", False, f"{type(exc).__name__}: {exc}")
    finally:
        if args.keep:
            log(f"--keep: test container left running: lxc-attach -P {RUN} -n {NAME}")
        else:
            if R.failed():
                show_guest_logs(RUN / NAME)
            cleanup()
    print(R.summary())
    return 1 if R.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
