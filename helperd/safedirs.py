"""The helper's own directories (socket, state, audit), made or taken over without following links.

A directory is opened with O_DIRECTORY|O_NOFOLLOW and its owner and mode are set through that
descriptor, so a symlink planted at the path can never redirect a root chown or chmod; an
existing directory that root does not own is refused, never taken over.
"""
from __future__ import annotations

import errno
import os
import stat

from protocol.config import ConfigError

# A symlink met by O_DIRECTORY|O_NOFOLLOW fails with ENOTDIR (ELOOP without O_DIRECTORY).
NOT_A_DIRECTORY = (errno.ENOTDIR, errno.ELOOP)


def ensure_dir(path: str, gid: int, mode: int) -> None:
    """Make `path` (and missing parents) if absent; then, through a no-follow descriptor,
    check it is a directory owned by root and set it root:`gid` with `mode`.

    Raises ConfigError naming the path if it is a symlink, not a directory, or not root's.
    Only the last component is checked: a parent may be a symlink (Debian's /var/run is)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, 0o700)  # at most root's until the mode below is set
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in NOT_A_DIRECTORY:
            raise
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise ConfigError(f"{path}: is a symbolic link; the helper does not follow links "
                              "for its own directories") from None
        raise ConfigError(f"{path}: is not a directory") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != 0:
            # Whoever owns it could have put anything inside (a socket, a database, links).
            raise ConfigError(f"{path}: owned by uid {info.st_uid}, not root; refusing to "
                              "take it over (chown it to root or choose another path)")
        os.fchown(fd, 0, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
