"""The asynchronous writer: group commit on one thread, and reads and refusals counted per window.

Invariant: `write` returns only once its record is fsync'd; a counted record's repeats are
written as one `summary` record when the window closes (or at a clean stop).
"""
from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from helperd.audit.files import load_key, trail_files
from helperd.audit.record import AuditError, blank_record
from helperd.audit.trail import Pending, Trail
from protocol import ops

log = logging.getLogger("lwp.helperd.audit")

# What a counted record's key is made of (in `summary.key`): a decoded request, and a frame
# that did not decode or a key past the window's table (whose other fields a peer chooses).
KEY_FIELDS = ("op", "actor", "client", "container", "peer.uid", "outcome", "code")
COARSE_KEY_FIELDS = ("op", "peer.uid", "outcome", "code")


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

