"""What each template the helper may run needs on the host: one table, one check.

A template whose program is missing fails deep inside with its own words ("Please pass a
pathname for busybox binary"); the helper checks first and names the Debian package instead.
"""
from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass

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
    "debian": (Needs("debootstrap", "debootstrap"),),
}


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
