"""The audit trail: one JSON record a line, HMAC-chained across size-rotated files, fsync'd.

Only the helper writes it (one writer thread, group commit). A change's records are on disk
before it is answered; reads and refusals are written once per key and window, then counted
(one `summary` record per key when the window closes). The chain, seq and head show any edit.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import gzip
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from helperd import safedirs
from protocol import ops, rules
from protocol.errors import LwpError

log = logging.getLogger("lwp.helperd.audit")

# Files in the audit directory. Rotated files are named by the seq of their first record, so
# name order is trail order; the current file is always `audit.log`.
CURRENT = "audit.log"
ROTATED = "audit-{:012d}.log"
ROTATED_RE = re.compile(r"audit-(\d{12})\.log(?:\.gz)?")  # .gz: compressed by an operator
HEAD = "audit.head"
KEY_BYTES = 32
PAGE = 4096
# chain_0: the value the first record (seq 1) chains from.
GENESIS = bytes(32)
DIR_MODE, FILE_MODE, KEY_MODE = 0o750, 0o640, 0o600
# A query reply must fit one frame (64 KiB of msgpack); JSON is the larger of the two.
QUERY_BUDGET = 48 * 1024

# Which outcome each error code is; a test proves it covers protocol's whole vocabulary.
OUTCOME_OF_CODE: dict[str, str] = {
    "invalid-request": "invalid",
    "payload-too-large": "invalid",
    "protocol-error": "invalid",
    "unauthorized": "denied",
    "forbidden": "denied",
    "rate-limited": "denied",
    "timeout": "timeout",
    "not-found": "error",
    "method-not-allowed": "invalid",
    "no-such-container": "error",
    "container-exists": "error",
    "invalid-state": "error",
    "token-exists": "error",
    "operation-failed": "error",
    "helper-unavailable": "error",
    "internal-error": "error",
    "insufficient-storage": "error",
}
# Refusals: counted per key and window, never written one by one (a flood of them is cheap to
# send). Changes refused before they start are refusals too; one that started is never counted.
REFUSAL_CODES = frozenset({"invalid-request", "payload-too-large", "protocol-error",
                           "unauthorized", "forbidden", "rate-limited", "insufficient-storage"})
# Reads: every op that changes nothing. Token create/revoke change the store: never counted.
READ_OPS = frozenset(name for name, op in ops.OPS.items()
                     if not op.mutating and name not in ("create_token", "revoke_token"))
# What a counted record's key is made of (in `summary.key`): a decoded request, and a frame
# that did not decode or a key past the window's table (whose other fields a peer chooses).
KEY_FIELDS = ("op", "actor", "client", "container", "peer.uid", "outcome", "code")
COARSE_KEY_FIELDS = ("op", "peer.uid", "outcome", "code")


class AuditError(Exception):
    """The trail cannot be written or read as it must be."""


# -- the record format --------------------------------------------------------------------

def canonical(record: dict[str, Any]) -> bytes:
    """The one byte form of a record: what the chain covers and what a line holds."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def next_chain(key: bytes, previous: bytes, body: bytes) -> bytes:
    """chain_i = HMAC-SHA256(key, chain_{i-1} || canonical bytes of record i without chain)."""
    return hmac.new(key, previous + body, hashlib.sha256).digest()


_SECOND: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def utc_now() -> str:
    """The time as records carry it (microseconds, UTC). The date and time of day are
    formatted once a second: datetime's strftime on every record was 7 % of a read's CPU."""
    global _SECOND
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    if seconds != _SECOND[0]:
        _SECOND = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_SECOND[1]}.{micros:06d}Z"


