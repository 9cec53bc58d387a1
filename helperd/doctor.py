"""What makes containers work or fail on this host, as lxc-checkconfig does for the kernel.

Each check reads the host (never changes it) and says ok, warning or problem, with what to do.
It runs in the admin CLI as root (so it answers while the helper is down) and in the helper.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from helperd import idmap, templates
from helperd.config import HelperConfig
from helperd.containers import default_network, lxc_version
from protocol import VERSION
from protocol.config import ConfigError

OK, WARNING, PROBLEM = "ok", "warning", "problem"
GiB = 1 << 30
FREE_WARNING = 2 * GiB  # a busybox container is ~2 MiB, a Debian one ~300 MiB
FREE_PROBLEM = 256 << 20
V1_CONTROLLERS = ("cpu", "cpuset", "memory", "freezer", "pids")  # what info and freeze read
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids")  # v2 freezes without a controller


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | warning | problem
    detail: str
    fix: str = ""


Check = Callable[[HelperConfig], list[Finding]]


def cgroups(_cfg: HelperConfig) -> list[Finding]:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            have = set(f.read().split())
        missing = [c for c in V2_CONTROLLERS if c not in have]
        version = "v2 (unified)"
    else:
        with open("/proc/cgroups") as f:
            have = {line.split()[0] for line in f if not line.startswith("#")
                    and line.split()[3:4] == ["1"]}
        missing = [c for c in V1_CONTROLLERS if c not in have]
        version = "v1 (hybrid)"
    if missing:
        return [Finding("cgroups", WARNING, f"{version}; controllers missing: "
                        f"{', '.join(missing)}", "enable them on the kernel command line "
                        "(info shows no figures for what is missing)")]
    return [Finding("cgroups", OK, f"{version}; controllers present")]


def bridge(cfg: HelperConfig) -> list[Finding]:
    kind, link = default_network(cfg.default_config)
    where = f"{cfg.default_config}: lxc.net.0.type = {kind or '(none)'}"
    if kind != "veth" or not link:
        return [Finding("bridge", OK, f"{where}: no bridge needed")]
    if os.path.isdir(f"/sys/class/net/{os.path.basename(link)}/bridge"):
        return [Finding("bridge", OK, f"{where}, link {link} exists")]
    lxc_net = ("systemctl enable --now lxc-net" if os.path.isdir("/run/systemd/system")
               else "/usr/libexec/lxc/lxc-net start")
    fix = (f"{lxc_net} (it makes lxcbr0)" if link == "lxcbr0"
           else f"create the bridge {link}, or change lxc.net.0.link in {cfg.default_config}")
    return [Finding("bridge", PROBLEM, f"{where}, link {link} does not exist: containers "
                    "cannot start", fix)]


def lxc_net(_cfg: HelperConfig) -> list[Finding]:
    if not os.path.isdir("/run/systemd/system"):
        return [Finding("lxc-net", WARNING, "systemd is not running: lxc-net's state unknown")]
    state = subprocess.run(["/bin/systemctl", "is-active", "lxc-net.service"],
                           capture_output=True, text=True, timeout=10, check=False)
    word = state.stdout.strip() or "unknown"
    if word == "active":
        return [Finding("lxc-net", OK, "lxc-net.service is active")]
    return [Finding("lxc-net", WARNING, f"lxc-net.service is {word}",
                    "systemctl enable --now lxc-net (if containers use lxcbr0)")]


def apparmor(_cfg: HelperConfig) -> list[Finding]:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            enabled = f.read().strip() == "Y"
    except OSError:
        enabled = False
    if not enabled:
        return [Finding("apparmor", OK, "AppArmor is not enabled in the kernel")]
    if shutil.which("apparmor_parser", path=templates.SEARCH_PATH) is None:
        return [Finding("apparmor", PROBLEM, "AppArmor is enabled but apparmor_parser is "
                        "missing: liblxc cannot load container profiles", "apt install apparmor")]
    return [Finding("apparmor", OK, "AppArmor is enabled and apparmor_parser is installed")]


def id_ranges(cfg: HelperConfig) -> list[Finding]:
    """The range new containers are mapped into (helperd/idmap.py), against the subordinate id
    files: recorded there for root, given to no one else."""
    found = []
    for kind, used in (("u", cfg.idmap.uid), ("g", cfg.idmap.gid)):
        path = idmap.SUBID_FILES[kind]
        try:
            ranges = idmap.subid_ranges(path)
        except FileNotFoundError:
            ranges = []
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            found.append(Finding(path, PROBLEM, f"cannot be read: {exc}", f"fix {path}"))
            continue
        found.append(_id_finding(path, used, cfg.idmap.source, ranges))
    if cfg.allow_privileged:
        found.append(Finding("privileged containers", WARNING, "helperd.allow_privileged is "
                             "set: admin tokens may make containers whose root is host root",
                             "remove helperd.allow_privileged unless a template needs it"))
    return found


def lxcpath_reachable(cfg: HelperConfig) -> list[Finding]:
    """An id-mapped container's root is an unprivileged uid on the host: liblxc mounts its
    rootfs as that uid, which must be able to pass through every directory up to lxcpath."""
    path = os.path.abspath(cfg.lxcpath)
    while not os.path.exists(path):  # not made yet: liblxc makes it 0755
        path = os.path.dirname(path)
    closed = []
    while True:
        st = os.stat(path)
        if not st.st_mode & 0o001 and st.st_uid != cfg.idmap.uid.start:
            closed.append(path)
        if path == "/":
            break
        path = os.path.dirname(path)
    if closed:
        return [Finding("lxcpath", PROBLEM, f"{', '.join(closed)}: not searchable by others, "
                        "so unprivileged containers under it cannot start",
                        f"chmod o+x {' '.join(closed)}")]
    return [Finding("lxcpath", OK, f"{cfg.lxcpath} is reachable by unprivileged containers")]


def _id_finding(path: str, used: idmap.IdRange, source: str,
                ranges: list[tuple[str, idmap.IdRange | None]]) -> Finding:
    what = f"new containers map root to {used} (from {source})"
    add = f"usermod --add-sub{path[-3:]}s {used} root"
    roots = [r for name, r in ranges if name in idmap.SUBID_USERS and r is not None]
    others = sorted(name for name, r in ranges if name not in idmap.SUBID_USERS
                    and r is not None and r.start < used.end and used.start < r.end)
    if others:
        return Finding(path, PROBLEM, f"{what}, which overlaps the range of "
                       f"{', '.join(others)}: their user namespaces share ids with containers",
                       f"set helperd.idmap to a range no one else has, and {add}")
    if not any(r.start <= used.start and used.end <= r.end for r in roots):
        return Finding(path, WARNING, f"{what}, not recorded for root here: it may be given "
                       "to a user later", add)
    if used.count < 65536:
        return Finding(path, WARNING, f"{what}: fewer than 65536 ids (nobody is 65534 in "
                       "most distributions)", "give root a range of 65536 ids")
    return Finding(path, OK, f"{what}, recorded for root")


def template_checks(cfg: HelperConfig) -> list[Finding]:
    found = []
    for name in sorted(cfg.templates):
        if not os.access(os.path.join(cfg.templates_dir, f"lxc-{name}"), os.X_OK):
            found.append(Finding(f"template {name}", PROBLEM, f"allowed but lxc-{name} is not "
                                 f"in {cfg.templates_dir}", "install it, or remove it from "
                                 "helperd.templates"))
        elif (why := templates.missing(name)) is not None:
            found.append(Finding(f"template {name}", PROBLEM, why))
        else:
            found.append(Finding(f"template {name}", OK, "allowed, installed, prerequisites "
                                 "present"))
    return found


def free_space(cfg: HelperConfig) -> list[Finding]:
    found = []
    for what, path in (("lxcpath", cfg.lxcpath), ("audit_dir", cfg.audit_dir)):
        existing = path
        while not os.path.exists(existing):  # not made yet: the helper makes it at start
            existing = os.path.dirname(existing)
        try:
            st = os.statvfs(existing)
        except OSError as exc:
            found.append(Finding(f"free space {what}", PROBLEM, f"{path}: {exc.strerror}"))
            continue
        free = st.f_bavail * st.f_frsize
        status = PROBLEM if free < FREE_PROBLEM else WARNING if free < FREE_WARNING else OK
        found.append(Finding(f"free space {what}", status, f"{free / GiB:.1f} GiB free under "
                             f"{path}", "" if status == OK else "free some space"))
    return found


def versions(_cfg: HelperConfig) -> list[Finding]:
    return [Finding("version", OK, f"lxc-web-panel {VERSION} (helper); liblxc "
                    f"{lxc_version()}")]


CHECKS: tuple[Check, ...] = (versions, cgroups, bridge, lxc_net, apparmor, id_ranges,
                             lxcpath_reachable,
                             template_checks, free_space)


def report(cfg: HelperConfig) -> list[dict[str, Any]]:
    """Every check's findings, in a fixed order; a check that fails is itself a finding."""
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            findings.extend(check(cfg))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            findings.append(Finding(check.__name__, WARNING, f"could not check: {exc}"))
    return [asdict(f) for f in findings]
