"""Queries over the trail: one page of matching records in trail order, within a reply's budget.

Invariant: read-only; files that cannot hold a match by their time bounds are not opened.
"""
from __future__ import annotations

import os
from typing import Any

from helperd.audit.files import CURRENT, records_after, records_of, trail_files
from helperd.audit.record import canonical, parse_line, utc_text
from protocol import ops, rules
from protocol.errors import LwpError

# A query reply must fit one frame (64 KiB of msgpack); JSON is the larger of the two.
QUERY_BUDGET = 48 * 1024


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
        stamps = [r.get("ts") for r in records_of(path)]
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



def lookup_error(exc: Exception) -> LwpError:
    return LwpError("internal-error", f"the audit trail cannot be read ({type(exc).__name__})")
