"""Slow-client defence: a deadline for each whole request, and a cap on open connections.

aiohttp 3.8 never times out a request head, so a connection dribbling headers is held forever.
Here every connection is "waiting" from the moment it opens, and again from each response it
got, until a whole request (head and body) has arrived; one that keeps waiting past the deadline
is closed, however busily it dribbles. Past `max_connections` the oldest waiting connection is
closed to make room, so a newcomer always gets its chance and the process never runs out of fds.
"""
from __future__ import annotations

import asyncio
import logging
import re
import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine
from aiohttp.web_protocol import RequestHandler

from frontend.errors import new_request_id, refusal
from frontend.ratelimit import LogLimiter

log = logging.getLogger("lwp.frontend.guard")
# asyncio accepts up to `backlog` connections in one turn of the loop before any of them
# reaches the guard; the listener is made with this backlog so that burst stays small.
ACCEPT_BURST = 128
# File descriptors kept free beside the connections: the helper pool (32), the token store,
# logs and the listening socket, plus one accept burst past the cap — so accept() never meets
# EMFILE (asyncio would then stop accepting for a whole second).
FD_RESERVE = 64 + ACCEPT_BURST
LOG_LINES_PER_MINUTE = 10
# How much of a request line is kept to answer a method the HTTP parser does not know.
LINE_MAX = 8190
METHOD_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
Methods = Callable[[str], list[str]]


class ConnectionGuard:
    def __init__(self, timeout: float, max_connections: int,
                 loop: asyncio.AbstractEventLoop, methods: Methods = lambda path: []) -> None:
        self.timeout = timeout
        self.methods = methods
        self.max_connections = max_connections
        self.loop = loop
        self.tick = min(0.5, timeout / 4)
        self.dropped = self.evicted = 0
        self._open: set[GuardedHandler] = set()
        # Waiting connections by deadline; the deadline is set on insertion, so the first
        # entry is always the oldest and the next one to expire.
        self._waiting: OrderedDict[GuardedHandler, float] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None
        self._log = LogLimiter(log, LOG_LINES_PER_MINUTE)

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, conn: GuardedHandler) -> None:
        self._open.add(conn)
        self.waiting(conn)
        if len(self._open) > self.max_connections:
            oldest = next(iter(self._waiting))
            self.evicted += 1
            self._drop(oldest, "closed the oldest connection waiting for a request: "
                               "%d connections open", len(self._open))
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.tick, self._sweep)

    def waiting(self, conn: GuardedHandler) -> None:
        """`conn` owes us a whole request from now on."""
        self._waiting.pop(conn, None)
        self._waiting[conn] = self.loop.time() + self.timeout

    def received(self, conn: GuardedHandler) -> None:
        """`conn` delivered a whole request: its handler's time is the handler's business."""
        conn.request_line = b""  # whatever comes next starts the next request
        self._waiting.pop(conn, None)

    def closed(self, conn: GuardedHandler) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)

    def request_factory(self, make: Any) -> Callable[..., web.BaseRequest]:
        """Wrap aiohttp's request factory: it runs when a request head has been parsed."""
        def factory(message: Any, payload: Any, protocol: Any, writer: Any,
                    task: Any) -> web.BaseRequest:
            if isinstance(protocol, GuardedHandler):
                protocol.head = protocol.request_line  # this request's, for handle_error
                # The body counts too: a request is whole when its payload ends.
                payload.on_eof(lambda: self.received(protocol))
            request: web.BaseRequest = make(message, payload, protocol, writer, task)
            return request
        return factory

    def _sweep(self) -> None:
        now = self.loop.time()
        while self._waiting:
            conn, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                break
            if conn.request_line:  # part of a request came, the rest did not: worth a line
                self.dropped += 1
                self._drop(conn, "closed a connection that sent no whole request within %g s",
                           self.timeout)
            else:  # an idle keep-alive connection (or one that never spoke): just closed
                self.closed(conn)
                conn.force_close()
        self._sweeper = self.loop.call_later(self.tick, self._sweep) if self._open else None

    def parse_error(self, line: bytes, status: int, exc: BaseException | None,
                    peer: str) -> web.Response:
        """aiohttp's parser refused a request: answer in the API's error shape, and log one
        line within the budget (aiohttp would log a traceback for each, a flood's worth)."""
        method, _, rest = line.partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("ascii", "replace")
        allowed = self.methods(target) if isinstance(exc, BadStatusLine) else []
        if METHOD_RE.fullmatch(method) and allowed:
            # A well-formed method the C parser does not know (e.g. QUERY) is not allowed
            # here, as any method missing from the route table is.
            response = refusal(405, "Method Not Allowed", ", ".join(allowed))
        else:
            response = refusal(status, "the request could not be parsed")
        self._log.warning(self.loop.time(), "refused an unparsable request with %d (client %s)",
                          response.status, peer)
        response.headers["X-Request-Id"] = new_request_id()
        response.force_close()
        return response

    def _drop(self, conn: GuardedHandler, why: str, *args: object) -> None:
        """Close `conn` now, with a log line within the budget."""
        self.closed(conn)
        self._log.warning(self.loop.time(), why + " (client %s)", *args, conn.peer)
        conn.force_close()


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler, reporting to the guard when it opens, answers and closes."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.peer = "unknown"
        self.request_line = b""  # the bytes of the request being received, from its start
        self.head = b""  # ... as they were when its head was parsed (or refused)

    def data_received(self, data: bytes) -> None:
        # Keep the current request's first line, for handle_error only.
        if b"\n" not in self.request_line and len(self.request_line) < LINE_MAX:
            self.request_line += data[:LINE_MAX - len(self.request_line)]
        super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0 or status >= 500:
            # A fault of ours, not a client's: aiohttp logs it in full (once; these are bugs)
            # and raises when the response has begun already.
            self.log_exception("Error handling request", exc_info=exc)
            if request.writer.output_size > 0:
                return super().handle_error(request, status, exc, message)
        return self.guard.parse_error(self.head.split(b"\r\n", 1)[0], status, exc, self.peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self.guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse,
                   time: float) -> None:
        # Called once per response, after it was written: the next request's clock starts.
        super().log_access(request, response, time)
        if self.transport is not None:
            self.guard.waiting(self)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` + FD_RESERVE (as far as the hard limit
    allows, which needs no privilege); return how many connections fit under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + FD_RESERVE
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            # e.g. a unit whose SystemCallFilter denies @resources: LimitNOFILE= must do it.
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d; set LimitNOFILE=%d",
                        soft, target, target)
    room = wanted if soft == resource.RLIM_INFINITY else soft - FD_RESERVE
    return max(1, min(wanted, room))
