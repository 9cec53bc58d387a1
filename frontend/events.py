"""GET /api/v1/events: the helper's event stream as Server-Sent Events, one helper connection
per client stream, at most `per_token` streams per token and `total` in all.

Query and Last-Event-ID are validated here and again by the helper, which alone decides what a
token may see (audit events: admin only) and ends the stream when the token is revoked/expires.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from frontend.auth import QUERY_KEY
from protocol import ops, rules, stream, streamclient
from protocol.errors import LwpError, invalid
from protocol.tokens import TokenRecord

log = logging.getLogger("lwp.frontend.events")
PER_TOKEN = 4  # streams one token may hold open at once
TOTAL = 256  # streams at once in all
QUERY = ("types", "container", QUERY_KEY)
# What an SSE client is told to wait before it reconnects (ms): soon, but not in a tight loop.
RETRY_MS = 2000
CLIENT_CHECK = 0.5  # seconds between checks that the client is still there
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-store",
           "X-Accel-Buffering": "no"}  # nginx: pass each event on at once


class Streams:
    """The open streams, counted per token id, and the handler that opens one."""

    def __init__(self, socket_path: str, per_token: int = PER_TOKEN, total: int = TOTAL) -> None:
        self.socket_path = socket_path
        self.per_token, self.total = per_token, total
        self.open: Counter[int] = Counter()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def shutdown(self, _app: web.Application) -> None:
        """on_shutdown: end every stream (aiohttp would wait for them, they never end)."""
        for task in list(self._handlers):
            task.cancel()

    @contextmanager
    def _slot(self, token_id: int) -> Iterator[None]:
        if sum(self.open.values()) >= self.total or self.open[token_id] >= self.per_token:
            raise LwpError("rate-limited", "too many event streams open; close one first",
                           retry_after=RETRY_MS / 1000)
        self.open[token_id] += 1
        try:
            yield
        finally:
            self.open[token_id] -= 1
            if not self.open[token_id]:
                del self.open[token_id]

    def request_of(self, request: web.Request) -> stream.SubscribeEvents:
        query = request.rel_url.query
        for key in query:
            if key not in QUERY:
                raise invalid(rules.shown(key), "unknown query parameter")
        types = tuple(t for t in query.get("types", "").split(",") if t)
        after = None
        last = request.headers.get("Last-Event-ID")
        if last:
            after = stream.parse_event_id(last)
            if after is None:
                raise invalid("Last-Event-ID", "is not an id this API gave")
        return stream.SubscribeEvents(types, query.get("container"),
                                      after[0] if after else None, after[1] if after else None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record: TokenRecord = request["record"]
        req = self.request_of(request)
        if not rules.scope_allows(record.scope, ops.OP_OF_REQUEST[type(req)].scope):
            raise LwpError("forbidden", "Forbidden")
        task = asyncio.current_task()
        assert task is not None
        envelope = ops.Envelope(request["request_id"], request["token"], request["client"], req)
        with self._slot(record.id):
            self._handlers.add(task)
            try:
                sub = await streamclient.subscribe(self.socket_path, envelope)
                try:
                    return await self._relay(request, sub)
                finally:
                    await sub.close()
            finally:
                self._handlers.discard(task)

    @staticmethod
    async def _next(request: web.Request, sub: streamclient.Subscription,
                    ) -> stream.Frame | None:
        """The helper's next frame, or None as soon as the client has hung up."""
        frame = asyncio.ensure_future(sub.next())
        gone = asyncio.ensure_future(_gone(request))
        try:
            await asyncio.wait({frame, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not frame.done():
                frame.cancel()
        return frame.result() if frame.done() and not frame.cancelled() else None

    async def _relay(self, request: web.Request, sub: streamclient.Subscription,
                     ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**HEADERS,
                                               "X-Request-Id": request["request_id"]})
        await response.prepare(request)
        epoch = sub.start.epoch
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        if sub.start.reset:
            await response.write(sse("reset", {"reason": "the events since your last id are "
                                               "no longer kept: read the list again"}))
        try:
            while True:
                frame = await self._next(request, sub)
                if frame is None:
                    break  # the client has gone: aiohttp 3.8 does not cancel the handler
                await response.write(render(epoch, frame))
                if isinstance(frame, stream.End):
                    break
        except LwpError as exc:
            # Headers are gone: the client learns of the end as an event, not a status.
            await response.write(sse("end", {"reason": "helper-unavailable"}))
            log.info("event stream %s ended: %s", request["request_id"], exc.code)
        return response


async def _gone(request: web.Request) -> None:
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(CLIENT_CHECK)


def sse(event: str, data: object, id_: str | None = None) -> bytes:
    """One SSE event. json.dumps never writes a raw newline, so `data` is a single line."""
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def render(epoch: str, frame: stream.Frame) -> bytes:
    if isinstance(frame, stream.EventFrame):
        return sse(frame.type, dict(frame.data), stream.event_id(epoch, frame.id))
    if isinstance(frame, stream.Heartbeat):
        return b": heartbeat\n\n"  # a comment: proxies see traffic, EventSource ignores it
    if isinstance(frame, stream.End):
        return sse("end", {"reason": frame.reason})
    return b""