def utc_text(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _create_token_args(req: ops.CreateToken) -> dict[str, Any]:
    # Never the token: only whether the client chose it.
    return {"description": req.description, "scope": req.scope, "expires": _jsonable(req.expires),
            "token_chosen": req.token is not None}


def _revoke_token_args(req: ops.RevokeToken) -> dict[str, Any]:
    # Revoked by token: the id is filled in from the result; the token itself never appears.
    return {"by": "id" if req.id is not None else "token", "id": req.id}


ARGS_OF: dict[type, Callable[[Any], dict[str, Any]]] = {
    ops.CreateToken: _create_token_args,
    ops.RevokeToken: _revoke_token_args,
}
# Results that complete a record's args: the id of a token made or revoked.
RESULT_ARGS: dict[type, Callable[[Any], dict[str, Any]]] = {
    ops.CreateToken: lambda result: {"id": result["id"]},
    ops.RevokeToken: lambda result: {"id": result["id"]},
}


def args_of(request: Any) -> dict[str, Any]:
    """A request's arguments as validated, with every secret left out."""
    special = ARGS_OF.get(type(request))
    if special is not None:
        return special(request)
    return {f.name: _jsonable(getattr(request, f.name)) for f in dataclasses.fields(request)}


def blank_record() -> dict[str, Any]:
    """Every record has every key (null where it does not apply), so queries need no guesses."""
    return {"ts": utc_now(), "request_id": None, "phase": "single", "op": None,
            "outcome": None, "container": None, "actor": None, "client": None,
            "peer": None, "args": None, "error": None, "duration_ms": None, "recovery": None,
            "summary": None}


# -- files ----------------------------------------------------------------------------------

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
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, KEY_MODE)
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chown(path, 0, 0, follow_symlinks=False)
        os.chmod(path, KEY_MODE, follow_symlinks=False)
    with open(path, "rb") as f:
        key = f.read()
    if len(key) != KEY_BYTES:
        raise AuditError(f"{path}: the audit key must be exactly {KEY_BYTES} bytes")
    return key


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


def parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        return None
    return record


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) and the torn rest after the last newline."""
    cut = data.rfind(b"\n") + 1
    return data[:cut].split(b"\n")[:-1], data[cut:]


# -- the writer -----------------------------------------------------------------------------

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
            lines, torn = _split_lines(data)
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
        the old head flushes its data with the next commit, which doubled the cost of a batch.
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
        yield from _records_of(path, seq, None if since is None else since.encode())


TS_KEY = b'"ts":"'


def _records_of(path: str, seq: int = 0, since: bytes | None = None) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        for line in f:
            if since is not None:
                # "ts" sorts last of a record's keys, so its last occurrence is the record's
                # own: a line stamped before `since` is skipped without being parsed (20x).
                at = line.rfind(TS_KEY) + len(TS_KEY)
                if at >= len(TS_KEY) and line[at:at + len(since)] < since:
                    continue
            record = parse_line(line)
            if record is not None and record["seq"] > seq:
                yield record


@dataclass
class Counted:
    """A key's repeats in the current window, after the one written in full."""

    first_record: dict[str, Any]  # the record written at once (its seq once on disk)
    code: str | None
    key_fields: tuple[str, ...]
    count: int = 0
    first: str | None = None
    last: str | None = None


class Aggregator:
    """Reads and refusals, per window: the first of a key is written, its repeats counted.

    Memory is bounded: past `max_keys` keys in a window, new ones fall into a coarse key (op,
    peer uid, outcome, code), of which there are few. Counts not yet written are lost only if
    the helper dies (at most one window); a clean stop writes them.
    """

    def __init__(self, window: float, max_keys: int) -> None:
        self.window = window
        self.max_keys = max_keys
        self.table: dict[tuple[Any, ...], Counted] = {}

    def key_of(self, record: dict[str, Any], code: str | None,
               coarse: bool) -> tuple[tuple[Any, ...], tuple[str, ...]]:
        peer_uid = (record.get("peer") or {}).get("uid")
        if not coarse:
            actor = record.get("actor") or {}
            key = ("full", record["op"], actor.get("token_id"), actor.get("scope"),
                   record["client"], record["container"], peer_uid, record["outcome"], code)
            if key in self.table or len(self.table) < self.max_keys:
                return key, KEY_FIELDS
        return ("coarse", known_op(record), peer_uid, record["outcome"], code), COARSE_KEY_FIELDS

    def note(self, record: dict[str, Any], code: str | None,
             coarse: bool) -> dict[str, Any] | None:
        """The record to write now (in full: the key's first in this window), or None: it
        was counted."""
        key, fields = self.key_of(record, code, coarse)
        entry = self.table.get(key)
        if entry is None:
            self.table[key] = Counted(record, code, fields)
            return record
        entry.count += 1
        entry.first = entry.first or record["ts"]
        entry.last = record["ts"]
        return None

    def forget(self, record: dict[str, Any]) -> None:
        """A first record that could not be written: the next of its key is written instead."""
        for key, entry in list(self.table.items()):
            if entry.first_record is record:
                del self.table[key]

    def close_window(self) -> list[dict[str, Any]]:
        """One summary record per key that had repeats; the table starts afresh."""
        table, self.table = self.table, {}
        return [summary_record(entry) for entry in table.values() if entry.count]


