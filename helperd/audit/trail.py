"""The synchronous core of the writer: chain, append, fsync, rotate, and the head file.

Invariant: only the writer thread appends; a batch is on disk whole or not at all, and the
head is saved after its batch, so it may lag the trail but never lead it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helperd import safedirs
from helperd.audit.files import (
    CURRENT,
    DIR_MODE,
    FILE_MODE,
    HEAD,
    ROTATED,
    read_bytes,
    read_head,
    records_after,
    split_lines,
    trail_files,
)
from helperd.audit.record import GENESIS, AuditError, canonical, next_chain, parse_line

log = logging.getLogger("lwp.helperd.audit")

PAGE = 4096


@dataclass
class Pending:
    """A record on its way to disk, and what its durability opens or closes."""

    record: dict[str, Any]
    opens: str | None = None  # key of the in-flight operation a `start` record opens
    closes: str | None = None  # key of the one an `end` record closes
    meta: dict[str, Any] | None = None


class Trail:
    """The synchronous core: only the writer thread appends; the head is guarded by a lock.

    The head file (`audit.head`) holds the last seq and chain written, and the operations
    whose `start` is written but whose `end` is not. It is rewritten after every batch, after
    that batch is fsync'd, so it can lag the trail (a power loss) but never lead it: a trail
    that ends before the head's seq was cut. It is not fsync'd itself: a killed helper loses
    nothing of it (the page cache survives), a power loss at most the last few seconds.
    """

    def __init__(self, directory: str, key: bytes, rotate_bytes: int, gid: int,
                 forward: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.directory = directory
        self.key = key
        self.rotate_bytes = rotate_bytes
        self.gid = gid
        self.forward = forward
        self.seq = 0
        self.chain = GENESIS
        self.open_ops: dict[str, dict[str, Any]] = {}
        self.fd: int | None = None
        self.size = 0
        self.head_fd: int | None = None
        self.head_size = 0
        self.lock = threading.Lock()

    # -- opening: find where the chain stands, and what was in flight -----------------------

    def open(self) -> list[dict[str, Any]]:
        """Establish seq and chain; return the operations left in flight by the last helper."""
        safedirs.ensure_dir(self.directory, self.gid, DIR_MODE)  # never through a symlink
        try:
            head = read_head(self.directory)
        except AuditError as exc:  # torn by a power loss: rebuilt from the trail itself
            log.error("audit: %s; rebuilding it from the trail", exc)
            head = None
        files = trail_files(self.directory)
        last = self._repair_and_read_tail(files)
        if head is None:
            if last is not None:
                log.error("audit: %s is missing; a cut tail can no longer be detected", HEAD)
            head = {"seq": 0, "chain": GENESIS.hex(), "open": {}}
        self.open_ops = dict(head["open"])
        if last is not None and last["seq"] >= head["seq"]:
            self.seq, self.chain = last["seq"], bytes.fromhex(last["chain"])
            self._reconcile_after(head["seq"], files)
        else:
            # The trail ends before what was written: it was cut. Continue from the head, so
            # the gap stays visible to the verifier rather than being papered over.
            if last is not None or head["seq"]:
                log.error("audit: the trail ends at seq %s but %s says %d was written",
                          None if last is None else last["seq"], HEAD, head["seq"])
            self.seq, self.chain = head["seq"], bytes.fromhex(head["chain"])
        return list(self.open_ops.values())

    def _repair_and_read_tail(self, files: list[str]) -> dict[str, Any] | None:
        """The last complete record; a torn final line (never acknowledged) is cut off."""
        for path in reversed(files):
            data = read_bytes(path)
            lines, torn = split_lines(data)
            if torn and path.endswith(CURRENT):
                log.warning("audit: dropping %d bytes of a record torn by a crash", len(torn))
                with open(path, "r+b") as f:
                    f.truncate(len(data) - len(torn))
                    os.fsync(f.fileno())
            for line in reversed(lines):
                record = parse_line(line)
                if record is not None and isinstance(record.get("chain"), str):
                    return record
        return None

    def _reconcile_after(self, head_seq: int, files: list[str]) -> None:
        """Records written after the head was last saved: which of them opened or closed ops."""
        for record in records_after(files, head_seq):
            key = f"r{record['seq']}"
            if record.get("phase") == "start":
                self.open_ops[key] = {"key": key, "start": record, "child": None, "meta": {}}
            elif record.get("phase") == "end":
                for k, entry in list(self.open_ops.items()):
                    if entry["start"].get("request_id") == record.get("request_id") \
                            and entry["start"].get("op") == record.get("op"):
                        del self.open_ops[k]
                        break

    # -- appending ----------------------------------------------------------------------------

    def append(self, batch: list[Pending]) -> None:
        """Chain, write and fsync a batch, then rotate if due and save the head."""
        before = (self.seq, self.chain)
        fd = self._current()
        lines = [self._chained(item.record) for item in batch]
        data = b"".join(lines)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise AuditError(f"short write to the audit trail ({written} of {len(data)})")
            os.fdatasync(fd)
        except BaseException:
            # Nothing of a failed batch may stay: a torn line would break the chain for good.
            self.seq, self.chain = before
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise
        self.size += len(data)
        with self.lock:
            for item in batch:
                if item.opens is not None:
                    self.open_ops[item.opens] = {"key": item.opens, "start": item.record,
                                                 "child": None, "meta": item.meta or {}}
                if item.closes is not None:
                    self.open_ops.pop(item.closes, None)
            if self.size >= self.rotate_bytes:
                self._rotate()
            self._save_head()
        if self.forward is not None:
            for item in batch:
                self.forward(item.record)

    def _chained(self, record: dict[str, Any]) -> bytes:
        record["seq"] = self.seq + 1
        record.pop("chain", None)
        chain = next_chain(self.key, self.chain, canonical(record))
        record["chain"] = chain.hex()
        self.seq, self.chain = record["seq"], chain
        return canonical(record) + b"\n"

    def _current(self) -> int:
        if self.fd is None:
            path = os.path.join(self.directory, CURRENT)
            created = not os.path.exists(path)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                              | os.O_CLOEXEC, FILE_MODE)
            os.fchown(self.fd, 0, self.gid)
            os.fchmod(self.fd, FILE_MODE)
            self.size = os.fstat(self.fd).st_size
            if created:
                self._sync_dir()  # the new name must survive a crash, not only the bytes
        return self.fd

    def _rotate(self) -> None:
        """Rename the full current file after its first record; the next batch goes to a new one.

        Runs between batches in the writer thread, so no record is split, lost or repeated;
        the chain simply continues into the next file."""
        assert self.fd is not None
        path = os.path.join(self.directory, CURRENT)
        with open(path, "rb") as f:
            first = parse_line(f.readline())
        if first is None:
            raise AuditError("the current audit file does not start with a record")
        os.close(self.fd)
        self.fd = None
        os.rename(path, os.path.join(self.directory, ROTATED.format(first["seq"])))
        self._current()  # a fresh, empty audit.log at once (for `tail -F`); syncs both names

    def _sync_dir(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _save_head(self) -> None:
        """Rewrite the head in place (caller holds the lock).

        In place and padded to whole pages, never renamed or truncated: on ext4 a rename over
        the old head flushes its data with the next commit, a second flush for every batch.
        JSON allows the trailing padding."""
        data = json.dumps({"seq": self.seq, "chain": self.chain.hex(), "open": self.open_ops},
                          sort_keys=True).encode()
        if self.head_fd is None:
            self.head_fd = os.open(os.path.join(self.directory, HEAD),
                                   os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                   FILE_MODE)
            os.fchown(self.head_fd, 0, self.gid)
            os.fchmod(self.head_fd, FILE_MODE)
            self.head_size = os.fstat(self.head_fd).st_size
        self.head_size = max(self.head_size, -(-(len(data) + 1) // PAGE) * PAGE)
        os.pwrite(self.head_fd, data.ljust(self.head_size), 0)

    def note_child(self, key: str, pid: int) -> None:
        """Remember the isolated child of an in-flight op, so a later start can end it."""
        with self.lock:
            entry = self.open_ops.get(key)
            if entry is not None:
                stat = proc_stat(pid)
                entry["child"] = [pid, None if stat is None else stat[1]]
                self._save_head()

    def close(self) -> None:
        for fd in (self.fd, self.head_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.head_fd = None



def proc_stat(pid: int | str) -> tuple[int, int, str] | None:
    """(process group, start time in ticks since boot, state) of a process, None if gone.

    With the pid, the start time names one process: a pid can be reused, the pair cannot."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields count from the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[2]), int(fields[19]), fields[0].decode()

