"""`lwp-admin audit`: read the trail through the helper, and `audit verify` it from the files.

Queries go through the socket like every other request (and are audited themselves);
verification reads the files directly as root, so it works with the helper stopped.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

from helperd import audit
from helperd.config import HelperConfig
from protocol import ops
from protocol.client import HelperClient

COLUMNS = (("ts", 27), ("seq", 6), ("phase", 7), ("outcome", 11), ("op", 18),
           ("container", 16), ("actor", 20), ("client", 16))


def add_parser(area: Any) -> None:
    sub = area.add_parser("audit", help="show or verify the audit trail")
    sub.add_argument("--since", help="ISO 8601 date or time (UTC unless it says otherwise)")
    sub.add_argument("--until", help="ISO 8601 date or time")
    sub.add_argument("--container")
    sub.add_argument("--actor", help="a token id, or part of a token's description")
    sub.add_argument("--op", choices=sorted(ops.OPS))
    sub.add_argument("--outcome", choices=ops.AUDIT_OUTCOMES)
    sub.add_argument("--limit", type=int, help="show at most this many records")
    # SUPPRESS: the top-level --json must not be overwritten by this parser's default.
    sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                     help="one JSON record a line")
    sub.add_argument("--from-oldest", action="store_true",
                     help="verify: older files were archived; start at the oldest file "
                          "present (its first record is taken as the anchor)")
    sub.add_argument("action", nargs="?", choices=("verify",),
                     help="verify: check the whole chain across rotated files "
                          "(plain or gzip-compressed)")


def run(args: argparse.Namespace, cfg: HelperConfig) -> int:
    if args.action == "verify":
        return verify(cfg, args.from_oldest)
    return asyncio.run(_show(args, cfg))


def verify(cfg: HelperConfig, from_oldest: bool = False) -> int:
    key = audit.load_key(cfg.audit_key_file, create=False)
    verdict = audit.verify(cfg.audit_dir, key, from_oldest=from_oldest)
    if verdict.ok:
        print(f"ok: {verdict.records} records in {verdict.files} files verify")
        if from_oldest and verdict.anchor is not None:
            print(f"(from seq {verdict.anchor}, taken as the anchor: the records before it "
                  "are archived and were not checked)")
        return 0
    seq = "" if verdict.seq is None else f" (seq {verdict.seq})"
    print(f"FAILED at {verdict.where}{seq}: {verdict.reason}")
    if verdict.line:
        print(f"  {verdict.line}")
    print(f"({verdict.records} records before it verified)")
    return 1


async def pages(socket: str, query: ops.QueryAudit) -> AsyncIterator[list[dict[str, Any]]]:
    client = HelperClient(socket)
    try:
        while True:
            page = await client.call(ops.Envelope(uuid.uuid4().hex, None, "local", query))
            yield page["records"]
            if page["next_cursor"] is None:
                return
            query = ops.QueryAudit(**{**vars(query), "cursor": page["next_cursor"]})
    finally:
        await client.close()


async def _show(args: argparse.Namespace, cfg: HelperConfig) -> int:
    query = ops.QueryAudit(since=args.since, until=args.until, container=args.container,
                           actor=args.actor, op=args.op, outcome=args.outcome,
                           limit=min(args.limit or ops.AUDIT_MAX_LIMIT, ops.AUDIT_MAX_LIMIT))
    as_json = getattr(args, "json", False)
    if not as_json:
        print("  ".join(name.upper().ljust(width) for name, width in COLUMNS) + "  ERROR")
    shown = 0
    async for records in pages(cfg.socket, query):
        for record in records:
            if args.limit is not None and shown >= args.limit:
                return 0
            print(json.dumps(record, sort_keys=True) if as_json else row(record))
            shown += 1
        sys.stdout.flush()
    return 0


def row(record: dict[str, Any]) -> str:
    actor = record.get("actor") or {}
    who = actor.get("description") or "-"
    if actor.get("token_id") is not None:
        who = f"#{actor['token_id']} {who}"
    values = {**record, "actor": who}
    cells = [str(values.get(name) if values.get(name) is not None else "-")[:width].ljust(width)
             for name, width in COLUMNS]
    counted = record.get("summary")
    if counted:  # what a summary counts goes where a single record's error would
        return "  ".join(cells) + (f"  x{counted['count']} more like seq {counted['of_seq']} "
                                   f"({counted['code'] or 'ok'}) {counted['first']} .. "
                                   f"{counted['last']}")
    return "  ".join(cells) + "  " + (record.get("error") or "")