def known_op(record: dict[str, Any]) -> str | None:
    """The record's op if protocol declares it: a name a peer made up is never a key."""
    op = record.get("op")
    return op if op in ops.OPS else None


def summary_record(entry: Counted) -> dict[str, Any]:
    """`count` more requests like record `of_seq` (same `key` fields) from `first` to `last`."""
    first = entry.first_record
    record = blank_record()
    record.update(phase="summary", outcome=first["outcome"],
                  peer={"uid": (first.get("peer") or {}).get("uid"), "pid": None})
    record["op"] = known_op(first)
    for name in ("actor", "client", "container"):
        if name in entry.key_fields:
            record[name] = first[name]
    record["summary"] = {"count": entry.count, "first": entry.first, "last": entry.last,
                         "code": entry.code, "of_seq": first.get("seq"),
                         "key": list(entry.key_fields)}
    return record


class AuditWriter:
    """Group commit: every record queued while a write+fsync runs goes into the next one."""

    def __init__(self, trail: Trail, window: float = 60.0, max_keys: int = 4096) -> None:
        self.trail = trail
        self.aggregator = Aggregator(window, max_keys)
        self._queue: list[tuple[Pending, asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="audit")
        self._keys = 0

    async def write_counted(self, record: dict[str, Any], code: str | None,
                            coarse: bool = False) -> None:
        """A read or refusal: written (durably) if it is its key's first in the window, else
        only counted, for the window's summary."""
        first = self.aggregator.note(record, code, coarse)
        if first is None:
            return
        try:
            await self.write(Pending(first))
        except AuditError:
            self.aggregator.forget(first)
            raise

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.aggregator.window)
            await self.flush_counts()

    async def flush_counts(self) -> None:
        """Write the summaries of the window now closing."""
        summaries = self.aggregator.close_window()
        if summaries:
            try:
                await asyncio.gather(*(self.write(Pending(r)) for r in summaries))
            except AuditError:
                log.error("audit: %d summary records could not be written", len(summaries))

    async def write(self, item: Pending) -> None:
        """Return once the record is on disk; raise AuditError if it cannot be put there."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
            self._ticker = loop.create_task(self._tick())
        assert self._wake is not None
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((item, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                await loop.run_in_executor(self._thread, self.trail.append,
                                           [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 — every waiter learns it failed
                log.exception("audit: writing %d records failed", len(batch))
                for _, done in batch:
                    if not done.done():
                        done.set_exception(AuditError(f"the audit trail cannot be written "
                                                      f"({type(exc).__name__})"))
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    def new_key(self) -> str:
        self._keys += 1
        return f"k{os.getpid()}-{self._keys}-{time.monotonic_ns()}"

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            await self.flush_counts()  # a clean stop loses no count
        if self._task is not None:
            while self._queue:
                await asyncio.sleep(0.01)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown(wait=True)
        self.trail.close()


def open_trail(directory: str, key_file: str, rotate_bytes: int, group: str,
               forward: Callable[[dict[str, Any]], None] | None, window: float = 60.0,
               window_keys: int = 4096) -> tuple[AuditWriter, list[dict[str, Any]]]:
    """The writer, and the operations the last helper left in flight (for recovery).

    A key is made only for an empty trail: a lost key must not quietly start a new chain."""
    key = load_key(key_file, create=not trail_files(directory))
    trail = Trail(directory, key, rotate_bytes, grp.getgrnam(group).gr_gid, forward)
    in_flight = trail.open()
    return AuditWriter(trail, window, window_keys), in_flight


# -- one request's records -----------------------------------------------------------------

class Call:
    """The records of one request: `begin` before liblxc is touched, `finish` before replying."""

    def __init__(self, writer: AuditWriter, peer_uid: int, peer_pid: int) -> None:
        self.writer = writer
        self.started = time.monotonic()
        self.base = blank_record()
        self.base["peer"] = {"uid": peer_uid, "pid": peer_pid}
        self.request: Any = None
        self.open_key: str | None = None

    def describe(self, envelope: ops.Envelope) -> None:
        request = envelope.request
        self.request = request
        self.base.update(request_id=envelope.request_id, op=envelope.op.name,
                         client=envelope.client, args=args_of(request),
                         container=getattr(request, "name", None))

    def describe_refused(self, obj: object) -> None:
        """What is known of a frame that did not decode: its id, op and client if readable."""
        if not isinstance(obj, dict):
            return
        for key, field, limit in (("id", "request_id", 64), ("op", "op", 64),
                                  ("client", "client", ops.MAX_CLIENT)):
            value = obj.get(key)
            if isinstance(value, str) and value.isprintable():
                self.base[field] = value[:limit]

    def set_actor(self, token_id: int | None, description: str, scope: str) -> None:
        self.base["actor"] = {"token_id": token_id, "description": description, "scope": scope}

    async def begin(self, meta: dict[str, Any]) -> None:
        """The `start` record of a mutation, durable before the liblxc call is made."""
        key = self.writer.new_key()
        record = {**self.base, "ts": utc_now(), "phase": "start"}
        await self.writer.write(Pending(record, opens=key, meta=meta))
        self.open_key = key

    def child_started(self, pid: int) -> None:
        if self.open_key is not None:
            self.writer.trail.note_child(self.open_key, pid)

    async def finish(self, code: str | None, message: str | None, result: Any = None) -> None:
        """The outcome record (`end` after a `start`, else `single`)."""
        record: dict[str, Any] = {
            **self.base, "ts": utc_now(),
            "phase": "end" if self.open_key is not None else "single",
            "outcome": "ok" if code is None else OUTCOME_OF_CODE[code],
            "error": message,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3)}
        complete = RESULT_ARGS.get(type(self.request))
        if code is None and complete is not None and record["args"] is not None:
            record["args"] = {**record["args"], **complete(result)}
        if self.open_key is None and (code in REFUSAL_CODES or record["op"] in READ_OPS):
            # Never a change that started: those keep their own start and end records.
            await self.writer.write_counted(record, code, coarse=self.request is None)
            return
        await self.writer.write(Pending(record, closes=self.open_key))


# -- reading: queries and verification ---------------------------------------------------------

def _matches(record: dict[str, Any], q: ops.QueryAudit, since: str | None,
             until: str | None) -> bool:
    ts = record.get("ts") or ""
    actor = record.get("actor") or {}
    args = record.get("args") or {}
    checks = (
        since is None or ts >= since,
        until is None or ts <= until,
        q.container is None or q.container in (record.get("container"), args.get("source")),
        q.op is None or record.get("op") == q.op,
        q.outcome is None or record.get("outcome") == q.outcome,
        q.actor is None or _actor_matches(actor, q.actor),
    )
    return all(checks)


def _actor_matches(actor: dict[str, Any], wanted: str) -> bool:
    if rules.ascii_digits(wanted):
        return actor.get("token_id") == int(wanted)
    return wanted.lower() in str(actor.get("description", "")).lower()


# A rotated file's (size, mtime, first ts, last ts), by path: rotated files never change, so
# a query reads each one's ends once, not its body, to know whether it can hold a match.
_BOUNDS: dict[str, tuple[int, int, str, str]] = {}
TAIL_CHUNK = 8192


def file_bounds(path: str) -> tuple[str, str] | None:
    """The times of a rotated file's first and last records (None if it holds none)."""
    st = os.stat(path)
    cached = _BOUNDS.get(path)
    if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
        return cached[2], cached[3]
    if path.endswith(".gz"):
        stamps = [r.get("ts") for r in _records_of(path)]
        first, last = (stamps[0], stamps[-1]) if stamps else (None, None)
    else:
        first, last = _plain_bounds(path, st.st_size)
    if not isinstance(first, str) or not isinstance(last, str):
        return None
    if len(_BOUNDS) > 4096:
        _BOUNDS.clear()
    _BOUNDS[path] = (st.st_size, st.st_mtime_ns, first, last)
    return first, last


