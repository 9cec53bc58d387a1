"""Writing inside a container's root filesystem as host root, without following its links out.

A rootfs is the container's own: its root may have planted symlinks (`/etc/hostname ->
/var/lib/lwp/tokens.sqlite3`), FIFOs or device nodes anywhere in it. Every path the helper
opens in one is resolved by the kernel as if the rootfs were `/` (openat2 RESOLVE_IN_ROOT),
crosses no mount and no magic link, and is written only if it is a regular file.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct

# openat2(2) is 437 on every architecture Debian 12 ships (the generic syscall table).
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
CONFINED = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
O_PATH = getattr(os, "O_PATH", 0o10000000)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class RootfsError(Exception):
    """A path in a rootfs could not be opened safely (the message names it)."""


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """openat2(root_fd, path, flags) with `path` resolved inside root_fd, links included."""
    if platform.system() != "Linux":
        raise RootfsError("openat2 needs Linux")
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, 0, CONFINED)
    fd = _libc.syscall(SYS_OPENAT2, root_fd, os.fsencode(path), how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def rewrite_regular_file(root: str, path: str, data: bytes) -> bool:
    """Replace the contents of the regular file `path` of the rootfs at `root`.

    Returns False, changing nothing, when it does not exist (as liblxc, which only updates a
    hostname file that is there). Raises RootfsError when it resolves to anything but a
    regular file (a FIFO would block the helper, a device node would write to a host disk).
    """
    root_fd = os.open(root, os.O_DIRECTORY | O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            # O_PATH: finding and checking the file has no side effect on what it is.
            found = open_in_root(root_fd, path, O_PATH)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ELOOP, errno.ENOTDIR):
                raise RootfsError(f"{path} in the rootfs leads out of it or loops "
                                  f"({os.strerror(exc.errno)})") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(found).st_mode):
                raise RootfsError(f"{path} in the rootfs is not a regular file")
            # Reopened through the checked handle itself: no second lookup to race with.
            fd = os.open(f"/proc/self/fd/{found}", os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOCTTY | os.O_NONBLOCK)
        finally:
            os.close(found)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    finally:
        os.close(root_fd)
