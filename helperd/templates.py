"""What each template the helper may run needs on the host: one table, one check; and the
host's own answers (architecture, apt mirror) that a template's defaults come from.

A template whose program is missing fails deep inside with its own words ("Please pass a
pathname for busybox binary"); the helper checks first and names the Debian package instead.
"""
from __future__ import annotations

import glob
import platform
import shutil
import struct
import subprocess
from dataclasses import dataclass

from protocol import rules

# The PATH templates run with under systemd (and what a root shell has): where they look.
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PT_INTERP = 3  # an ELF program header naming the dynamic loader: not a static binary


@dataclass(frozen=True)
class Needs:
    program: str
    package: str  # the Debian package that provides it
    static: bool = False  # copied into the rootfs, where the host's libraries are not


PREREQUISITES: dict[str, tuple[Needs, ...]] = {
    # lxc-busybox copies the host's busybox into the container: Debian's `busybox` is
    # dynamically linked and cannot run there, `busybox-static` can.
    "busybox": (Needs("busybox", "busybox-static", static=True),),
    # lxc-debian: without wget it takes every architecture for a debian-ports one and
    # switches to that archive; without debian-distro-info it writes a security suite
    # (bookworm/updates) that does not exist, and apt in the container fails; rsync copies
    # the cached rootfs.
    "debian": (Needs("debootstrap", "debootstrap"), Needs("wget", "wget"),
               Needs("debian-distro-info", "distro-info"), Needs("rsync", "rsync")),
}
# Templates that refuse to run for an id-mapped container, and what they say (issue #13).
USERNS_REFUSED = {
    "debian": "lxc-debian refuses user namespaces (it would need mknod and real root); ask "
              "for \"privileged\": true where helperd.allow_privileged is set",
}
# The package that installs lxc-<template> in LXC's template directory.
PROVIDERS = {"busybox": "lxc", "debian": "lxc-templates"}
# Where lxc-debian fetches from when the host's apt sources name no usable mirror.
DEBIAN_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list",
               "/etc/apt/sources.list.d/*.sources")
# uname -m -> dpkg's name, for a host without dpkg (as lxc-debian maps them).
MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "armv7l": "armhf",
                "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64"}


def host_arch() -> str:
    """The host's dpkg architecture: the only one its kernel runs without an emulator."""
    try:
        done = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=False, timeout=10)
        arch = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        arch = ""
    return arch or MACHINE_ARCH.get(platform.machine(), platform.machine())


def host_mirror(release: str) -> str:
    """The first http(s) URI the host's apt sources fetch `release` itself from (not its
    -security or -updates suites), else deb.debian.org."""
    for pattern in APT_SOURCES:
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path) as f:
                    text = f.read()
            except OSError:
                continue
            found = (_deb822_mirror if path.endswith(".sources") else _list_mirror)(text, release)
            if found:
                return found
    return DEBIAN_MIRROR


def _usable(uri: str) -> str:
    uri = uri.rstrip("/")
    return uri if rules.MIRROR_RE.fullmatch(uri) else ""


def _list_mirror(text: str, release: str) -> str:
    for line in text.splitlines():
        words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")
                 and not w.endswith("]")]  # "[arch=amd64 signed-by=...]" options
        if len(words) >= 3 and words[0] == "deb" and words[2] == release and _usable(words[1]):
            return _usable(words[1])
    return ""


def _deb822_mirror(text: str, release: str) -> str:
    for stanza in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            key, colon, value = line.partition(":")
            if colon and not line.startswith(("#", " ", "\t")):
                fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and release in fields.get("suites", []) and \
                fields.get("enabled", ["yes"]) != ["no"]:
            for uri in fields.get("uris", []):
                if _usable(uri):
                    return _usable(uri)
    return ""


def check_values(template: str, pairs: tuple[tuple[str, str], ...],
                 allowed: dict[str, dict[str, frozenset[str]]]) -> None:
    """Refuse a value of a `choice` option that this host does not allow (invalid-request
    naming the option and the allowed values); shapes were checked by rules.parse_xargs."""
    rules.host_values(template, pairs, allowed.get(template, {}))


def missing(template: str) -> str | None:
    """Why `template` cannot run on this host, naming what to install; None when it can."""
    for need in PREREQUISITES.get(template, ()):
        path = shutil.which(need.program, path=SEARCH_PATH)
        if path is None:
            return (f"template {template!r} needs the program {need.program!r}, which is not "
                    f"installed: apt install {need.package}")
        if need.static and not is_static(path):
            return (f"template {template!r} copies {path} into the container, where it cannot "
                    f"run: it is dynamically linked; apt install {need.package}")
    return None


def is_static(path: str) -> bool:
    """Whether the ELF file at `path` runs without a dynamic loader (has no PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
                return False
            order = "<" if head[5] == 1 else ">"
            if head[4] == 2:  # 64-bit
                phoff, = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            if phentsize < 4 or phnum > 4096:
                return False
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    if len(table) < phentsize * phnum:
        return False
    return all(struct.unpack_from(order + "I", table, i * phentsize)[0] != PT_INTERP
               for i in range(phnum))