def _plain_bounds(path: str, size: int) -> tuple[Any, Any]:
    with open(path, "rb") as f:
        head = parse_line(f.readline())
        tail = b""
        while size > 0 and tail.count(b"\n") < 2:
            step = min(TAIL_CHUNK, size)
            size -= step
            f.seek(size)
            tail = f.read(step) + tail
    lines = [line for line in tail.split(b"\n") if line]
    last = parse_line(lines[-1]) if lines else None
    return (None if head is None else head.get("ts")), (None if last is None else last.get("ts"))


def files_in_time(files: list[str], since: str | None, until: str | None) -> list[str]:
    """The files that can hold a record from `since` to `until`.

    Records are in time order (the helper stamps them as it writes them); a clock stepped
    back by the host can hide records from a time-bounded query, never alter the trail."""
    if since is None and until is None:
        return files
    kept = []
    for path in files:
        bounds = None if path.endswith(CURRENT) else file_bounds(path)
        if bounds is not None:
            if since is not None and bounds[1] < since:
                continue  # all of it is older
            if until is not None and bounds[0] > until:
                break  # all of it, and everything after, is newer
        kept.append(path)
    return kept


def query(directory: str, q: ops.QueryAudit) -> dict[str, Any]:
    """One page of matching records in trail order; `next_cursor` is None on the last page."""
    since = None if q.since is None else utc_text(ops.audit_time(q.since, "since"))
    until = None if q.until is None else utc_text(ops.audit_time(q.until, "until"))
    found: list[dict[str, Any]] = []
    size = 0
    files = files_in_time(trail_files(directory), since, until)
    for record in records_after(files, q.cursor or 0, since):
        if until is not None and (record.get("ts") or "") > until:
            break  # in time order: nothing later can match
        if not _matches(record, q, since, until):
            continue
        size += len(canonical(record))
        if len(found) == q.limit or size > QUERY_BUDGET:
            return {"records": found, "next_cursor": found[-1]["seq"] if found else None}
        found.append(record)
    return {"records": found, "next_cursor": None}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    files: int
    where: str = ""  # file:line of the first bad record
    seq: int | None = None
    reason: str = ""
    line: str = ""
    anchor: int | None = None  # the seq verified from, when older files were archived


