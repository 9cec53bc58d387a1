"""One request's records: a change's `start` before liblxc is touched, its outcome before replying.

Invariant: the caller says whether a request is a read (`describe(..., read=)`); reads and
refusals are counted, a change that started always has its own `start` and `end` records.
"""
from __future__ import annotations

import time
from typing import Any

from helperd.audit.record import OUTCOME_OF_CODE, RESULT_ARGS, args_of, blank_record, utc_now
from helperd.audit.trail import Pending
from helperd.audit.writer import AuditWriter
from protocol import ops

# Refusals: counted per key and window, never written one by one (a flood of them is cheap to
# send). Changes refused before they start are refusals too; one that started is never counted.
REFUSAL_CODES = frozenset({"invalid-request", "payload-too-large", "protocol-error",
                           "unauthorized", "forbidden", "rate-limited", "insufficient-storage"})


class Call:
    """The records of one request: `begin` before liblxc is touched, `finish` before replying."""

    def __init__(self, writer: AuditWriter, peer_uid: int, peer_pid: int) -> None:
        self.writer = writer
        self.started = time.monotonic()
        self.base = blank_record()
        self.base["peer"] = {"uid": peer_uid, "pid": peer_pid}
        self.request: Any = None
        self.open_key: str | None = None
        self.read = False  # a frame that did not decode is a refusal, never a read

    def describe(self, envelope: ops.Envelope, *, read: bool) -> None:
        """What the request is. `read`: the op changes nothing, so its records are counted
        (token create and revoke change the store: never reads)."""
        request = envelope.request
        self.request = request
        self.read = read
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

    def set_actor(self, token_id: int | None, description: str, scope: str,
                  containers: tuple[str, ...] | None = None) -> None:
        actor: dict[str, Any] = {"token_id": token_id, "description": description,
                                 "scope": scope}
        if containers is not None:  # a limited token's patterns; absent: every container
            actor["containers"] = list(containers)
        self.base["actor"] = actor

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
        if self.open_key is None and (code in REFUSAL_CODES or self.read):
            # Never a change that started: those keep their own start and end records.
            await self.writer.write_counted(record, code, coarse=self.request is None)
            return
        await self.writer.write(Pending(record, closes=self.open_key))

