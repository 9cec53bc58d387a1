"""The one client of the helper's socket, used by the frontend, the admin CLI and the tests.

Each connection carries one request at a time; idle connections are pooled. Any transport
failure becomes `helper-unavailable` and a missed deadline `timeout`; neither, nor a caller
cancelled mid-request, leaves a connection that may still receive a reply in the pool.
"""
from __future__ import annotations

import asyncio
from typing import Any, cast

from protocol import framing, ops
from protocol.errors import LwpError


class _Connection(asyncio.Protocol):
    """One connection as a protocol: bytes go straight into the reply frame, no stream layer.

    asyncio's streams cost a large share of a call's CPU here (a reader buffer, two readexactly
    waits, drain); a request is one frame of at most 64 KiB, so a write needs no flow control.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._frames = framing.FrameReader(framing.MAX_REPLY)
        self._reply: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport by construction (create_unix_connection); not an isinstance
        # check: other loops' transports (uvloop's) do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def exchange(self, frame: bytes) -> asyncio.Future[bytes]:
        """Send one request frame; the future gets the reply's body."""
        assert self.transport is not None
        self._reply = self.loop.create_future()
        self.transport.write(frame)
        return self._reply

    def data_received(self, data: bytes) -> None:
        reply = self._reply
        if reply is None or reply.done():
            # Bytes nobody asked for: the stream cannot be trusted any more.
            self.fail(LwpError("protocol-error", "the helper sent bytes out of turn"))
            return
        frames = self._frames
        try:
            body = frames.feed(data)  # the cap is checked on the header, before the body
        except LwpError as exc:
            self.fail(exc)
            return
        if body is None:
            return  # the rest of the reply is still to come
        if frames.held:
            self.fail(LwpError("protocol-error", "the helper sent more than one reply"))
            return
        self._reply = None
        reply.set_result(body)

    def fail(self, error: LwpError) -> None:
        """End the connection; a waiting request gets `error`."""
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)
        self._reply = None
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = type(exc).__name__ if exc is not None else "EOF"
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(LwpError(
                "helper-unavailable", f"the helper closed the connection ({reason})"))


# Deadlines are checked by one sweep per TICK while calls are out, not by a timer per call:
# a timer is a heap push and a cancel on the loop's heap, which holds every cancelled timer
# of the last 30 s. A call times out at most one TICK after its deadline.
TICK = 0.05


class HelperClient:
    def __init__(self, socket_path: str, max_connections: int = 32,
                 connect_timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._due: dict[_Connection, tuple[float, str, float]] = {}  # when, op, deadline
        self._sweeper: asyncio.TimerHandle | None = None

    async def call(self, envelope: ops.Envelope, timeout: float | None = None) -> Any:
        """Send one request and return its result, or raise the LwpError it produced."""
        frame = framing.encode_frame(ops.encode_request(envelope))
        deadline = envelope.op.timeout if timeout is None else timeout
        async with self._slots:
            conn = self._reusable() or await self._connect()
            reply = conn.exchange(frame)
            self._due[conn] = (conn.loop.time() + deadline, envelope.op.name, deadline)
            if self._sweeper is None:
                self._sweeper = conn.loop.call_later(TICK, self._sweep, conn.loop)
            try:
                body = await reply
            except BaseException:
                conn.close()  # failed, timed out or cancelled: a late reply must find no one
                raise
            finally:
                del self._due[conn]
            self._idle.append(conn)
        return ops.decode_reply(framing.decode_trusted_body(body))

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn, (when, op, deadline) in list(self._due.items()):
            if when <= now:
                conn.fail(LwpError("timeout", f"{op} did not finish within {deadline:g} s"))
        self._sweeper = loop.call_later(TICK, self._sweep, loop) if self._due else None

    def _reusable(self) -> _Connection | None:
        """An idle connection the helper has not hung up on (e.g. by restarting) meanwhile."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _Connection(loop), self.socket_path),
                self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise LwpError("helper-unavailable",
                           f"cannot reach the helper ({type(exc).__name__})") from None
        return conn

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()
        # Let the transports finish closing within this loop (as wait_closed did).
        await asyncio.sleep(0)
