"""Secret key files — the token key and the audit chain's key: one maker, one reader.

A key is exactly KEY_BYTES random bytes. Only root makes one: whole (O_EXCL, never through a
symbolic link) and synced before anyone reads it; an existing key is never replaced.
"""
from __future__ import annotations

import contextlib
import os
import secrets

KEY_BYTES = 32


def make(path: str, gid: int, mode: int) -> None:
    """Create `path` holding a fresh key unless it exists; either way own it root:`gid`, `mode`."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chown(path, 0, gid, follow_symlinks=False)
    os.chmod(path, mode, follow_symlinks=False)


def read(path: str, name: str) -> bytes:
    """The key in `path`; ValueError (naming it `name`) unless it is exactly KEY_BYTES long."""
    with open(path, "rb") as f:
        key = f.read()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{name} must hold exactly {KEY_BYTES} bytes")
    return key
