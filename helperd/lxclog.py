"""liblxc's own log, where a failure's cause is: which file it goes to, and what it says.

For a change run in a worker, liblxc logs at level ERROR to the worker's output (fd 1); for a
container started as lxc@NAME.service, to the file its config names (LOG_FILE in its
directory), set when the helper creates or clones it. Either way `causes` quotes liblxc's
first distinct errors: the first is the cause, the rest what it led to.
"""
from __future__ import annotations

import os
import re

KEYS = ("lxc.log.file", "lxc.log.level")
LEVEL = "ERROR"
WORKER_OUTPUT = "/proc/self/fd/1"  # liblxc opens it when the key is set: the job's output
LOG_FILE = "lxc.log"  # in the container's directory (lxcpath/NAME/), not in its rootfs
READ = 64 * 1024  # bytes of a log searched for errors: the cause comes first
CAUSES = 3
# "lxc web1 20261204165114.651 ERROR network - network.c:func:711 - <what went wrong>"
# (lxc-start's own lines begin with its name: 'lxc-start web1 …')
LINE = re.compile(r"lxc[a-z-]* \S+ \d{14}\.\d{3} ERROR +\S+ - \S+ - (.{1,300})")


def causes(text: str) -> list[str]:
    """liblxc's first distinct error messages in `text`, without their prefixes."""
    found: list[str] = []
    for line in text.splitlines():
        match = LINE.fullmatch(line.strip())
        if match and match.group(1) not in found:
            found.append(match.group(1))
            if len(found) == CAUSES:
                break
    return found


def is_log_line(line: str) -> bool:
    return LINE.fullmatch(line.strip()) is not None


def container_log(lxcpath: str, name: str) -> str:
    return os.path.join(lxcpath, name, LOG_FILE)


def empty(path: str) -> None:
    """Empty a container's log before an operation, so what it holds after is that one's."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    os.close(fd)


def read_causes(path: str) -> list[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return causes(os.read(fd, READ).decode("utf-8", "replace"))
    finally:
        os.close(fd)
