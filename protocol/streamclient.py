"""The client side of `subscribe_events`: a connection of its own, one request, then frames.

The first reply is an ordinary one (an error ends it at once: forbidden, invalid); its result is
the stream's Start frame. Every later frame is checked by protocol.stream before it is yielded,
and any bad frame, oversized frame or hang-up ends the stream as `helper-unavailable`.
"""
from __future__ import annotations

import asyncio
from typing import Any

from protocol import framing, ops, stream
from protocol.errors import LwpError

CONNECT_TIMEOUT = 2.0
# A frame must arrive this often at least: the helper sends a heartbeat well within it.
SILENCE_LIMIT = 90.0


class Subscription:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 start: stream.Start) -> None:
        self._reader, self._writer, self.start = reader, writer, start

    async def next(self) -> stream.Frame:
        """The next frame; after an End frame the caller must stop asking."""
        return stream.decode_frame(await self._frame(SILENCE_LIMIT))

    async def _frame(self, timeout: float) -> Any:
        try:
            header = await asyncio.wait_for(self._reader.readexactly(framing.HEADER.size),
                                            timeout)
            length = framing.body_length(header)
            body = await asyncio.wait_for(self._reader.readexactly(length), timeout)
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            raise LwpError("helper-unavailable", "the event stream from the helper ended") \
                from None
        return framing.decode_trusted_body(body)  # packed by our root helper, as replies are

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


async def subscribe(socket_path: str, envelope: ops.Envelope) -> Subscription:
    """Open a stream for `envelope` (a SubscribeEvents request); LwpError if refused."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket_path),
                                                CONNECT_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        raise LwpError("helper-unavailable",
                       f"cannot reach the helper ({type(exc).__name__})") from None
    sub = Subscription(reader, writer, stream.Start("0" * 16, False))
    try:
        writer.write(framing.encode_frame(ops.encode_request(envelope)))
        result = ops.decode_reply(await sub._frame(envelope.op.timeout))
        start = stream.decode_frame(result)
        if not isinstance(start, stream.Start):
            raise LwpError("protocol-error", "the stream did not begin with a start frame")
        sub.start = start
    except BaseException:
        await sub.close()
        raise
    return sub
