"""What the helper knows as it happens: the state table, the event bus, the open event streams
and the counters behind /metrics. The server's table rows call in here; nothing here talks to
a peer except through an eventstream.Stream.

Invariant: every stream belongs to one token id (None: root's CLI) and ends when that token is
revoked or expires; every event a stream carries passed eventstream's per-type scope check.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from helperd.eventbus import Bus
from helperd.eventstream import TYPE_SCOPE, Stream, visible_types
from helperd.statewatch import SWEEP_INTERVAL, StateWatch
from protocol import metrics, rules, stream
from protocol.errors import LwpError
from protocol.tokens import TokenRecord

log = logging.getLogger("lwp.helperd.live")
MAX_STREAMS = 512  # streams the helper serves at once, whatever the frontend's caps say
# The ops whose progress is an "operation" event: they take seconds to minutes.
OPERATIONS = frozenset(stream.OPERATIONS)


class Live:
    def __init__(self, lxcpath: str, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.bus = Bus()
        self.watch = StateWatch(lxcpath, self.bus, sweep_interval=sweep_interval)
        self.streams: dict[int | None, set[Stream]] = {}
        self._timers: dict[Stream, asyncio.TimerHandle] = {}
        self.families = {name: metrics.Family(name, kind, help_)
                         for name, (kind, help_, _keys) in metrics.HELPER_FAMILIES.items()}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.watch.start()

    async def stop(self) -> None:
        for streams in list(self.streams.values()):
            for s in list(streams):
                s.end("shutdown")
        await self.watch.stop()

    # -- the list ------------------------------------------------------------------------

    async def list_containers(self) -> list[dict[str, str]]:
        """From the table, after every notification liblxc has delivered is confirmed."""
        await self.watch.flush()
        return [{"container": name, "state": state.lower()}
                for name, state in sorted(self.watch.table.items())]

    # -- changes we make ------------------------------------------------------------------

    @asynccontextmanager
    async def changing(self, op: str, names: tuple[str, ...], request_id: str,
                       ) -> AsyncIterator[None]:
        """Around a mutation: its state changes carry `request_id`; creates, clones and
        destroys are "operation" events too (started, then finished or failed)."""
        target = names[0]
        if op in OPERATIONS:
            self._operation(target, op, "started", request_id)
        phase = "failed"
        try:
            async with self.watch.caused_by(target, request_id):
                yield
            phase = "finished"
        finally:
            if op in OPERATIONS:
                self._operation(target, op, phase, request_id)

    def _operation(self, name: str, op: str, phase: str, cause: str) -> None:
        self.bus.publish("operation", name, {"container": name, "op": op, "phase": phase,
                                             "cause": cause})

    # -- audit records, as the trail writes them ---------------------------------------------

    def audit_hook(self, previous: Callable[[dict[str, Any]], None] | None,
                   ) -> Callable[[dict[str, Any]], None]:
        """A trail `forward` callback (run on the trail's thread) that also publishes."""
        loop = asyncio.get_running_loop()

        def forward(record: dict[str, Any]) -> None:
            if previous is not None:
                previous(record)
            loop.call_soon_threadsafe(self._audit, flat(record))
        return forward

    def _audit(self, record: dict[str, Any]) -> None:
        self.families["lwp_audit_records_total"].inc()
        container = record.get("container")
        named = isinstance(container, str) and rules.NAME_RE.fullmatch(container)
        self.bus.publish("audit", container if named else None, {"record": record})

    # -- streams -----------------------------------------------------------------------

    def open_stream(self, req: stream.SubscribeEvents, scope: str, token: TokenRecord | None,
                    writer: asyncio.StreamWriter) -> Stream:
        may = {t for t, needed in TYPE_SCOPE.items() if rules.scope_allows(scope, needed)}
        if set(req.types) - may:
            raise LwpError("forbidden", "audit events are for admin tokens")
        if sum(len(s) for s in self.streams.values()) >= MAX_STREAMS:
            raise LwpError("rate-limited", "too many event streams open", retry_after=2.0)
        s = Stream(self.bus, req, visible_types(req, may), writer)
        key = token.id if token is not None else None
        self.streams.setdefault(key, set()).add(s)
        if token is not None and token.expires is not None:
            # Ends at the token's expiry, to the second, without polling the store.
            delay = max(0.0, token.expires - time.time())
            self._timers[s] = asyncio.get_running_loop().call_later(delay, s.end, "expired")
        return s

    async def run_stream(self, s: Stream, token_id: int | None) -> None:
        try:
            await s.run()
        finally:
            self.discard(s, token_id)

    def discard(self, s: Stream, token_id: int | None) -> None:
        """Forget a stream that ended (or never began)."""
        s.sub.close()
        self.streams.get(token_id, set()).discard(s)
        if not self.streams.get(token_id, True):
            del self.streams[token_id]
        timer = self._timers.pop(s, None)
        if timer is not None:
            timer.cancel()

    def revoked(self, token_id: int) -> None:
        for s in list(self.streams.get(token_id, ())):
            s.end("revoked")

    # -- metrics -------------------------------------------------------------------------

    def observe(self, op: str, ok: bool, seconds: float) -> None:
        f = self.families
        f["lwp_helper_ops_total"].inc((("op", op), ("outcome", "ok" if ok else "error")))
        f["lwp_helper_op_duration_seconds"].observe((("op", op),), seconds)

    def snapshot(self) -> dict[str, object]:
        f = self.families
        states = f["lwp_container_state"]
        states.values = {(("container", n), ("state", s)): 1
                         for n, s in self.watch.table.items()}
        f["lwp_containers"].set((), len(self.watch.table))
        f["lwp_event_subscribers"].set((), self.bus.subscribers)
        f["lwp_event_subscribers_dropped_total"].set((), self.bus.dropped)
        follower = self.watch.follower
        f["lwp_lxc_notifications_total"].set((), follower.received if follower else 0)
        return metrics.snapshot(f)


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """An audit record as an event carries it: scalars as they are, anything nested as its
    JSON text (cut at stream.MAX_AUDIT_TEXT), at most stream.MAX_AUDIT_FIELDS fields."""
    out: dict[str, Any] = {}
    for key, value in list(record.items())[:stream.MAX_AUDIT_FIELDS]:
        if value is None or type(value) in (bool, int, float):
            out[str(key)[:64]] = value
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            out[str(key)[:64]] = text[:stream.MAX_AUDIT_TEXT]
    return out
