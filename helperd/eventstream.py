"""One `subscribe_events` connection: a start frame, what the client missed (or a reset), then
the bus's events that the token may see, heartbeats, and an end frame when it must stop.

The bus never waits for this writer: if the peer reads too slowly, the bus drops the
subscription (end "slow"); a write that cannot drain within WRITE_TIMEOUT ends the stream too.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from helperd.eventbus import Bus, Dropped, Event
from protocol import framing, stream

HEARTBEAT = 15.0  # seconds between heartbeats: under the usual proxy idle timeouts (60 s)
WRITE_TIMEOUT = 30.0
# Who may see which type: audit records name tokens' descriptions and clients' addresses.
TYPE_SCOPE = {"lifecycle": "read", "operation": "read", "audit": "admin"}
EPOCH = os.urandom(8).hex()  # this run of the helper: ids of another run mean "start over"


def visible_types(req: stream.SubscribeEvents, may: set[str]) -> frozenset[str]:
    """The types this stream carries: those asked for (all if none), each the token may see."""
    return frozenset(t for t in (req.types or stream.TYPES) if t in may)


class Stream:
    def __init__(self, bus: Bus, req: stream.SubscribeEvents, types: frozenset[str],
                 writer: asyncio.StreamWriter, heartbeat: float = HEARTBEAT) -> None:
        self.req, self.types, self.writer, self.heartbeat = req, types, writer, heartbeat
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        replay = None if req.after is None or req.after_epoch != EPOCH else bus.since(req.after)
        self.reset = req.after is not None and replay is None
        # Subscribed in the same step as the replay was taken: no event falls between them.
        self.sub = bus.subscribe(self.wants)
        self.replay = [e for e in replay or [] if self.wants(e)]

    def wants(self, event: Event) -> bool:
        return event.type in self.types and (
            self.req.container is None or event.container == self.req.container)

    def end(self, reason: str) -> None:
        """End the stream from outside (the token was revoked, it expired, shutdown)."""
        if not self.ended.done():
            self.ended.set_result(reason)

    def start(self) -> dict[str, Any]:
        """The result of the subscribe request: its reply is the stream's first frame."""
        return stream.encode(stream.Start(EPOCH, self.reset))

    async def run(self) -> None:
        """After the reply: the replay, then live events until the stream must end."""
        try:
            for event in self.replay:
                await self._event(event)
            reason = await self._follow()
            await self._send(stream.encode(stream.End(reason)))
        except (TimeoutError, ConnectionError):
            pass  # the frontend went away or stopped reading: nothing to tell it
        finally:
            self.sub.close()

    async def _follow(self) -> str:
        while not self.ended.done():
            getter: asyncio.Future[Any] = asyncio.ensure_future(self.sub.get())
            waits: set[asyncio.Future[Any]] = {getter, self.ended}
            done, _ = await asyncio.wait(waits, timeout=self.heartbeat,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Dropped):
                    await getter
                if not done:
                    await self._send(stream.encode(stream.Heartbeat()))
                continue
            try:
                await self._event(getter.result())
            except Dropped as exc:
                return exc.reason
        return self.ended.result()

    async def _event(self, event: Event) -> None:
        frame = stream.EventFrame(event.id, event.type, event.container, dict(event.data))
        await self._send(stream.encode(frame))

    async def _send(self, obj: object) -> None:
        self.writer.write(framing.encode_frame(obj))
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)
