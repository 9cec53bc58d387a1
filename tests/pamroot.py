"""A temporary root for PAM tests: real accounts that exist only in a private mount namespace.

`make_root` writes copies of the host's /etc/passwd, shadow, group, gshadow and pam.d with the
test's users added (hashes from `openssl passwd -6`); `python -m tests.pamroot ROOT -- ARGV`
runs ARGV where those copies are bind-mounted over /etc, so pam_unix checks them for real
while the host's own files are never written.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAM_SERVICE_FILE = os.path.join(ROOT, "packaging", "deb", "debian", "lxc-web-panel.lwp.pam")
FILES = ("passwd", "shadow", "group", "gshadow", "pam.d")
FIRST_ID = 61000  # far from Debian's system (<1000) and user (1000-59999) ranges
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


@dataclass(frozen=True)
class User:
    name: str
    password: str | None  # None: the shadow field is given as `hash` as it stands
    groups: tuple[str, ...] = ()  # supplementary groups (made if missing)
    hash: str = ""  # used when password is None: "" (no password), "!..." (locked)
    expire_day: str = ""  # shadow field 8: days since 1970 when the account expires
    last_change: str = "19000"  # shadow field 3: 0 means "must change at next login"
    primary: str = ""  # a group as primary group instead of a group of its own


def crypt(password: str) -> str:
    """A SHA-512 crypt hash, as `passwd` would store it (openssl passwd -6, its own salt)."""
    return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password.encode(),
                          capture_output=True, check=True).stdout.decode().strip()


def make_root(base: str, users: list[User]) -> str:
    """Copies of the host's account files and pam.d, plus `users`, in base/etc."""
    etc = os.path.join(base, "etc")
    os.makedirs(etc, exist_ok=True)
    for name in FILES[:-1]:
        shutil.copy2(os.path.join("/etc", name), os.path.join(etc, name))
    shutil.copytree("/etc/pam.d", os.path.join(etc, "pam.d"), dirs_exist_ok=True)
    shutil.copy2(PAM_SERVICE_FILE, os.path.join(etc, "pam.d", "lwp"))
    groups: dict[str, tuple[int, list[str]]] = {}
    passwd, shadow = [], []
    for i, user in enumerate(users):
        uid = FIRST_ID + i
        wanted = [user.primary] if user.primary else []
        for group in [*user.groups, *wanted]:
            groups.setdefault(group, (FIRST_ID + 500 + len(groups), []))
        for group in user.groups:
            groups[group][1].append(user.name)
        gid = groups[user.primary][0] if user.primary else uid
        if not user.primary:
            groups[user.name] = (uid, [])
        passwd.append(f"{user.name}:x:{uid}:{gid}::/nonexistent:/usr/sbin/nologin\n")
        field = crypt(user.password) if user.password is not None else user.hash
        shadow.append(f"{user.name}:{field}:{user.last_change}:0:99999:7::"
                      f"{user.expire_day}:\n")
    _append(etc, "passwd", passwd)
    _append(etc, "shadow", shadow)
    _append(etc, "group", [f"{g}:x:{gid}:{','.join(m)}\n" for g, (gid, m) in groups.items()])
    _append(etc, "gshadow", [f"{g}:!::{','.join(m)}\n" for g, (gid, m) in groups.items()])
    return etc


def _append(etc: str, name: str, lines: list[str]) -> None:
    with open(os.path.join(etc, name), "a") as f:
        f.writelines(lines)


def _enter(etc: str) -> None:
    """This process (and what it execs) sees etc's copies at /etc; nobody else does."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    # Private first: otherwise the binds would propagate back to the host's mount table.
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    for name in FILES:
        source, target = os.path.join(etc, name), os.path.join("/etc", name)
        if libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind {source} on {target}")


def command(etc: str, argv: list[str]) -> list[str]:
    """argv, to be run inside etc's temporary root."""
    return [sys.executable, "-m", "tests.pamroot", etc, "--", *argv]


if __name__ == "__main__":
    _enter(sys.argv[1])
    assert sys.argv[2] == "--"
    os.execv(sys.argv[3], sys.argv[3:])