def verify(directory: str, key: bytes, tries: int = 3, from_oldest: bool = False) -> Verdict:
    """Check the whole trail from genesis: line form, seq, chain, and the head's last record.

    `from_oldest`: older files were archived away; the first record present is the anchor
    (checked for form only, its chain value trusted) and everything after it is checked in
    full. A live trail may rotate or grow while it is read; a failure is re-checked a few
    times before it is reported (tampering fails every time)."""
    verdict = _verify_once(directory, key, from_oldest)
    for _ in range(tries - 1):
        if verdict.ok:
            break
        time.sleep(0.2)
        verdict = _verify_once(directory, key, from_oldest)
    return verdict


def _anchor(line: bytes) -> tuple[int, bytes] | None:
    """The seq and chain value of a well-formed record taken on trust as the starting point."""
    record = parse_line(line)
    if record is None or canonical(record) != line:
        return None
    try:
        return record["seq"], bytes.fromhex(str(record.get("chain")))
    except ValueError:
        return None


def _verify_once(directory: str, key: bytes, from_oldest: bool = False) -> Verdict:
    # The head first: it never leads the trail, so records read afterwards cover it.
    try:
        head = read_head(directory)
    except AuditError as exc:
        return Verdict(False, 0, 0, HEAD, None, str(exc))
    files = trail_files(directory)
    previous, expected, count = GENESIS, 1, 0
    anchoring = from_oldest
    first_seq: int | None = None
    head_chain = GENESIS.hex() if head is not None and head["seq"] == 0 else None
    for path in files:
        name = os.path.basename(path)
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            return Verdict(False, count, len(files), name, None, "the file vanished")
        except (OSError, EOFError) as exc:  # a damaged .gz
            return Verdict(False, count, len(files), name, None, f"unreadable: {exc}")
        lines, torn = _split_lines(data)
        for number, line in enumerate(lines, 1):
            if anchoring and (parse_line(line) or {}).get("seq") == 1:
                anchoring = False  # nothing archived after all: check from genesis
                first_seq = 1
            if anchoring:  # older files archived: start from the first record present
                anchor = _anchor(line)
                if anchor is None:
                    return Verdict(False, 0, len(files), f"{name}:{number}", None,
                                   "the anchor (the first record present) is not well-formed")
                anchoring = False
                first_seq = anchor[0]
                previous, expected, count = anchor[1], anchor[0] + 1, 1
                if head is not None and head["seq"] == anchor[0]:
                    head_chain = anchor[1].hex()
                continue
            bad = _check_line(line, key, previous, expected)
            if isinstance(bad, str):
                record = parse_line(line)
                return Verdict(False, count, len(files), f"{name}:{number}",
                               None if record is None else record["seq"], bad,
                               line.decode("utf-8", "replace")[:400])
            if head is not None and expected == head["seq"]:
                head_chain = bad.hex()
            previous, expected, count = bad, expected + 1, count + 1
        if torn:
            return Verdict(False, count, len(files), f"{name}:{len(lines) + 1}", None,
                           "an incomplete record (the file was cut inside a line)",
                           torn.decode("utf-8", "replace")[:400])
        m = ROTATED_RE.fullmatch(name)
        if m and int(m.group(1)) != expected - len(lines):
            return Verdict(False, count, len(files), f"{name}:1", expected - len(lines),
                           "the file's name does not match the seq of its first record")
    verdict = _check_head(head, count, len(files), expected - 1, head_chain)
    return dataclasses.replace(verdict, anchor=first_seq) if from_oldest else verdict


