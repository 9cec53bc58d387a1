"""The trail on disk: its file names and order, its head file, its key, and reading records back.

Invariant: name order is trail order — rotated files are named by the seq of their first
record, the current file is always `audit.log`; nothing here writes a record.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from helperd.audit.record import AuditError, parse_line
from protocol import keyfile

# Files in the audit directory. Rotated files are named by the seq of their first record, so
# name order is trail order; the current file is always `audit.log`.
CURRENT = "audit.log"
ROTATED = "audit-{:012d}.log"
ROTATED_RE = re.compile(r"audit-(\d{12})\.log(?:\.gz)?")  # .gz: compressed by an operator
HEAD = "audit.head"
DIR_MODE, FILE_MODE, KEY_MODE = 0o750, 0o640, 0o600


def trail_files(directory: str) -> list[str]:
    """The trail's files in order: rotated ones by first seq, then the current one."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    # By first seq; a file being compressed (both forms present) counts once, uncompressed.
    rotated = sorted({n[:22]: n for n in sorted(names, reverse=True)
                      if ROTATED_RE.fullmatch(n)}.values())
    return [os.path.join(directory, n) for n in rotated + ([CURRENT] if CURRENT in names else [])]


def read_bytes(path: str) -> bytes:
    """A trail file's bytes, a rotated file compressed with gzip too."""
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def load_key(path: str, create: bool) -> bytes:
    """The chain key (root-only, 0600, apart from the token key); made on first use if `create`."""
    if create:
        keyfile.make(path, 0, KEY_MODE)
    try:
        return keyfile.read(path, f"{path}: the audit key")
    except ValueError as exc:
        raise AuditError(str(exc)) from None


def read_head(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, HEAD), "rb") as f:
            head = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuditError(f"{HEAD} cannot be read: {exc}") from None
    if (not isinstance(head, dict) or type(head.get("seq")) is not int
            or not isinstance(head.get("chain"), str) or not isinstance(head.get("open"), dict)):
        raise AuditError(f"{HEAD} is malformed")
    return head


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) and the torn rest after the last newline."""
    cut = data.rfind(b"\n") + 1
    return data[:cut].split(b"\n")[:-1], data[cut:]


def records_after(files: list[str], seq: int,
                  since: str | None = None) -> Iterator[dict[str, Any]]:
    """Parsed records with a seq above `seq` (and, if given, stamped at or after `since`),
    reading only the files that can hold them."""
    start = 0
    for i, path in enumerate(files):
        m = ROTATED_RE.fullmatch(os.path.basename(path))
        if m and int(m.group(1)) <= seq + 1:
            start = i
    for path in files[start:]:
        yield from records_of(path, seq, None if since is None else since.encode())


TS_KEY = b'"ts":"'


def records_of(path: str, seq: int = 0, since: bytes | None = None) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        for line in f:
            if since is not None:
                # "ts" sorts last of a record's keys, so its last occurrence is the record's
                # own: a line stamped before `since` is skipped without being parsed.
                at = line.rfind(TS_KEY) + len(TS_KEY)
                if at >= len(TS_KEY) and line[at:at + len(since)] < since:
                    continue
            record = parse_line(line)
            if record is not None and record["seq"] > seq:
                yield record