def _check_line(line: bytes, key: bytes, previous: bytes, expected: int) -> bytes | str:
    """The record's chain value, or why the line is bad."""
    record = parse_line(line)
    if record is None or not isinstance(record.get("chain"), str):
        return "not a well-formed audit record"
    if canonical(record) != line:
        return "the line is not in canonical form (edited)"
    if record["seq"] != expected:
        return (f"seq {record['seq']} where {expected} was due: records are missing, "
                "inserted or out of order (or a rotated file was removed)")
    claimed = record.pop("chain")
    chain = next_chain(key, previous, canonical(record))
    if not hmac.compare_digest(chain.hex(), claimed):
        return "the chain value does not match: the record or one before it was altered"
    return chain


def _check_head(head: dict[str, Any] | None, count: int, files: int, last_seq: int,
                head_chain: str | None) -> Verdict:
    if head is None:
        if count == 0:
            return Verdict(True, 0, files)
        return Verdict(False, count, files, HEAD, None,
                       "the head file is missing, so a cut tail cannot be ruled out")
    if head["seq"] > last_seq:
        return Verdict(False, count, files, f"after seq {last_seq}", last_seq + 1,
                       f"the trail ends at seq {last_seq} but {head['seq']} records were "
                       "written: its tail was cut")
    if head_chain != head["chain"]:
        return Verdict(False, count, files, f"seq {head['seq']}", head["seq"],
                       "the chain of the record the head names differs from the head's")
    return Verdict(True, count, files)


def lookup_error(exc: Exception) -> LwpError:
    return LwpError("internal-error", f"the audit trail cannot be read ({type(exc).__name__})")
